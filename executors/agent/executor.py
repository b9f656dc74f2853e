"""``agent``: Claude edits the checkout with Anthropic's client tools; the worker verifies.

Iteration 1 lets the model work until it ends its turn; the worker then runs its own
verification, and a failure goes back to the model as the next user message while iterations
remain. Budgets stop the loop early, with the work so far reported unverified.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from codeworker.config import Settings, get_settings
from codeworker.executors.agent import prompts
from codeworker.executors.agent.agent import Agent, text_block
from codeworker.executors.agent.budget import Ledger
from codeworker.executors.agent.model import AnthropicModel, Attempt, AttemptSink, Model
from codeworker.executors.agent.tools import Tools
from codeworker.executors.agent.trajectory import Trajectory
from codeworker.executors.base import Outcome, Workspace
from codeworker.models import Job, TestRun, Verification
from codeworker.verification.verifier import Verifier as WorkerVerifier

SUMMARY_LIMIT = 4000
"""Characters of the model's final text kept in the summary (commit message and PR body)."""


class Verdict(Protocol):
    """What ``codeworker.verification.verifier.Verifier.verify`` answers."""

    ok: bool
    reasons: list[str]
    before: TestRun | None
    after: TestRun | None

    def feedback(self, limit: int) -> str: ...


class Verifier(Protocol):
    def baseline(self) -> TestRun | None: ...

    def verify(self, baseline: TestRun | None) -> Verdict: ...


ModelFactory = Callable[[Settings, AttemptSink], Model]
VerifierFactory = Callable[[Job, Workspace], Verifier]


def anthropic_model(settings: Settings, on_attempt: AttemptSink) -> Model:
    timeout = min(settings.budget_seconds, settings.model_timeout)
    return AnthropicModel(settings.anthropic_api_key.get_secret_value(), on_attempt, timeout=timeout)


def worker_verifier(job: Job, workspace: Workspace) -> Verifier:
    return WorkerVerifier(job, workspace)


class AgentExecutor:
    """The default executor of every operation type once registered."""

    name = "agent"

    def __init__(
        self,
        settings: Settings | None = None,
        model: ModelFactory = anthropic_model,
        verifier: VerifierFactory = worker_verifier,
    ) -> None:
        self.settings = settings or get_settings()
        self.model_factory = model
        self.verifier_factory = verifier

    def run(self, job: Job, workspace: Workspace) -> Outcome:
        settings = self.settings
        ledger = Ledger(settings)  # an unpriced model is refused before anything runs
        trajectory = Trajectory(settings.trajectory_dir, job.operation_id)
        try:
            trajectory.record("job", model=settings.model, job=job.model_dump(mode="json"))
            return self._run(job, workspace, ledger, trajectory)
        except Exception as exc:
            trajectory.record("error", error=f"{type(exc).__name__}: {exc}", usage=ledger.usage.model_dump())
            raise
        finally:
            trajectory.close()

    def _run(self, job: Job, workspace: Workspace, ledger: Ledger, trajectory: Trajectory) -> Outcome:
        settings = self.settings

        def on_attempt(attempt: Attempt) -> None:
            if attempt.usage is not None:
                ledger.add(attempt.usage)
            trajectory.record(
                "response",
                status=attempt.status,
                retries_taken=attempt.retries_taken,
                retry_after_ms=attempt.retry_after_ms,
                body=attempt.body,
            )

        tools = Tools(workspace, settings.max_tool_output, settings.max_view_bytes)
        agent = Agent(
            self.model_factory(settings, on_attempt),
            tools,
            ledger,
            trajectory,
            settings,
            prompts.system_prompt(job, workspace.root),
        )
        verifier = self.verifier_factory(job, workspace)
        baseline = verifier.baseline()
        trajectory.record("baseline", run=baseline.model_dump() if baseline else None)
        agent.messages = [{"role": "user", "content": [text_block(prompts.task_prompt(job))]}]
        max_iterations = min(
            job.max_iterations or settings.default_max_iterations, settings.max_iterations_cap
        )
        iteration, stopped, verdict = 0, None, None
        while iteration < max_iterations and stopped is None:
            iteration += 1
            stopped = agent.work()
            verdict = verifier.verify(baseline)
            trajectory.record("verification", iteration=iteration, ok=verdict.ok, reasons=verdict.reasons)
            if verdict.ok or stopped:
                break
            if iteration < max_iterations:
                failure = verdict.feedback(settings.max_tool_output)
                agent.tell(prompts.feedback_prompt(iteration, max_iterations, failure))
        assert verdict is not None
        outcome = Outcome(
            summary=_summary(agent.final_text, verdict, stopped, iteration, max_iterations),
            iterations=iteration,
            verified=verdict.ok and stopped is None,
            verification=Verification(before=verdict.before or baseline, after=verdict.after),
            usage=ledger.usage.model_copy(),
        )
        trajectory.record(
            "outcome", outcome=outcome.model_dump(mode="json"), stopped=stopped, turns=agent.turns
        )
        return outcome


def _summary(final: str, verdict: Verdict, stopped: str | None, iteration: int, max_iterations: int) -> str:
    text = final if len(final) <= SUMMARY_LIMIT else final[: SUMMARY_LIMIT - 1] + "…"
    lines = [text or "(the model gave no summary)"]
    if stopped:
        lines.append(f"Stopped early: {stopped}. The work so far is kept, unverified.")
    elif not verdict.ok and iteration >= max_iterations:
        lines.append(f"Verification still failed after {iteration} of {max_iterations} iteration(s).")
    if verdict.reasons:
        lines.append("Verification: " + "; ".join(verdict.reasons))
    return "\n\n".join(lines)


__all__: list[Any] = ["AgentExecutor"]
