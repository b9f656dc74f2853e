"""The agent loop: ask the model, run its tool calls, repeat until it ends its turn or must stop."""

from __future__ import annotations

import copy
from typing import Any

from codeworker.config import Settings
from codeworker.executors.agent import prompts
from codeworker.executors.agent.budget import Ledger
from codeworker.executors.agent.loops import LoopDetector
from codeworker.executors.agent.model import Model
from codeworker.executors.agent.tools import Environment
from codeworker.executors.agent.trajectory import Trajectory

EPHEMERAL = {"type": "ephemeral"}


class AgentStopped(RuntimeError):
    """Base of the ways a model ends a job with an error rather than with work."""


class ModelRefused(AgentStopped):
    """The model declined the request (stop_reason "refusal")."""


class ContextWindowExceeded(AgentStopped):
    """The conversation no longer fits the model's context window."""


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _as_param(block: dict[str, Any]) -> dict[str, Any]:
    """A response content block as a request block: only the fields the API takes back."""
    if block["type"] == "text":
        return text_block(block["text"])
    if block["type"] == "tool_use":
        return {"type": "tool_use", "id": block["id"], "name": block["name"], "input": block["input"]}
    return block


class Agent:
    """One conversation with the model over one environment, within one ledger."""

    def __init__(
        self,
        model: Model,
        env: Environment,
        ledger: Ledger,
        trajectory: Trajectory,
        settings: Settings,
        system: str,
    ) -> None:
        self.model, self.env, self.ledger, self.trajectory = model, env, ledger, trajectory
        self.settings = settings
        self.system = system
        self.loops = LoopDetector(settings.loop_window, settings.loop_repeats)
        self.messages: list[dict[str, Any]] = []
        self.turns = 0
        self.warned = False
        self.final_text = ""

    def tell(self, text: str) -> None:
        """Add ``text`` to the conversation as (part of) the next user message."""
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "user":
            last["content"].append(text_block(text))
        else:
            self.messages.append({"role": "user", "content": [text_block(text)]})

    def work(self) -> str | None:
        """Run until the model ends its turn (None) or the job must stop (the reason)."""
        while True:
            self.env.stop_if_cancelled()
            if self.turns >= self.settings.max_turns:
                return f"turn limit reached ({self.settings.max_turns} model turns)"
            budget = self.ledger.check()
            if budget.exceeded:
                return budget.exceeded
            if budget.wrap_up and not self.warned:
                self.warned = True
                self.tell(prompts.WRAP_UP.format(reason=budget.wrap_up))
            message = self.query()
            uses = [block for block in message["content"] if block["type"] == "tool_use"]
            if not uses and message.get("stop_reason") == "max_tokens":
                self.tell(prompts.TRUNCATED)
                continue
            if not uses and message.get("stop_reason") != "pause_turn":
                texts = [block["text"] for block in message["content"] if block["type"] == "text"]
                self.final_text = "\n".join(texts).strip()
                return None
            stuck = self.run_tools(uses)
            if stuck:
                return stuck

    def request(self) -> dict[str, Any]:
        """The next request: breakpoints on the tools, the system prompt and the latest message."""
        tools = copy.deepcopy(self.env.definitions)
        tools[-1]["cache_control"] = EPHEMERAL
        messages = copy.deepcopy(self.messages)
        messages[-1]["content"][-1]["cache_control"] = EPHEMERAL
        return {
            "model": self.settings.model,
            "max_tokens": self.settings.model_max_tokens,
            "system": [{**text_block(self.system), "cache_control": EPHEMERAL}],
            "tools": tools,
            "messages": messages,
        }

    def query(self) -> dict[str, Any]:
        request = self.request()
        self.trajectory.record("request", turn=self.turns, body=request)
        self.turns += 1
        message = self.model.send(request)
        stop = message.get("stop_reason")
        if stop == "refusal":
            raise ModelRefused("the model refused the request (stop_reason: refusal)")
        content = [_as_param(block) for block in message.get("content", [])]
        if stop == "model_context_window_exceeded" or (stop == "max_tokens" and not content):
            raise ContextWindowExceeded(f"the conversation outgrew the model's context window ({stop})")
        self.messages.append({"role": "assistant", "content": content or [text_block("(no reply)")]})
        return message

    def run_tools(self, uses: list[dict[str, Any]]) -> str | None:
        """Answer every tool call; the reason to stop when the model is going round in circles."""
        results: list[dict[str, Any]] = []
        stuck = None
        for use in uses:
            count = self.loops.see(use["name"], use["input"])
            if stuck or self.loops.is_stuck(count):
                window = self.loops.recent.maxlen
                stuck = f"stuck in a loop: the same {use['name']} call {count} times in the last {window}"
                text, is_error = "not run: the job stopped (stuck in a loop)", True
            else:
                result = self.env.call(use["name"], use["input"])
                text, is_error = result.text, result.is_error
                if self.loops.is_warning(count):
                    text += prompts.LOOP_WARNING.format(count=count)
            self.trajectory.record(
                "tool", id=use["id"], name=use["name"], input=use["input"], result=text, is_error=is_error
            )
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": use["id"], "content": text}
            if is_error:
                block["is_error"] = True
            results.append(block)
        self.messages.append({"role": "user", "content": results})
        return stuck
