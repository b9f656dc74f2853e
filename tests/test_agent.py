"""The agent executor through the real pipeline: a real git server, Redis, checkout and SDK.

The model is a scripted stand-in Messages API on loopback (tests/support/anthropic_stub.py) that the
real anthropic SDK reaches through ANTHROPIC_BASE_URL, with strict response validation on.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from codeworker.executors.agent import AgentExecutor
from codeworker.executors.agent.trajectory import read_trajectory
from codeworker.executors.base import Workspace
from pydantic import SecretStr

from codeworker.config import Settings
from codeworker.loopback.gitserver import GitServer, _git
from codeworker.models import Job, parse_job
from codeworker.pipeline.errors import OperationDeferred
from codeworker.pipeline.run import OperationRun
from codeworker.pipeline.service import Pipeline
from codeworker.replay import RecordedRequest, ReplayServer
from codeworker.verification.verifier import Verifier as WorkerVerifier
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support import anthropic_stub as s

SAMPLE = Path(__file__).resolve().parent.parent / "demo" / "sample_bug"
CART = "pricing/cart.py"
BUG = "return round(total - total * percent, 2)"
FIX = "return round(total - total * percent / 100, 2)"


def sample_files() -> dict[str, str]:
    return {str(p.relative_to(SAMPLE)): p.read_text() for p in sorted(SAMPLE.rglob("*")) if p.is_file()}


# -- fixtures ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Session:
    pipe: Pipeline
    stub: s.AnthropicStub
    settings: Settings
    git: GitServer
    name: str
    url: str
    root: Path | None = None

    def job(self, **extra: Any) -> Job:
        raw = {
            "operation_type": "error_fix",
            "description": "apply_discount takes far too much off",
            "repository": {"url": self.url, "owner": "acme", "name": self.name},
            "operation_id": f"op-{uuid.uuid4().hex[:10]}",
            "error_context": {
                "error_message": "AssertionError: assert -2800.0 == 170.0",
                "stack_trace": (
                    "tests/test_cart.py:16: in test_discount\n    assert apply_discount(200.0, 15) == 170.0"
                ),
                "affected_files": [CART],
            },
            **extra,
        }
        return parse_job(
            raw,
            operation_type=raw["operation_type"],
            allowed_repos=self.pipe.settings.allowed_repos,
            max_iterations_cap=10,
        )

    def verifier(self, job: Job, workspace: Workspace) -> Any:
        self.root = workspace.root
        return WorkerVerifier(job, workspace)

    def executor(self, **overrides: Any) -> AgentExecutor:
        return AgentExecutor(self.settings.model_copy(update=overrides), verifier=self.verifier)

    def run(self, job: Job, **overrides: Any) -> dict:
        claim = self.pipe.claims.claim(job.operation_id)
        run = OperationRun(self.pipe, job, self.executor(**overrides), claim.owner, None, time.monotonic())
        return run.execute()

    def trajectory(self, job: Job) -> Path:
        return self.settings.trajectory_dir / f"{job.operation_id}.jsonl"

    def file(self, result: dict, path: str) -> str | None:
        return self.git.read_file("acme", self.name, result["branch"], path)


@pytest.fixture()
def stub(monkeypatch: pytest.MonkeyPatch):
    server = s.AnthropicStub(ANTHROPIC_KEY).start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    # What a leaky sandbox would hand a command: the tests below look for these in tool results.
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    yield server
    server.stop()


def make_session(pipe, stub, git_server, tmp_path, files: dict[str, str] | None = None) -> Session:
    name = f"agent-{uuid.uuid4().hex[:8]}"
    url = git_server.create_repo("acme", name, files or sample_files())
    settings = pipe.settings.model_copy(
        update={"anthropic_api_key": SecretStr(ANTHROPIC_KEY), "trajectory_dir": tmp_path / "trajectories"}
    )
    return Session(pipe, stub, settings, git_server, name, url)


@pytest.fixture()
def session(pipe, stub, git_server, tmp_path) -> Session:
    return make_session(pipe, stub, git_server, tmp_path)


def tool_results(body: dict) -> list[dict]:
    content = body["messages"][-1]["content"]
    return [b for b in content if b.get("type") == "tool_result"]


def user_text(body: dict) -> str:
    return "\n".join(b.get("text", "") for b in body["messages"][-1]["content"] if b.get("type") == "text")


def fix_script(session: Session, seen: list[tuple[str, str]]) -> list[Any]:
    """The model a good engineer would be: look, fix, test, summarise."""

    def check_view(then: s.Step) -> Any:
        def step(request: RecordedRequest) -> s.Step:
            # Runs while the executor waits for the reply: the checkout is as the tool left it.
            (result,) = tool_results(request.body)
            assert session.root is not None
            lines = (session.root / CART).read_text().rstrip("\n").split("\n")
            seen.append((result["content"], "\n".join(f"{n:6}\t{line}" for n, line in enumerate(lines, 1))))
            return then

        return step

    return [
        s.say(s.text("Let me look at the discount code."), s.view(CART)),
        check_view(s.say(s.replace(CART, BUG, FIX))),
        s.say(s.bash("python -m pytest -q -p no:cacheprovider")),
        s.done("apply_discount subtracted `total * percent` instead of `total * percent / 100`; fixed it."),
    ]


# -- sessions -----------------------------------------------------------------------------------


def test_fixes_a_real_bug_and_opens_a_verified_pull_request(session, github_stub):
    seen: list[tuple[str, str]] = []
    session.stub.play(*fix_script(session, seen))
    job = session.job()

    result = session.run(job)

    assert result["status"] == "pr_open", result["error"]
    assert result["success"] is True and result["pr"]["draft"] is False
    assert result["files_modified"] == [CART] and result["iterations"] == 1
    assert FIX in session.file(result, CART)
    assert result["verification"]["before"]["passed"] is False
    assert result["verification"]["after"]["passed"] is True
    assert "percent / 100" in result["summary"]
    # Every tool result the model read is what the file system held.
    assert seen and all(got == want for got, want in seen)
    requests = session.stub.messages_requests
    assert len(requests) == 4
    bash_result = tool_results(requests[3])[0]
    assert "5 passed" in bash_result["content"] and "[exit code 0]" in bash_result["content"]
    body = github_stub.pull_requests("acme", session.name)[0]["body"]
    assert "| before |" in body and "failed" in body and "| after |" in body and "passed" in body
    assert f"${result['usage']['cost_usd']:.4f}" in body


def test_the_prompt_carries_the_jobs_context(session):
    session.stub.play(s.say(s.create("NOTES.md", "notes\n")), s.done())
    job = session.job()
    session.run(job)
    first = session.stub.messages_requests[0]
    task = first["messages"][0]["content"][0]["text"]
    assert "assert -2800.0 == 170.0" in task and "test_discount" in task and CART in task
    system = first["system"][0]["text"]
    assert "no network" in system and "runs the test suite itself" in system
    assert [t["type"] for t in first["tools"]] == ["text_editor_20250728", "bash_20250124"]


def test_max_iterations_feed_the_failure_back_each_time(session, github_stub):
    wrong = "return round(total - percent, 2)"
    feedback: list[str] = []

    def after_verification(request: RecordedRequest) -> s.Step:
        feedback.append(user_text(request.body))
        return s.done("Tried again.")

    session.stub.play(
        s.say(s.replace(CART, BUG, wrong)), s.done("Fixed."), after_verification, after_verification
    )
    job = session.job(max_iterations=3)

    result = session.run(job)

    assert result["status"] == "pr_open" and result["success"] is False
    assert result["pr"]["draft"] is True
    assert result["iterations"] == 3
    assert len(feedback) == 2
    assert all("verification after iteration" in text and "test_discount" in text for text in feedback)
    assert "after 3 of 3" in feedback[-1] or "iteration 2 of 3" in feedback[-1]
    assert "Verification still failed after 3 of 3" in result["summary"]


def test_an_exhausted_budget_keeps_the_work_on_a_draft(session, github_stub):
    session.stub.play(s.say(s.replace(CART, BUG, FIX)), s.done("never reached"))
    job = session.job()

    result = session.run(job, budget_tokens=10)

    assert result["status"] == "pr_open" and result["pr"]["draft"] is True
    assert result["success"] is False
    assert "token budget exhausted" in result["summary"]
    assert FIX in session.file(result, CART)
    assert len(session.stub.messages_requests) == 1
    assert result["usage"]["input_tokens"] + result["usage"]["cache_write_tokens"] > 10


def test_a_model_going_round_in_circles_is_stopped(session):
    again = {"command": "view", "path": CART, "view_range": [1, 3]}
    session.stub.play(
        s.say(s.replace(CART, BUG, FIX)),
        *[s.say(s.tool_use("str_replace_based_edit_tool", again)) for _ in range(4)],
        s.done("never reached"),
    )
    job = session.job()

    result = session.run(job, loop_repeats=3, loop_window=8)

    assert result["pr"]["draft"] is True and result["success"] is False
    assert "stuck in a loop" in result["summary"]
    requests = session.stub.messages_requests
    assert len(requests) == 5
    assert "one more identical call ends the job" in tool_results(requests[4])[0]["content"]
    assert "one more" not in tool_results(requests[3])[0]["content"]


def _commit_symlink(git: GitServer, name: str, path: str, target: str) -> None:
    repo = git.repo_path("acme", name)
    blob = _git("hash-object", "-w", "--stdin", cwd=repo, stdin=target.encode()).strip()
    with_link = _git("mktree", cwd=repo, stdin=f"120000 blob {blob}\t{path}\n".encode()).strip()
    base = _git("rev-parse", "main^{tree}", cwd=repo).strip()
    entries = _git("ls-tree", base, cwd=repo) + _git("ls-tree", with_link, cwd=repo)
    tree = _git("mktree", cwd=repo, stdin=entries.encode()).strip()
    sha = _git("commit-tree", tree, "-p", "main", "-m", "link", cwd=repo).strip()
    _git("update-ref", "refs/heads/main", sha, cwd=repo)


def test_writes_outside_the_checkout_are_refused_as_tool_errors(session, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    _commit_symlink(session.git, session.name, "link", str(outside))
    attempts = [
        s.create("../escape.txt", "x"),
        s.create(str(outside / "abs.txt"), "x"),
        s.create("link/through-link.txt", "x"),
        s.create(".git/hooks/pre-commit", "#!/bin/sh\n"),
        s.replace("link/../../escape.txt", "a", "b"),
        s.view("/etc/passwd"),
    ]
    session.stub.play(s.say(*attempts), s.say(s.replace(CART, BUG, FIX)), s.done())
    job = session.job()

    result = session.run(job)

    results = tool_results(session.stub.messages_requests[1])
    assert len(results) == len(attempts)
    assert all(r.get("is_error") is True for r in results), results
    assert all("refused" in r["content"] for r in results)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()
    assert "root:" not in json.dumps(results)
    assert result["files_modified"] == [CART]


def test_commands_do_not_see_the_workers_credentials(session):
    session.stub.play(
        s.say(s.bash("env; echo token=$GITHUB_TOKEN key=$ANTHROPIC_API_KEY")),
        s.say(s.replace(CART, BUG, FIX)),
        s.done(),
    )
    job = session.job()
    session.run(job)
    (result,) = tool_results(session.stub.messages_requests[1])
    assert "token= key=" in result["content"]
    assert GITHUB_TOKEN not in result["content"] and ANTHROPIC_KEY not in result["content"]


def test_an_ambiguous_str_replace_is_a_clear_tool_error(session):
    session.stub.play(
        s.say(s.replace(CART, "    return round(", "    return round(")),
        s.say(s.replace(CART, "return totl", "return total")),
        s.say(s.replace(CART, BUG, FIX)),
        s.say(s.replace(CART, BUG, FIX)),
        s.done(),
    )
    session.run(session.job())
    requests = session.stub.messages_requests
    (twice,) = tool_results(requests[1])
    assert twice["is_error"] is True
    assert "matches 3 times" in twice["content"] and "lines 8, 15, 20" in twice["content"]
    (missing,) = tool_results(requests[2])
    assert missing["is_error"] is True and "not found" in missing["content"]
    assert "nearest candidate" in missing["content"]
    (applied,) = tool_results(requests[4])
    assert applied["is_error"] is True and "applied already" in applied["content"]


# -- caching and the ledger -----------------------------------------------------------------------


def _breakpoints(body: dict) -> list[str]:
    where = [f"tools[{i}]" for i, t in enumerate(body["tools"]) if "cache_control" in t]
    where += [f"system[{i}]" for i, b in enumerate(body["system"]) if "cache_control" in b]
    for m, message in enumerate(body["messages"]):
        where += [f"messages[{m}][{i}]" for i, b in enumerate(message["content"]) if "cache_control" in b]
    return where


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def test_cache_breakpoints_roll_and_the_ledger_adds_up_exactly(session):
    session.stub.play(*fix_script(session, []))
    job = session.job()

    result = session.run(job)

    requests = session.stub.messages_requests
    for body in requests:
        marks = _breakpoints(body)
        assert len(marks) <= 4
        last = len(body["messages"]) - 1
        assert marks == [
            "tools[1]",
            "system[0]",
            f"messages[{last}][{len(body['messages'][last]['content']) - 1}]",
        ]
    for earlier, later in itertools.pairwise(requests):
        shared = _strip(earlier["messages"])
        assert _strip(later["messages"][: len(shared)]) == shared
        assert _strip(later["tools"]) == _strip(earlier["tools"]) and _strip(later["system"]) == _strip(
            earlier["system"]
        )
    usages = session.stub.usages
    assert all(u["cache_read_input_tokens"] > 0 for u in usages[1:])
    assert sum(u["cache_read_input_tokens"] for u in usages) > sum(u["input_tokens"] for u in usages)
    price = session.settings.prices[session.settings.model]
    totals = {k: sum(u[k] for u in usages) for k in usages[0]}
    usage = result["usage"]
    assert usage["input_tokens"] == totals["input_tokens"]
    assert usage["output_tokens"] == totals["output_tokens"]
    assert usage["cache_read_tokens"] == totals["cache_read_input_tokens"]
    assert usage["cache_write_tokens"] == totals["cache_creation_input_tokens"]
    expected = (
        totals["input_tokens"] * price.input
        + totals["output_tokens"] * price.output
        + totals["cache_read_input_tokens"] * price.cache_read
        + totals["cache_creation_input_tokens"] * price.cache_write
    ) / 1_000_000
    assert usage["cost_usd"] == pytest.approx(expected, abs=1e-6)


# -- API errors -----------------------------------------------------------------------------------


def test_a_429_is_retried_by_the_sdk_and_every_attempt_is_recorded(session):
    session.stub.play(s.error(429, retry_after_ms=5), *fix_script(session, []))
    job = session.job()

    result = session.run(job)

    assert result["success"] is True, result["error"]
    requests = session.stub.messages_requests
    assert len(requests) == 5 and requests[0] == requests[1]
    responses = [e for e in read_trajectory(session.trajectory(job)) if e["kind"] == "response"]
    assert [r["status"] for r in responses[:2]] == [429, 200]
    assert responses[0]["retry_after_ms"] == 5 and responses[1]["retries_taken"] == 1


def test_persistent_overload_defers_the_job(session):
    session.stub.play(*[s.error(529, retry_after_ms=5) for _ in range(3)])
    job = session.job()
    pipe = dataclasses.replace(session.pipe, resolve_executor=lambda name, kind: session.executor())

    with pytest.raises(OperationDeferred) as deferred:
        pipe.run(job.model_dump(mode="json"), "error_fix", attempt=0)

    assert "overloaded" in str(deferred.value)
    assert len(session.stub.messages_requests) == 3  # the first try and the SDK's two retries
    assert session.git.branches("acme", session.name) == ["main"]


def test_a_refusal_ends_the_job_with_a_clear_error(session):
    session.stub.play(
        s.say(s.replace(CART, BUG, FIX)), s.say(s.text("I can't help with that."), stop_reason="refusal")
    )
    result = session.run(session.job())
    assert result["status"] == "failed"
    assert "ModelRefused" in result["error"] and "refusal" in result["error"]


def test_an_unparseable_reply_is_billed_and_fails_clearly(session):
    usage = {
        "input_tokens": 1000,
        "output_tokens": 7,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    session.stub.play(s.raw(200, {"type": "message", "usage": usage}))
    job = session.job()
    result = session.run(job)
    assert result["status"] == "failed" and "InvalidReply" in result["error"]
    (error,) = [e for e in read_trajectory(session.trajectory(job)) if e["kind"] == "error"]
    assert error["usage"]["input_tokens"] == 1000 and error["usage"]["output_tokens"] == 7


def test_an_unpriced_model_is_refused_before_any_call(session):
    result = session.run(session.job(), model="claude-unknown-9")
    assert result["status"] == "failed" and "no price for model 'claude-unknown-9'" in result["error"]
    assert session.stub.requests == []


# -- the trajectory and its replay --------------------------------------------------------------


def test_the_trajectory_holds_no_secret_and_replays_to_the_same_outcome(session, tmp_path):
    session.stub.play(s.error(429, retry_after_ms=5), *fix_script(session, []))
    job = session.job()
    first = session.run(job)
    path = session.trajectory(job)

    text = path.read_text()
    assert GITHUB_TOKEN not in text and ANTHROPIC_KEY not in text
    assert "authorization" not in text.lower() and "x-api-key" not in text.lower()
    kinds = [e["kind"] for e in read_trajectory(path)]
    assert kinds[0] == "job" and kinds[-1] == "outcome"
    assert {"request", "response", "tool", "verification", "baseline"} <= set(kinds)

    # The same job on a fresh copy of the repository, its model answers served from the file.
    replay_session = make_session(session.pipe, session.stub, session.git, tmp_path / "replay")
    replay_job = replay_session.job()
    with ReplayServer(path) as server:
        session_env = pytest.MonkeyPatch()
        session_env.setenv("ANTHROPIC_BASE_URL", server.url)
        try:
            second = replay_session.run(replay_job)
        finally:
            session_env.undo()
    assert server.finished and server.diverged is None
    for key in ("status", "success", "files_modified", "iterations", "usage", "summary"):
        assert second[key] == first[key], key
    assert replay_session.file(second, CART) == session.file(first, CART)


def test_a_replay_that_diverges_is_told_so(session, tmp_path):
    session.stub.play(*fix_script(session, []))
    job = session.job()
    session.run(job)
    # A repository where the bug is different: the model's recorded edit no longer applies.
    files = {**sample_files(), CART: sample_files()[CART].replace("total * percent", "percent * total")}
    other = make_session(session.pipe, session.stub, session.git, tmp_path / "other", files)
    with ReplayServer(session.trajectory(job)) as server:
        env = pytest.MonkeyPatch()
        env.setenv("ANTHROPIC_BASE_URL", server.url)
        try:
            result = other.run(other.job())
        finally:
            env.undo()
    assert result["status"] == "failed"
    assert server.diverged is not None and re.search(r"request \d+: tool results", server.diverged)


def test_the_model_is_told_once_to_wrap_up_at_the_threshold(session):
    session.stub.play(s.say(s.view(CART)), s.done())
    session.run(session.job())
    first = sum(session.stub.usages[0].values())  # every token the first call billed

    notices: list[str] = []

    def note(request: RecordedRequest) -> s.Step:
        notices.append(user_text(request.body))
        return s.say(s.replace(CART, BUG, FIX))

    session.stub.play(s.say(s.view(CART)), note, s.done())
    result = session.run(session.job(), budget_tokens=int(first / 0.9))

    assert "Budget notice: token budget" in notices[0] and "Wrap up now" in notices[0]
    assert "token budget exhausted" in result["summary"]  # the third call was never made
    assert result["pr"]["draft"] is True and FIX in session.file(result, CART)


DEMO_SESSION = SAMPLE.parent / "sessions" / "error_fix.jsonl"

DEMO_JOB = {
    "operation_type": "error_fix",
    "description": "apply_discount takes far too much off: a 15% discount on 200.00 gives -2800.00",
    "error_context": {
        "error_message": "AssertionError: assert -2800.0 == 170.0",
        "stack_trace": (
            "tests/test_cart.py:16: in test_discount\n    assert apply_discount(200.0, 15) == 170.0\n"
            "E   AssertionError: assert -2800.0 == 170.0"
        ),
        "affected_files": [CART],
    },
    "approval_required": True,
}
"""The demo's job (repository added by the demo); its recorded session is DEMO_SESSION."""


def demo_script() -> list[s.Step]:
    return [
        s.say(s.text("I'll start by looking at the project layout."), s.view(".")),
        s.say(
            s.text("Let me reproduce the failure first."), s.bash("python -m pytest -q -p no:cacheprovider")
        ),
        s.say(s.text("The failing test is test_discount. Let me read the discount code."), s.view(CART)),
        s.say(
            s.text(
                "`apply_discount` multiplies by `percent` as if it were a fraction: 15 takes off 15 times "
                "the total. The percentage has to be divided by 100."
            ),
            s.replace(CART, BUG, FIX),
        ),
        s.say(s.text("Now the full test suite again."), s.bash("python -m pytest -q -p no:cacheprovider")),
        s.done(
            "Fixed `apply_discount` in pricing/cart.py: it subtracted `total * percent`, treating the "
            "percentage as a fraction, so a 15% discount on 200.00 gave -2800.00. It now subtracts "
            "`total * percent / 100`. All 5 tests pass, including test_discount."
        ),
    ]


def _run_demo_job(session: Session) -> tuple[Job, dict]:
    raw = {**DEMO_JOB, "repository": {"url": session.url, "owner": "acme", "name": session.name}}
    job = parse_job(
        raw,
        operation_type="error_fix",
        allowed_repos=session.pipe.settings.allowed_repos,
        max_iterations_cap=10,
    )
    return job, session.run(job)


def _model_turns(trajectory: str) -> list[object]:
    """What the model said in a session: the content of every response, ids aside."""
    turns = []
    for line in trajectory.splitlines():
        entry = json.loads(line)
        if entry["kind"] == "response":
            turns.append(
                [{k: v for k, v in block.items() if k != "id"} for block in entry["body"]["content"]]
            )
    return turns


def test_the_committed_demo_session_is_what_the_demo_script_records(session):
    """The demo replays ``DEMO_SESSION``; it must stay what ``demo_script`` produces. To re-record
    after changing the script: CODEWORKER_RECORD_DEMO=1 pytest -k committed_demo_session."""
    session.stub.play(*demo_script())
    job, result = _run_demo_job(session)
    assert result["success"] is True, result
    recorded = session.trajectory(job).read_text()
    if os.environ.get("CODEWORKER_RECORD_DEMO"):
        DEMO_SESSION.parent.mkdir(parents=True, exist_ok=True)
        DEMO_SESSION.write_text(recorded)
    assert _model_turns(recorded) == _model_turns(DEMO_SESSION.read_text())


def test_the_demo_session_replays_through_the_real_sdk(session, monkeypatch):
    with ReplayServer(DEMO_SESSION) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        _, result = _run_demo_job(session)
    assert server.diverged is None and server.finished
    assert result["success"] is True and result["status"] == "pr_open", result["error"]
    assert FIX in session.file(result, CART)
    text = DEMO_SESSION.read_text()
    assert GITHUB_TOKEN not in text and ANTHROPIC_KEY not in text


def test_replay_main_runs_a_recorded_job_through_the_pipeline(
    session, redis_server, github_stub, monkeypatch, tmp_path
):
    from codeworker.config import get_settings
    from codeworker.pipeline.service import pipeline
    from codeworker.replay import replay_main

    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({**DEMO_JOB, "repository": {"url": session.url}}))
    env = {
        "REDIS_URL": redis_server.url,
        "WORKSPACE_ROOT": str(tmp_path / "ws"),
        "GITHUB_API_URL": github_stub.url,
        "CODEWORKER_ALLOWED_REPOS": session.git.base_url,
        "CODEWORKER_TRAJECTORY_DIR": str(tmp_path / "replayed"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    printed: list[str] = []
    try:
        assert replay_main(DEMO_SESSION, job_file, echo=printed.append) == 0, printed
    finally:
        get_settings.cache_clear()
        pipeline.cache_clear()
    assert printed[0].startswith("replaying 6 recorded model responses")
    assert json.loads(printed[1])["status"] == "pr_open"
