"""A scripted Anthropic Messages API on loopback, driven by the real SDK through its base URL.

A test plays a session: a list of steps, each a message (content blocks; the stand-in adds id,
model, stop_reason and usage) or an error answer (429/529 with ``retry-after-ms``), or a function
of the request returning either. Every request is recorded. Cache usage is computed the way the
API bills it: a prefix ending at a ``cache_control`` breakpoint is written to the cache and read
back by a later request that shares it (looking back up to 20 blocks from each breakpoint), so a
test can check the ledger against the stand-in's own numbers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from codeworker.replay import MessagesServer, RecordedRequest, Reply, api_error

LOOKBACK = 20
"""Blocks before a breakpoint the API checks for an earlier cache entry."""


@dataclass(frozen=True)
class Step:
    reply: Reply | None = None
    content: list[dict[str, Any]] | None = None
    stop_reason: str | None = None


Script = Step | Callable[[RecordedRequest], Step]


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


_ids = itertools.count(1)


def tool_use(name: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):06d}", "name": name, "input": tool_input}


def view(path: str, **extra: Any) -> dict[str, Any]:
    return tool_use("str_replace_based_edit_tool", {"command": "view", "path": path, **extra})


def replace(path: str, old: str, new: str) -> dict[str, Any]:
    return tool_use(
        "str_replace_based_edit_tool",
        {"command": "str_replace", "path": path, "old_str": old, "new_str": new},
    )


def create(path: str, content: str) -> dict[str, Any]:
    return tool_use("str_replace_based_edit_tool", {"command": "create", "path": path, "file_text": content})


def bash(command: str) -> dict[str, Any]:
    return tool_use("bash", {"command": command})


def say(*blocks: dict[str, Any], stop_reason: str | None = None) -> Step:
    """A message; stop_reason is tool_use when it calls a tool, else end_turn."""
    reason = stop_reason or ("tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn")
    return Step(content=list(blocks), stop_reason=reason)


def done(summary: str = "Done.") -> Step:
    return say(text(summary))


def error(status: int, retry_after_ms: int | None = 1, kind: str | None = None) -> Step:
    kinds = {429: "rate_limit_error", 529: "overloaded_error", 500: "api_error", 400: "invalid_request_error"}
    reply = api_error(status, kind or kinds.get(status, "api_error"), f"stand-in error {status}")
    headers = {"retry-after-ms": str(retry_after_ms)} if retry_after_ms is not None else None
    return Step(reply=Reply(reply.status, reply.body, headers))


def raw(status: int, body: Any) -> Step:
    """An answer exactly as given (a body the SDK's strict validation refuses, say)."""
    return Step(reply=Reply(status, body))


def _strip(block: Any) -> Any:
    return {k: v for k, v in block.items() if k != "cache_control"} if isinstance(block, dict) else block


def tokens(block: Any) -> int:
    """The stand-in's tokenizer: one token per four characters of the block's JSON."""
    return max(1, len(json.dumps(_strip(block), sort_keys=True)) // 4)


def blocks_of(body: dict[str, Any]) -> list[Any]:
    """The request as the cache sees it: tools, system blocks, then every message's blocks."""
    system = body.get("system") or []
    flat: list[Any] = list(body.get("tools") or [])
    flat += [{"type": "text", "text": system}] if isinstance(system, str) else list(system)
    for message in body.get("messages", []):
        content = message["content"]
        content = [{"type": "text", "text": content}] if isinstance(content, str) else content
        flat += [{"role": message["role"], **block} for block in content]
    return flat


class AnthropicStub(MessagesServer):
    """The Messages API for one key, answering from a script."""

    def __init__(self, api_key: str) -> None:
        super().__init__(api_key)
        self.script: deque[Script] = deque()
        self.cache: set[str] = set()
        self.usages: list[dict[str, int]] = []
        self.ids = itertools.count(1)

    def play(self, *steps: Script) -> None:
        self.script.extend(steps)

    @property
    def messages_requests(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.path.startswith("/v1/messages")]

    def answer(self, request: RecordedRequest, index: int) -> Reply:
        if not self.script:
            return api_error(400, "invalid_request_error", "the stand-in's script is exhausted")
        step = self.script.popleft()
        if callable(step):
            step = step(request)
        if step.reply is not None:
            return step.reply
        assert step.content is not None
        usage = self.cache_usage(request.body)
        usage["output_tokens"] = sum(tokens(b) for b in step.content)
        self.usages.append(usage)
        message = {
            "id": f"msg_stub{next(self.ids):05d}",
            "type": "message",
            "role": "assistant",
            "model": request.body.get("model", "claude-sonnet-4-6"),
            "content": step.content,
            "stop_reason": step.stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        return Reply(200, message)

    def cache_usage(self, body: dict[str, Any]) -> dict[str, int]:
        flat = blocks_of(body)
        sizes = [tokens(b) for b in flat]
        hashes, digest = [], hashlib.sha256()
        for block in flat:
            digest.update(json.dumps(_strip(block), sort_keys=True).encode())
            hashes.append(digest.copy().hexdigest())
        breakpoints = [i for i, b in enumerate(flat) if isinstance(b, dict) and "cache_control" in b]
        if not breakpoints:
            return {
                "input_tokens": sum(sizes),
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0,
            }
        last = breakpoints[-1]
        hit = -1
        for point in reversed(breakpoints):
            hit = next(
                (i for i in range(point, max(-1, point - LOOKBACK), -1) if hashes[i] in self.cache), -1
            )
            if hit >= 0:
                break
        self.cache.update(hashes[i] for i in breakpoints)
        return {
            "input_tokens": sum(sizes[last + 1 :]),
            "cache_read_input_tokens": sum(sizes[: hit + 1]),
            "cache_creation_input_tokens": sum(sizes[hit + 1 : last + 1]),
        }
