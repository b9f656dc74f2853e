"""What the agent executor's tests share: a session on the real pipeline with a scripted model.

A session is a fresh repository on the real git server (by default demo/sample_bug, whose
``apply_discount`` has a bug), a pipeline and an ``AgentExecutor`` whose model is a scripted stand-in
Messages API on loopback (tests/support/anthropic_stub.py) that the real anthropic SDK reaches
through ANTHROPIC_BASE_URL, with strict response validation on. The ``stub`` and ``session``
fixtures are defined here; a test module binds them to its own names to use them.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from codeworker.config import Settings
from codeworker.executors.agent import AgentExecutor
from codeworker.loopback.gitserver import GitServer
from codeworker.models import Job, parse_job
from codeworker.pipeline.run import OperationRun
from codeworker.pipeline.service import Pipeline
from codeworker.replay import RecordedRequest
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support import anthropic_stub as s

SAMPLE = Path(__file__).resolve().parent.parent.parent / "demo" / "sample_bug"
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
    current: OperationRun | None = None

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

    def executor(self, **overrides: Any) -> AgentExecutor:
        return AgentExecutor(self.settings.model_copy(update=overrides))

    def run(self, job: Job, **overrides: Any) -> dict:
        claim = self.pipe.claims.claim(job.operation_id)
        run = OperationRun(self.pipe, job, self.executor(**overrides), claim.owner, None, time.monotonic())
        self.current = run
        return run.execute()

    @property
    def root(self) -> Path:
        """The running job's checkout."""
        assert self.current is not None
        return self.current.worktree.path

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
