"""Worker configuration, read once from the environment.

The names the brief fixes (PORT, REDIS_URL, GITHUB_TOKEN, ...) are read as they are; everything
else is prefixed ``CODEWORKER_`` (``lock_ttl`` is ``CODEWORKER_LOCK_TTL``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from codeworker.coordination.connection import SentinelUrl, is_sentinel
from codeworker.models import OperationType


class ModelPrice(BaseModel):
    """US dollars per million tokens of one model."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    input: float
    """Uncached input tokens."""
    output: float
    """Output tokens."""
    cache_write: float
    """Input tokens written to the prompt cache (5-minute TTL)."""
    cache_read: float
    """Input tokens read from the prompt cache."""


DEFAULT_PRICES = {
    "claude-opus-4-6": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
    "claude-opus-4-5": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
    "claude-sonnet-4-6": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3),
    "claude-sonnet-4-5": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3),
    "claude-haiku-4-5": ModelPrice(input=1.0, output=5.0, cache_write=1.25, cache_read=0.1),
}
"""Anthropic's list prices; an unknown model is refused rather than priced at zero."""


SetupNetwork = Literal["isolated", "host", "none"]
"""isolated: a network of its own that reaches out through slirp4netns but not the host's loopback
or 169.254.0.0/16; host: the worker's own network (any service the host reaches); none: loopback."""


def _env(name: str) -> AliasChoices:
    """An environment name that is not prefixed, as the brief fixes it."""
    return AliasChoices(name)


class Settings(BaseSettings):
    """Everything a worker or a sender can tune. Secrets are SecretStr so they never print."""

    model_config = SettingsConfigDict(
        env_prefix="CODEWORKER_",
        use_attribute_docstrings=True,
        extra="ignore",
        populate_by_name=True,
    )

    port: int = Field(3001, validation_alias=_env("PORT"))
    """Port of the worker's HTTP server (/health, /status, /metrics)."""

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL"))
    """Broker, result backend, locks, claims and branch registry (``sentinel://h:26379;...`` too)."""

    redis_master_name: str = "mymaster"
    """The Sentinel group whose primary to use when REDIS_URL is a sentinel:// URL."""

    worker_concurrency: int = Field(2, ge=1, validation_alias=_env("WORKER_CONCURRENCY"))
    """Concurrent operations per worker (prefork children)."""

    workspace_root: Path = Field(Path("/workspace/repos"), validation_alias=_env("WORKSPACE_ROOT"))
    """Where bare mirrors and per-job worktrees live."""

    github_token: SecretStr = Field(SecretStr(""), validation_alias=_env("GITHUB_TOKEN"))
    """Token for git over HTTPS and for the GitHub API; sent by the transport, never stored."""

    github_api_url: str = Field("https://api.github.com", validation_alias=_env("GITHUB_API_URL"))
    """GitHub REST base URL (GitHub Enterprise, or a stand-in in tests)."""

    anthropic_api_key: SecretStr = Field(SecretStr(""), validation_alias=_env("ANTHROPIC_API_KEY"))
    """Key for the Anthropic API (the SDK also reads ANTHROPIC_BASE_URL itself)."""

    model: str = "claude-sonnet-4-6"
    """Model the agent executor uses (CODEWORKER_MODEL)."""

    allowed_repos: Annotated[list[str], NoDecode] = ["https://github.com/"]
    """Comma-separated prefixes a repository URL must start with."""

    queue: str = "code-operation"
    """Queue all four tasks are routed to."""

    key_prefix: str = "codeworker"
    """Prefix of every Redis key codeworker writes (besides Celery's own)."""

    soft_time_limit: int = 1800
    """Seconds after which a job is asked to stop (SoftTimeLimitExceeded)."""

    hard_time_limit: int = 1900
    """Seconds after which the pool child running a job is killed."""

    visibility_timeout: float = 30.0
    """Seconds without a sign of life after which an unacked job goes back to the queue; a live
    worker refreshes its jobs' messages every third of it, however long they run."""

    restore_interval: float = 5.0
    """Seconds between a worker's looks for jobs whose worker stopped refreshing them."""

    result_expires: int = 7 * 24 * 3600
    """Seconds results (Celery's and the idempotency record's) are kept."""

    max_iterations_cap: int = 10
    """Upper bound on a job's max_iterations."""

    default_max_iterations: int = 5
    """max_iterations when the job gives none."""

    shutdown_grace: float = 30.0
    """Seconds running jobs get after SIGTERM before they are cancelled and requeued."""

    reap_interval: float = 10.0
    """Seconds between checks for jobs whose pool process died (hard time limit, OOM)."""

    max_deferrals: int = 5
    """Times a job is put back when the model API is overloaded before it fails."""

    lock_ttl: float = 60.0
    """Seconds a file lock lives unless the watchdog renews it (renewed every third of it)."""

    lock_wait: float = 5.0
    """Seconds a job waits in its worker slot for a held file lock before giving the slot back
    (re-queued with a countdown, its locks released); 0 gives it back at once."""

    lock_wait_total: float = 3600.0
    """Seconds an operation may wait in all for files another operation holds before it fails,
    naming the holder."""

    claim_ttl: float = 30.0
    """Seconds an operation's heartbeat lives; a claim with a dead heartbeat can be taken over."""

    cancel_poll_interval: float = 1.0
    """Seconds between a running job's looks in Redis for a cancellation (its stop takes about
    this long, plus the current step's end or a command's kill)."""

    max_stalls: int = 3
    """Times an operation may lose its worker (killed, crashed) and run again before it fails."""

    max_busy_waits: int = 200
    """Times a duplicate delivery waits for a copy running elsewhere before it fails (the waits
    back off from 1 s to 30 s, so the default covers more than the hard time limit)."""

    git_author_name: str = "codeworker"
    """Author and committer name of codeworker's commits."""

    git_author_email: str = "codeworker@users.noreply.github.com"
    """Author and committer e-mail of codeworker's commits."""

    git_connect_timeout_ms: int = 10_000
    """libgit2 connect timeout for fetch and push."""

    git_read_timeout_ms: int = 120_000
    """libgit2 read timeout for fetch and push."""

    git_retries: int = Field(3, ge=0)
    """Further tries of a fetch or push that met a transient failure (refused, reset, 5xx, timeout)."""

    git_retry_delay: float = Field(1.0, ge=0)
    """Seconds before the first retry of a fetch or push; doubled for each next one (30 s at most)."""

    command_timeout: float = 600.0
    """Seconds a test or fix command may run before its process group is killed."""

    scanner: str = ""
    """Path of the trufflehog3 executable; empty looks in .venv-scanner, then on PATH."""

    scan_timeout: float = 120.0
    """Seconds the secret scan may take before the job fails closed."""

    pr_labels: Annotated[list[str], NoDecode] = ["codeworker"]
    """Comma-separated labels put on every pull request."""

    github_seconds_between_writes: float = 0.0
    """PyGithub's pause between one process's write requests (its default of 1 s, and any pause,
    slows every PR; a fleet's processes do not coordinate it anyway, and the secondary rate limit
    GitHub answers a burst with is waited out like any rate limit)."""

    github_timeout: float = Field(30.0, gt=0)
    """Seconds a GitHub API request may take before it counts as failed (no answer)."""

    github_rate_limit_wait: float = Field(60.0, ge=0)
    """Longest GitHub rate limit a job waits out; a longer one sends it back to the queue."""

    allow_unsandboxed: bool = False
    """Run repository commands without bubblewrap when it is missing (unsafe; development only)."""

    bwrap: str = "bwrap"
    """The bubblewrap executable that confines every repository command."""

    setup_network: SetupNetwork = "isolated"
    """Setup's network: isolated (outbound only, via slirp4netns), host (unsafe) or none."""

    slirp4netns: str = "slirp4netns"
    """The slirp4netns executable that gives setup its isolated network."""

    sandbox_memory_mb: int = 4096
    """Address-space limit of a sandboxed command, in MiB."""

    sandbox_max_processes: int = 256
    """Process limit of a sandboxed command (fork bombs stop here)."""

    sandbox_cpu_seconds: int = 900
    """CPU-time limit of a sandboxed command."""

    sandbox_file_mb: int = 1024
    """Largest file a sandboxed command may write (RLIMIT_FSIZE), in MiB."""

    sandbox_tmp_mb: int = 512
    """Size of a sandboxed command's private /tmp (its HOME), in MiB."""

    sandbox_extra_ro: Annotated[list[Path], NoDecode] = []
    """Colon-separated host paths every sandboxed command also sees, read-only (a toolchain in /opt)."""

    setup_timeout: float = 900.0
    """Seconds the repository's setup command (dependency install) may take."""

    cache_root: Path = Path("/workspace/cache")
    """Where setup results are kept for reuse by later jobs on the same repository."""

    trajectory_dir: Path = Path("/workspace/trajectories")
    """Where each agent job's requests, responses and tool results are recorded (JSON lines)."""

    budget_tokens: int = 3_000_000
    """Most tokens (input, output and cache) one agent job may bill."""

    budget_usd: float = 5.0
    """Most US dollars one agent job may spend."""

    budget_seconds: float = 1500.0
    """Most wall-clock seconds one agent job may take (below the soft time limit)."""

    budget_wrap_up: float = 0.8
    """Fraction of a budget at which the model is told to wrap up."""

    model_timeout: float = 300.0
    """Seconds one Messages API request may take before it is retried or the job deferred."""

    model_max_tokens: int = 8192
    """max_tokens of each model response."""

    max_turns: int = 60
    """Most model turns in one agent job, across iterations."""

    max_tool_output: int = 16_000
    """Characters of a tool result the model sees (head and tail are kept)."""

    max_view_bytes: int = 1_000_000
    """Largest file, in bytes, the agent's editor may read (view, str_replace, insert) or write."""

    max_repo_bytes: int = Field(2 * 1024**3, ge=0)
    """Largest repository, in bytes of git objects and of checked-out files; 0 is no limit."""

    max_diff_bytes: int = Field(10_000_000, ge=0)
    """Largest change pushed, in bytes of its ``git diff -U0`` patch; 0 is no limit."""

    max_changed_files: int = Field(1000, ge=0)
    """Most files one change may add, modify or delete; 0 is no limit."""

    loop_window: int = 8
    """How many recent tool calls loop detection looks at."""

    loop_repeats: int = 3
    """Identical calls within the window that earn a warning; one more ends the loop."""

    prices: dict[str, ModelPrice] = DEFAULT_PRICES
    """US dollars per million tokens, per model (CODEWORKER_PRICES as JSON)."""

    log_format: Literal["json", "console"] = "json"
    """json: one JSON object a line (production); console: readable lines (a terminal)."""

    webhook_secret: SecretStr = SecretStr("")
    """Secret GitHub signs webhook deliveries with; empty turns POST /webhooks/github off (503)."""

    mention: str = Field("codeworker", pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}$")
    """The handle people write after @ on GitHub to ask codeworker for something."""

    github_login: str = Field("", max_length=100)
    """codeworker's own GitHub account (a token that is no App's comments as a user); never a
    trigger. An account whose type is Bot or whose login ends in [bot] never is either."""

    reply_to_unauthorized: bool = True
    """Answer, once per person and pull request or issue, someone who asked without write access."""

    max_ci_follow_ups: int = Field(2, ge=0)
    """Follow-ups that failing checks may start per pull request; 0 turns the CI loop off."""

    pr_budget_usd: float = Field(20.0, ge=0)
    """Most US dollars an operation and all its revisions may spend on one pull request."""

    issue_operation_type: OperationType = OperationType.FEATURE_IMPLEMENTATION
    """Operation type of an issue labelled plain ``codeworker`` or mentioning the handle."""

    metrics_dir: Path = Path("/tmp/codeworker-metrics")  # noqa: S108 - a per-worker subdirectory, wiped at start
    """Parent of each worker's prometheus multiprocess directory (``<metrics_dir>/<worker pid>``)."""

    health_probe_interval: float = 5.0
    """Seconds between the probes a worker sends itself through Redis to prove it consumes."""

    health_stale_after: float = 30.0
    """Seconds without a probe coming back (while Redis answers) before /health says not live."""

    http_host: str = "0.0.0.0"  # noqa: S104 - the health endpoint must be reachable by the kubelet
    """Address the worker's HTTP server binds to."""

    @field_validator("allowed_repos", "pr_labels", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if is_sentinel(value):
            SentinelUrl.parse(value)  # a ValueError names what is wrong
        return value

    @field_validator("sandbox_extra_ro", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(":") if part.strip()]
        return value

    @field_validator("sandbox_extra_ro")
    @classmethod
    def _absolute(cls, value: list[Path]) -> list[Path]:
        relative = [str(path) for path in value if not path.is_absolute()]
        if relative:
            raise ValueError(f"paths must be absolute: {', '.join(relative)}")
        return value

    @field_validator("visibility_timeout", "restore_interval", "claim_ttl")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings; tests that change the environment call ``get_settings.cache_clear()``."""
    return Settings()
