"""``agent``: Claude edits the checkout with Anthropic's client tools; the worker verifies.

Iteration 1 lets the model work until it ends its turn; the workspace's verification (the worker's
rule, against the baseline the worker took) then says what is missing, and that goes back to the
model as the next user message while iterations remain. Budgets stop the loop early. Whatever the
loop concluded, the worker verifies the result again after the executor returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from codeworker.config import Settings, get_settings
from codeworker.executors.agent import prompts
from codeworker.executors.agent.agent import Agent, text_block
from codeworker.executors.agent.budget import Ledger
from codeworker.executors.agent.model import AnthropicModel, Attempt, AttemptSink, Model
from codeworker.executors.agent.tools import Tools
from codeworker.executors.agent.trajectory import Trajectory
from codeworker.executors.base import Outcome, Workspace
from codeworker.models import Job, Verification
from codeworker.verification.verifier import feedback

SUMMARY_LIMIT = 4000
"""Characters of the model's final text kept in the summary (commit message and PR body)."""


ModelFactory = Callable[[Settings, AttemptSink], Model]


def anthropic_model(settings: Settings, on_attempt: AttemptSink) -> Model:
    timeout = min(settings.budget_seconds, settings.model_timeout)
    return AnthropicModel(settings.anthropic_api_key.get_secret_value(), on_attempt, timeout=timeout)


class AgentExecutor:
    """The default executor of every operation type once registered."""

    name = "agent"

    def __init__(
        self,
        settings: Settings | None = None,
        model: ModelFactory = anthropic_model,
    ) -> None:
        self.settings = settings or get_settings()
        self.model_factory = model

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
            prompts.system_prompt(
                job,
                workspace.root,
                prompts.repository_guidance(workspace),
                prompts.repository_facts(workspace),
            ),
        )
        agent.messages = [{"role": "user", "content": [text_block(prompts.task_prompt(job))]}]
        max_iterations = min(
            job.max_iterations or settings.default_max_iterations, settings.max_iterations_cap
        )
        iteration, stopped, verdict = 0, None, None
        while iteration < max_iterations and stopped is None:
            iteration += 1
            stopped = agent.work()
            verdict = workspace.verify()
            trajectory.record(
                "verification", iteration=iteration, ok=verdict.verified, reasons=verdict.reasons
            )
            if verdict.verified or stopped:
                break
            if iteration < max_iterations:
                failure = feedback(verdict, settings.max_tool_output)
                agent.tell(prompts.feedback_prompt(iteration, max_iterations, failure))
        assert verdict is not None
        outcome = Outcome(
            summary=_summary(agent.final_text, verdict, stopped, iteration, max_iterations),
            iterations=iteration,
            usage=ledger.usage.model_copy(),
        )
        trajectory.record(
            "outcome", outcome=outcome.model_dump(mode="json"), stopped=stopped, turns=agent.turns
        )
        return outcome


def _summary(
    final: str, verdict: Verification, stopped: str | None, iteration: int, max_iterations: int
) -> str:
    text = final if len(final) <= SUMMARY_LIMIT else final[: SUMMARY_LIMIT - 1] + "…"
    lines = [text or "(the model gave no summary)"]
    if stopped:
        lines.append(f"Stopped early: {stopped}. The work so far is kept, unverified.")
    elif not verdict.verified and iteration >= max_iterations:
        lines.append(f"Verification still failed after {iteration} of {max_iterations} iteration(s).")
    if verdict.reasons:
        lines.append("Verification: " + "; ".join(verdict.reasons))
    return "\n\n".join(lines)


__all__: list[Any] = ["AgentExecutor"]
