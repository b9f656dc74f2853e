"""The agent executor's trajectory and its replay, and the demo's recorded session.

A job's trajectory holds no secret and, served back by a ReplayServer through the real anthropic
SDK, replays to the same outcome or says where it diverged; the demo's committed session is what
the demo's script records, and replays through the SDK and through ``replay_main``.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from codeworker.executors.agent.trajectory import read_trajectory
from codeworker.models import Job, parse_job
from codeworker.replay import ReplayServer
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support import agent_session
from tests.support import anthropic_stub as s
from tests.support.agent_session import (
    BUG,
    CART,
    FIX,
    SAMPLE,
    Session,
    fix_script,
    make_session,
    sample_files,
)
from tests.support.pipeline_runs import with_executor

# The shared fixtures, bound to this module's names: pytest finds them here for these tests only.
stub = agent_session.stub
session = agent_session.session

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
    assert {"request", "response", "tool", "verification"} <= set(kinds)

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


DEMO_SESSION = SAMPLE.parent / "sessions" / "error_fix.jsonl"
DEMO_FOLLOW_UP = SAMPLE.parent / "sessions" / "follow_up.jsonl"

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


def test_the_demo_follow_up_session_replays_after_the_error_fix(session, monkeypatch):
    """``make demo``'s follow-up: the recorded revision still fits the pipeline as it is."""
    with ReplayServer(DEMO_SESSION, DEMO_FOLLOW_UP) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        job, first = _run_demo_job(session)
        request = {"operation_id": job.operation_id, "instructions": "refuse a negative tax rate too"}
        revised = with_executor(session.pipe, session.executor()).follow_up(request)
    assert server.diverged is None and server.finished
    assert revised["status"] == "pr_open" and revised["success"] is True, revised["error"]
    assert revised["commits"][:-1] == first["commits"] and revised["verification"]["regressions"] == []
    assert "rate cannot be negative" in (session.file(revised, CART) or "")
    assert GITHUB_TOKEN not in DEMO_FOLLOW_UP.read_text() and ANTHROPIC_KEY not in DEMO_FOLLOW_UP.read_text()


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
