"""The job a sender enqueues and the result a task returns (the brief's contract).

Field names are snake_case; the original service's camelCase spellings are accepted on input.
Validation that needs configuration (the repository allowlist, the iteration cap) reads it from
the pydantic validation context, so the models stay plain data.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from enum import StrEnum
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from codeworker.names import OPERATION_ID, OPERATION_ID_RULE, invisible_characters, relative_path, shown
from codeworker.secrets.findings import SecretFinding

T = TypeVar("T")

BRANCH_NAME = re.compile(r"^(?!/)(?!.*//)(?!.*\.\.)(?!.*@\{)[A-Za-z0-9._/-]{1,200}(?<![/.])$")
"""A conservative subset of git's check-ref-format for base branch names."""

MAX_TEXT = 100_000
"""Longest description or context text accepted, in characters."""

MAX_URL = 2048
"""Longest repository URL accepted, in characters."""

URL_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
"""One path segment of a repository URL: what GitHub allows in owner and repository names."""


class OperationType(StrEnum):
    """The operation types, listed once: the task modules (``codeworker.tasks.<type>``), their task
    names, the CLI, the default executors, the prompts and the verification rules derive from it
    or are checked against it at import."""

    ERROR_FIX = "error_fix"
    FEATURE_IMPLEMENTATION = "feature_implementation"
    REFACTOR = "refactor"
    TEST = "test"

    @property
    def task_name(self) -> str:
        """The Celery task that runs this type (``codeworker.error_fix``)."""
        return f"codeworker.{self.value}"

    @classmethod
    def of_task(cls, task_name: str) -> OperationType | None:
        """The type a Celery task name runs, None for any other task (the health probe)."""
        return next((kind for kind in cls if kind.task_name == task_name), None)


def for_every_type(table: dict[OperationType, T], what: str) -> dict[OperationType, T]:
    """``table``, refused at import unless it has exactly one entry per operation type."""
    missing = set(OperationType) - set(table)
    if missing:
        raise TypeError(f"{what} has no entry for {', '.join(sorted(missing))}")
    return table


class Status(StrEnum):
    """How an operation ended (the result's ``status``)."""

    MERGED = "merged"
    PR_OPEN = "pr_open"
    PUSHED = "pushed"
    NO_CHANGES = "no_changes"
    BLOCKED = "blocked"
    CONFLICT = "conflict"
    INVALID = "invalid"
    FAILED = "failed"
    CANCELLED = "cancelled"


class _Model(BaseModel):
    """Accepts snake_case and camelCase, ignores unknown fields, refuses wrong types."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="ignore",
        str_strip_whitespace=True,
        strict=False,
    )


def command(value: str | None) -> str | None:
    """A shell command given by a job or a repository: non-empty, without NUL bytes."""
    if value is not None and ("\x00" in value or not value.strip()):
        raise ValueError("must be a non-empty command without NUL bytes")
    return value


def under_prefix(url: str, prefix: str) -> bool:
    """Whether ``url`` lies under the allowlisted ``prefix``, compared as parsed URLs (scheme, host,
    port, whole path segments), so ``https://github.com.evil.io`` is not under ``https://github.com``."""
    have, want = urlsplit(url), urlsplit(prefix)
    if (have.scheme.lower(), have.hostname, have.port) != (want.scheme.lower(), want.hostname, want.port):
        return False
    want_segments = [s for s in want.path.split("/") if s]
    return [s for s in have.path.split("/") if s][: len(want_segments)] == want_segments


class Repository(_Model):
    url: str = Field(max_length=MAX_URL)
    owner: str = ""
    name: str = ""
    branch: str = "main"

    @field_validator("url")
    @classmethod
    def _allowed_url(cls, url: str, info: ValidationInfo) -> str:
        if invisible_characters(url) or any(char.isspace() for char in url):
            raise ValueError("the URL holds whitespace, control or invisible characters")
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http"):
            raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not allowed; use https")
        if parts.username or parts.password:
            raise ValueError("credentials in the URL are not allowed; the worker authenticates itself")
        if parts.query or parts.fragment:
            raise ValueError("a repository URL has no query or fragment")
        segments = [s for s in parts.path.split("/") if s]
        if any(not URL_SEGMENT.match(s) or s in (".", "..") for s in segments):
            raise ValueError("the URL path may hold only letters, digits, '.', '_' and '-', without '..'")
        allowed: list[str] = (info.context or {}).get("allowed_repos", [])
        if not any(under_prefix(url, prefix) for prefix in allowed):
            raise ValueError(f"{shown(url)} is not under an allowed prefix ({', '.join(allowed) or 'none'})")
        if len(segments) < 2:
            raise ValueError("the URL must name an owner and a repository")
        return url

    @field_validator("branch")
    @classmethod
    def _branch_name(cls, branch: str) -> str:
        if not BRANCH_NAME.match(branch):
            raise ValueError(f"{shown(branch)} is not a valid branch name")
        return branch

    @model_validator(mode="after")
    def _owner_and_name_match_url(self) -> Repository:
        segments = [s for s in urlsplit(self.url).path.split("/") if s]
        url_owner, url_name = segments[-2], segments[-1].removesuffix(".git")
        if self.owner and self.owner.lower() != url_owner.lower():
            raise ValueError(f"owner {self.owner!r} does not match the URL ({url_owner!r})")
        if self.name and self.name.lower() != url_name.lower():
            raise ValueError(f"name {self.name!r} does not match the URL ({url_name!r})")
        self.owner, self.name = self.owner or url_owner, self.name or url_name
        return self


class ErrorContext(_Model):
    error_message: str = Field("", max_length=MAX_TEXT)
    stack_trace: str = Field("", max_length=MAX_TEXT)
    affected_files: list[str] = []

    @field_validator("affected_files")
    @classmethod
    def _relative(cls, paths: list[str]) -> list[str]:
        return [relative_path(p) for p in paths]


class FeatureContext(_Model):
    requirements: str | list[str] = ""
    acceptance_criteria: str | list[str] = ""
    test_strategy: str = Field("", max_length=MAX_TEXT)


class Revision(_Model):
    """What makes a job the next revision of an open pull request (``codeworker.follow_up``): set
    by the worker, never by a sender. The instructions and the conversation are people's words
    from GitHub, handed to the model as untrusted data; nothing here changes where the job pushes
    or how it is judged."""

    number: int = Field(ge=1)
    """1 for the first follow-up of the operation, then 2, 3..."""
    of_operation: str
    """The operation whose branch and pull request this revises."""
    branch: str
    """The operation's branch on the remote, which the revision checks out and pushes to."""
    pr_number: int | None = None
    instructions: str = Field(min_length=1, max_length=MAX_TEXT)
    requested_by: str = Field(max_length=200)
    trigger: str = "api"
    """What asked for it: comment, review, review_comment, checks, cli or api."""
    conversation: str = Field("", max_length=MAX_TEXT)
    """The pull request's conversation so far, rendered, oldest first (clipped from the start)."""


class Job(_Model):
    """One code operation, as a sender enqueues it."""

    operation_type: OperationType
    description: str = Field(min_length=1, max_length=MAX_TEXT)
    repository: Repository
    target_files: list[str] = Field(default=[], max_length=500)
    error_context: ErrorContext | None = None
    feature_context: FeatureContext | None = None
    organization_id: str = Field("", max_length=200)
    session_id: str = Field("", max_length=200)
    approval_required: StrictBool = True
    """Strict: a string such as "no" must not quietly turn into a merge without review."""
    max_iterations: StrictInt | None = None
    operation_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    test_command: str | None = Field(None, max_length=2000)
    executor: str | None = Field(None, max_length=100)
    issue_number: int | None = Field(None, ge=1)
    """The GitHub issue the operation answers: its pull request says ``Fixes #N``."""
    revision: Revision | None = None
    """Set by ``codeworker.follow_up`` only (a sender's is refused): the job revises an open PR."""

    @field_validator("target_files")
    @classmethod
    def _relative_targets(cls, paths: list[str]) -> list[str]:
        return sorted({relative_path(p) for p in paths})

    @field_validator("operation_id")
    @classmethod
    def _operation_id(cls, value: str) -> str:
        if not OPERATION_ID.match(value):
            raise ValueError(OPERATION_ID_RULE)
        return value

    @field_validator("max_iterations")
    @classmethod
    def _bounded_iterations(cls, value: int | None, info: ValidationInfo) -> int | None:
        cap = (info.context or {}).get("max_iterations_cap", 10)
        if value is not None and not 1 <= value <= cap:
            raise ValueError(f"must be between 1 and {cap}")
        return value

    _command = field_validator("test_command")(command)


class InvalidJob(ValueError):
    """The job cannot run as sent; ``fields`` names every bad field."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        super().__init__("invalid job: " + "; ".join(f"{k}: {v}" for k, v in fields.items()))


def job_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The one positional argument a task takes (the job); InvalidJob for any other call shape, so
    a sender that gets the arguments wrong is told so in a result rather than by a TypeError."""
    if len(args) != 1 or kwargs:
        named = f" and keyword argument(s) {', '.join(sorted(kwargs))[:200]}" if kwargs else ""
        raise InvalidJob(
            {"args": f"the task takes exactly one positional argument, the job; got {len(args)}{named}"}
        )
    return args[0]


def parse_job(
    raw: Any,
    *,
    operation_type: str,
    allowed_repos: list[str],
    max_iterations_cap: int,
    default_operation_id: str | None = None,
) -> Job:
    """Validate a sender's job for the task named ``operation_type``; raise InvalidJob naming each field.

    A job sent without an operation id gets ``default_operation_id`` (the Celery task id, stable
    across redeliveries and retries), else a fresh one.
    """
    if not isinstance(raw, dict):
        raise InvalidJob({"job": f"must be a JSON object, got {type(raw).__name__}"})
    data = dict(raw)
    if default_operation_id and data.get("operation_id", data.get("operationId")) is None:
        data["operation_id"] = default_operation_id
    if data.get("revision") is not None:
        raise InvalidJob({"revision": "is set by codeworker.follow_up only; send a follow-up instead"})
    sent_type = data.get("operation_type", data.get("operationType"))
    if sent_type is None:
        data["operation_type"] = operation_type
    elif sent_type != operation_type:
        raise InvalidJob({"operation_type": f"{sent_type!r} was sent to the {operation_type} task"})
    context = {"allowed_repos": allowed_repos, "max_iterations_cap": max_iterations_cap}
    try:
        return Job.model_validate(data, context=context)
    except ValidationError as exc:
        raise InvalidJob(field_errors(exc)) from None


def field_errors(exc: ValidationError) -> dict[str, str]:
    fields: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "job"
        message = error["msg"].removeprefix("Value error, ")
        fields[where] = f"{fields[where]}; {message}" if where in fields else message
    return fields


TRIGGERS = ("comment", "review", "review_comment", "checks", "cli", "api")
"""What can ask for a follow-up (the revision's ``trigger``)."""


class FollowUpRequest(_Model):
    """What a sender gives ``codeworker.follow_up`` (:mod:`codeworker.pipeline.revision`): the
    operation (or its repository and branch), the instructions, and who asked."""

    operation_id: str | None = None
    repository: Repository | None = None
    branch: str | None = Field(None, max_length=300)
    instructions: str = Field(min_length=1, max_length=MAX_TEXT)
    requested_by: str = Field("unknown", min_length=1, max_length=200)
    trigger: str = "api"

    @model_validator(mode="after")
    def _names_an_operation(self) -> FollowUpRequest:
        if self.operation_id is None and (self.repository is None or self.branch is None):
            raise ValueError("name the operation: operation_id, or repository and branch")
        if self.operation_id is not None and not OPERATION_ID.match(self.operation_id):
            raise ValueError(f"operation_id {OPERATION_ID_RULE}")
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}")
        return self

    @classmethod
    def parse(cls, raw: Any, allowed_repos: list[str]) -> FollowUpRequest:
        if not isinstance(raw, dict):
            raise InvalidJob({"follow_up": f"must be a JSON object, got {type(raw).__name__}"})
        try:
            return cls.model_validate(raw, context={"allowed_repos": allowed_repos})
        except ValidationError as exc:
            raise InvalidJob(field_errors(exc)) from None


TestOutcome = Literal["passed", "failed", "error", "skipped"]
"""One test's outcome as a JUnit XML report gives it (pytest's xfail counts as skipped)."""


class TestRun(BaseModel):
    """One run of the repository's test command, with per-test outcomes when its profile could read
    them (:mod:`codeworker.profiles`)."""

    __test__ = False

    command: str
    exit_code: int | None
    passed: bool
    timed_out: bool = False
    output_tail: str = ""
    tests: dict[str, TestOutcome] = {}
    """Outcome per test id: pytest's node id (``tests/test_x.py::TestY::test_z``),
    ``test/calc.test.js::suite > test`` for JavaScript; empty when the run reported none."""
    failures: dict[str, str] = {}
    """The (trimmed) failure or error text of tests that did not pass, for the agent's feedback."""
    coverage: float | None = None
    """Line coverage of the job's target files in percent, when it was measured (test jobs)."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def counts(self) -> dict[str, int]:
        """How many tests had each outcome."""
        return dict(Counter(self.tests.values()))


class Verification(BaseModel):
    """The worker's verdict on a change (:mod:`codeworker.verification`): its test runs before the
    executor changed anything and after it finished, and the evidence the operation type's rule
    looked at. Test ids are those of :attr:`TestRun.tests`."""

    verified: bool = False
    reasons: list[str] = []
    """Why it is not verified: one line per broken expectation or missing evidence."""
    before: TestRun | None = None
    after: TestRun | None = None
    fixed: list[str] = []
    """Tests that failed (or errored) at baseline and pass now."""
    reproduced: list[str] = []
    """New or changed tests that fail (or error, or do not exist) on the base code and pass now."""
    pass_on_base: list[str] = []
    """New or changed tests that pass on the base code too: they prove nothing about the change."""
    regressions: list[str] = []
    """Tests that passed at baseline and now fail, error, are skipped or are gone."""
    flaky: list[str] = []
    """Tests whose outcome differed between two runs of the same code: neither evidence nor
    regression."""


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0


class PullRequestInfo(BaseModel):
    number: int
    url: str
    title: str
    draft: bool = False


class Cancellation(BaseModel):
    """Who asked for an operation to stop, how and when (:mod:`codeworker.coordination.cancellations`)."""

    requested_by: str
    """The person or system that asked (``alice@ops-host``, ``backend``, ``celery revoke``)."""
    via: str
    """How: ``codeworker cancel``, ``codeworker.cancel`` (the control command), ``revoke``,
    ``revoke (terminate, SIGTERM)``."""
    requested_at: float
    """Unix time the cancellation was recorded."""


class Result(BaseModel):
    """The task's return value."""

    success: bool
    operation_id: str | None
    status: Status
    branch: str | None = None
    commits: list[str] = []
    pr: PullRequestInfo | None = None
    files_modified: list[str] = []
    iterations: int = 0
    duration: float = 0.0
    error: str | None = None
    verification: Verification = Verification()
    usage: Usage = Usage()
    secret_findings: list[SecretFinding] = []
    summary: str = ""
    cancellation: Cancellation | None = None
    """Set when the operation was cancelled (status ``cancelled``)."""
