"""Replaying a recorded agent session through the real SDK, offline.

:class:`MessagesServer` is a Messages API on loopback (``POST /v1/messages``) that records every
request; :class:`ReplayServer` answers with the responses of a trajectory file (written by the
``agent`` executor) in order, error answers and their ``retry-after`` included, so the SDK's
retries replay too. Pointing ``ANTHROPIC_BASE_URL`` at it runs a job the way it ran, without a key
and without a network; the test suite's scripted stand-in builds on the same server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from codeworker.executors.agent.trajectory import read_trajectory
from codeworker.loopback.server import LoopbackServer

REPLAY_RETRY_CAP_MS = 200.0
"""A recorded retry-after is served at most this long: a replay need not wait as the API asked."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: dict[str, str] | None = None


MODEL_ENTRY = {
    "type": "model",
    "id": "claude-sonnet-4-6",
    "display_name": "Claude Sonnet 4.6",
    "created_at": "2026-01-01T00:00:00Z",
}
"""The one model the loopback servers list."""


def api_error(status: int, kind: str, message: str) -> Reply:
    """An error in the API's own shape."""
    return Reply(status, {"type": "error", "error": {"type": kind, "message": message}})


def last_tool_results(body: Any) -> list[Any]:
    """The tool results the request's last user message carries (what a replay checks).

    A bash result is reduced to its last line (the exit status): test timings and temporary
    paths differ from run to run, the outcome must not.
    """
    messages = body.get("messages", []) if isinstance(body, dict) else []
    if not messages or not isinstance(messages[-1].get("content"), list):
        return []
    names = {}
    if len(messages) > 1 and isinstance(messages[-2].get("content"), list):
        names = {b.get("id"): b.get("name") for b in messages[-2]["content"] if isinstance(b, dict)}
    results = []
    for block in messages[-1]["content"]:
        if not isinstance(block, dict) or block.get("type") != "tool_result":
            continue
        content = block.get("content")
        if names.get(block.get("tool_use_id")) == "bash" and isinstance(content, str):
            content = content.rstrip().rsplit("\n", 1)[-1]
        results.append({"content": content, "is_error": block.get("is_error", False)})
    return results


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        self._send(self.server.owner.handle(request))

    def do_GET(self) -> None:
        """Only ``/v1/models`` (``codeworker doctor``'s authenticated call), with the key checked."""
        server = self.server.owner
        if self.path.split("?")[0] != "/v1/models":
            self._send(api_error(404, "not_found_error", f"{self.path} is not served here"))
        elif server.api_key is not None and not server._authorized(
            {k.lower(): v for k, v in self.headers.items()}
        ):
            self._send(api_error(401, "authentication_error", "invalid x-api-key"))
        else:
            self._send(
                Reply(200, {"data": [MODEL_ENTRY], "has_more": False, "first_id": None, "last_id": None})
            )

    def _send(self, reply: Reply) -> None:
        data = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_replay")
        for name, value in (reply.headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


class MessagesServer(LoopbackServer):
    """A Messages API on ``127.0.0.1``; subclasses decide the answer to each request.

    With ``api_key`` set, a request must carry it (``Authorization: Bearer`` or ``x-api-key``).
    """

    handler = _Handler

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, request: RecordedRequest) -> Reply:
        with self.lock:
            self.requests.append(request)
            if request.path.split("?")[0] != "/v1/messages":
                return api_error(404, "not_found_error", f"{request.path} is not served here")
            if self.api_key is not None and not self._authorized(request.headers):
                return api_error(401, "authentication_error", "invalid x-api-key")
            if not isinstance(request.body, dict):
                return api_error(400, "invalid_request_error", "the body must be a JSON object")
            return self.answer(request, len(self.requests) - 1)

    def _authorized(self, headers: dict[str, str]) -> bool:
        return self.api_key in (
            headers.get("x-api-key"),
            headers.get("authorization", "").removeprefix("Bearer "),
        )

    def answer(self, request: RecordedRequest, index: int) -> Reply:
        raise NotImplementedError


class ReplayDiverged(RuntimeError):
    """The replayed job sent a request the recorded session did not."""


class ReplayServer(MessagesServer):
    """Serves a trajectory's recorded responses in order; given several trajectories, one after
    the other (a job's session, then its follow-up's, for a worker that has one base URL).

    With ``check``, each request's last tool results must equal the recorded request's; a replay
    that diverges gets a 400 naming the difference (and ``diverged`` says so) rather than answers
    that no longer fit the conversation.
    """

    def __init__(self, *trajectories: Path, check: bool = True, api_key: str | None = None) -> None:
        super().__init__(api_key)
        self.check = check
        self.diverged: str | None = None
        self.served = 0
        self.script: list[tuple[Any, dict[str, Any]]] = []
        self.job: dict[str, Any] | None = None
        """The first trajectory's job (what ``replay_main`` runs)."""
        for trajectory in trajectories:
            recorded_request: Any = None
            for entry in read_trajectory(trajectory):
                if entry["kind"] == "request":
                    recorded_request = entry["body"]
                elif entry["kind"] == "response":
                    self.script.append((recorded_request, entry))
                elif entry["kind"] == "job" and self.job is None:
                    self.job = entry["job"]

    @property
    def finished(self) -> bool:
        return self.served == len(self.script)

    def answer(self, request: RecordedRequest, index: int) -> Reply:
        if self.served >= len(self.script):
            self.diverged = f"request {self.served + 1} was not in the recorded session"
            return api_error(400, "invalid_request_error", f"replay exhausted: {self.diverged}")
        recorded_request, response = self.script[self.served]
        if self.check and response.get("retries_taken", 0) == 0:
            got, want = last_tool_results(request.body), last_tool_results(recorded_request)
            if got != want:
                self.diverged = (
                    f"request {self.served + 1}: tool results {got!r} differ from the recorded {want!r}"
                )
                return api_error(400, "invalid_request_error", f"replay diverged: {self.diverged}")
        self.served += 1
        headers = None
        if response.get("retry_after_ms") is not None:
            headers = {"retry-after-ms": str(min(response["retry_after_ms"], REPLAY_RETRY_CAP_MS))}
        return Reply(response["status"], response["body"], headers)


def replay_main(trajectory: Path, job: Path | None = None, echo: Any = print) -> int:
    """``codeworker replay TRAJECTORY [--job job.json]``: run the job (the file's, else the one the
    trajectory recorded) in this process through the pipeline, its model answers served from the
    trajectory. Exit status 0 when the job succeeds and the whole session was replayed."""
    from codeworker.config import get_settings
    from codeworker.executors.agent import AgentExecutor
    from codeworker.pipeline.service import pipeline

    with ReplayServer(trajectory) as server:
        raw = json.loads(job.read_text()) if job is not None else server.job
        if raw is None:
            echo(f"{trajectory} records no job; pass --job")
            return 2
        os.environ["ANTHROPIC_BASE_URL"] = server.url
        if not os.environ.get("ANTHROPIC_API_KEY"):  # the SDK wants a credential; a replay needs none
            os.environ["ANTHROPIC_API_KEY"] = "replay-no-key"
        get_settings.cache_clear()
        pipeline.cache_clear()
        echo(f"replaying {len(server.script)} recorded model responses from {trajectory} ({server.url})")
        # A recorded agent session replays through the agent, whatever the job names.
        agent = AgentExecutor(get_settings())
        runner = dataclasses.replace(pipeline(), resolve_executor=lambda name, operation_type: agent)
        result = runner.run(raw, raw["operation_type"])
        echo(json.dumps(result, indent=2))
        if server.diverged:
            echo(f"the replay diverged: {server.diverged}")
        return 0 if result.get("success") and server.finished and not server.diverged else 1
