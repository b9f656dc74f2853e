"""The worker's small HTTP server: ``/health``, ``/status``, ``/metrics`` and the GitHub webhook.

It runs on threads of each worker's main process (a Celery bootstep starts it, see
:mod:`codeworker.worker.bootsteps`), served by waitress. What it shows is handed in as a
:class:`WorkerState`, so this module never imports Celery and an app can be built in a test around a
real Redis without a worker.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, jsonify, request
from waitress import wasyncore
from waitress.server import create_server
from waitress.trigger import trigger

from codeworker import logs
from codeworker.config import Settings
from codeworker.coordination.deliveries import Deliveries
from codeworker.coordination.keys import repo_id
from codeworker.coordination.registry import BranchRegistry, BranchStatus, InvalidTransition, UnknownBranch
from codeworker.triggers import Triggers
from codeworker.worker import metrics
from codeworker.worker.health import Health

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    """What the endpoints read; callables, because each request must see the worker as it is now."""

    hostname: str
    concurrency: int
    health: Callable[[], Health]
    active_jobs: Callable[[], list[dict[str, Any]]]
    """Running jobs: operation_id, operation_type, repository, stage, iteration, started_at..."""
    registry: BranchRegistry
    started_at: float
    triggers: Callable[[Deliveries], Triggers] | None = None
    """What GitHub events start (follow-ups, operations from issues), built per request around its
    delivery record; None: only closed pull requests are acted on."""


def create_app(settings: Settings, state: WorkerState) -> Flask:
    app = Flask("codeworker")
    app.config["CODEWORKER_SETTINGS"] = settings

    def health_response(healthy: bool, report: Health) -> tuple[Response, int]:
        return jsonify(report.as_json()), 200 if healthy else 503

    @app.get("/health")
    @app.get("/health/ready")
    def ready() -> tuple[Response, int]:
        """Ready: Redis answers and the consumer is proven to take messages (or is full)."""
        report = state.health()
        return health_response(report.ready, report)

    @app.get("/health/live")
    def live() -> tuple[Response, int]:
        """Live: fails only when Redis answers but the consumer has stopped (restart helps)."""
        report = state.health()
        return health_response(report.live, report)

    @app.get("/status")
    def status() -> Response:
        now = time.time()
        jobs = []
        for job in state.active_jobs():
            started = job.get("started_at")
            jobs.append({**job, "elapsed": round(now - started, 3) if started else None})
        return jsonify(
            {
                "hostname": state.hostname,
                "concurrency": state.concurrency,
                "started_at": state.started_at,
                "uptime": round(now - state.started_at, 3),
                "active": jobs,
                "totals": metrics.totals(),
            }
        )

    @app.get("/metrics")
    def prometheus() -> Response:
        started = [job["started_at"] for job in state.active_jobs() if job.get("started_at")]
        body, content_type = metrics.render(metrics.WorkerGauges(state.concurrency, started))
        return Response(body, content_type=content_type)

    @app.post("/webhooks/github")
    def github_webhook() -> tuple[Response, int]:
        deliveries = Deliveries(state.registry.client, state.registry.keys)
        triggers = state.triggers(deliveries) if state.triggers is not None else None
        return _github_webhook(settings, state.registry, deliveries, triggers)

    return app


# -- the GitHub webhook ----------------------------------------------------------------------------


def signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _github_webhook(
    settings: Settings, registry: BranchRegistry, deliveries: Deliveries, triggers: Triggers | None
) -> tuple[Response, int]:
    secret = settings.webhook_secret.get_secret_value()
    if not secret:
        return jsonify({"error": "webhook secret not configured"}), 503
    sent = request.headers.get("X-Hub-Signature-256")
    if not sent:
        return jsonify({"error": "missing X-Hub-Signature-256"}), 401
    # The raw bytes, before any parsing: the signature covers exactly what was sent.
    body = request.get_data(cache=True)
    if not hmac.compare_digest(sent.encode(), signature(secret, body).encode()):
        return jsonify({"error": "signature does not match"}), 403

    event = request.headers.get("X-GitHub-Event", "")
    payload = request.get_json(silent=True)
    if event == "ping":
        return jsonify({"ok": True, "event": "ping"}), 200
    if not isinstance(payload, dict):
        return jsonify({"error": "body is not a JSON object"}), 400
    closed = event == "pull_request" and payload.get("action") == "closed"
    if not closed and triggers is None:
        return jsonify({"ignored": f"{event} {payload.get('action') or ''}".strip()}), 202
    delivery = request.headers.get("X-GitHub-Delivery")
    if delivery and not deliveries.first(delivery):
        return jsonify({"duplicate": delivery}), 200
    try:
        if closed:
            return _pull_request_closed(registry, payload)
        assert triggers is not None
        answer = triggers.handle(event, payload, delivery or "")
        return jsonify(answer.body), answer.status
    except Exception:
        if delivery:
            deliveries.forget(delivery)
        raise


def _pull_request_closed(registry: BranchRegistry, payload: dict[str, Any]) -> tuple[Response, int]:
    """Move the branch record of a closed PR to merged or closed; branches we do not know are ignored."""
    pull = payload.get("pull_request") or {}
    head = pull.get("head") or {}
    repository = (head.get("repo") or payload.get("repository")) or {}
    url = repository.get("html_url") or repository.get("clone_url")
    branch = head.get("ref")
    if not isinstance(url, str) or not isinstance(branch, str):
        return jsonify({"error": "pull_request.head.ref and repository.html_url are required"}), 400
    repo = repo_id(url)
    to = BranchStatus.MERGED if pull.get("merged") else BranchStatus.CLOSED
    fields = {"pr_number": pull["number"]} if isinstance(pull.get("number"), int) else {}
    try:
        record = registry.transition(repo, branch, to, **fields)
    except UnknownBranch:
        return jsonify({"ignored": f"{repo} {branch} is not a codeworker branch"}), 202
    except InvalidTransition as exc:
        # Already merged or closed (a redelivered webhook), or a PR codeworker did not open.
        return jsonify({"ignored": str(exc)}), 202
    with logs.bound_operation(record.operation_id):
        log.info("branch %s of %s is %s (pull request #%s)", branch, repo, to.value, pull.get("number"))
    return jsonify({"branch": branch, "repo": repo, "status": record.status.value}), 200


# -- serving -----------------------------------------------------------------------------------------

THREADS = 4
"""Threads that run requests. Every handler is short (a scrape reads a few small files, /health
waits at most a second for Redis), so a few keep a slow /health from delaying a scrape; a burst
beyond them waits in waitress's queue rather than starting a thread per connection."""

MAX_BODY_BYTES = 25 * 1024 * 1024
"""Largest request body read: GitHub caps a webhook delivery's payload at 25 MB."""

STOP_TIMEOUT = 2.0
"""Seconds :meth:`HttpServer.stop` waits for the loop and for requests being answered."""


class HttpServer:
    """The app served by waitress from threads of this process, started and stopped by the worker.

    waitress runs one asyncore loop that accepts connections and reads requests, and hands each
    complete request to a fixed pool of :data:`THREADS` threads that run the app. Every one of those
    threads is a daemon, and :meth:`stop` waits for them only :data:`STOP_TIMEOUT` seconds: the
    server never keeps a worker from exiting.
    """

    def __init__(self, app: Flask, host: str, port: int) -> None:
        # Bound here, once, on the one address given: a port in use fails at construction, and port
        # 0 gets one free port even for a host name that resolves to several addresses.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family)
        self.port: int = listener.getsockname()[1]
        self._map: dict[int, Any] = {}
        self.server = create_server(
            app, map=self._map, sockets=[listener], threads=THREADS, max_request_body_size=MAX_BODY_BYTES
        )
        # asyncore objects belong to the loop's thread; stop() hands the closing to it through this.
        self._wake = trigger(self._map)
        self._thread = threading.Thread(target=self.server.run, name="codeworker-http", daemon=True)

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection (the loop ends once none is left), then
        let the request threads finish what they are answering."""
        if self._thread.is_alive():
            self._wake.pull_trigger(self._close_all)
            self._thread.join(timeout=STOP_TIMEOUT)
        else:
            self._close_all()
        self.server.task_dispatcher.shutdown(timeout=STOP_TIMEOUT)

    def _close_all(self) -> None:
        wasyncore.close_all(self._map, ignore_all=True)
