"""What ``celery worker`` runs besides the pool: the HTTP server and the consumer heartbeat.

Main process: the HttpService bootstep serves /health, /status, /metrics and the webhook; the
HealthProbeQueue consumer bootstep reads the worker's own probe queue (see
:mod:`codeworker.worker.health`). :func:`install` puts both, the probe task and the signal
handlers of :mod:`codeworker.worker.signals` on the app.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, bootsteps, signals
from celery.worker import state as worker_state

from codeworker.config import get_settings
from codeworker.coordination.connection import redis_for
from codeworker.coordination.keys import Keys
from codeworker.coordination.registry import BranchRegistry
from codeworker.github import PullRequests
from codeworker.pipeline import stages
from codeworker.triggers import Triggers
from codeworker.worker import (
    cancelling,  # noqa: F401  (registers the revoke and cancel commands)
    metrics,
)
from codeworker.worker import signals as worker_signals
from codeworker.worker.health import ConsumerHeartbeat, RedisPing
from codeworker.worker.http import HttpServer, WorkerState
from codeworker.worker.http import create_app as create_http_app
from codeworker.worker.journal import ActiveJobs
from codeworker.worker.status import active_jobs

log = logging.getLogger(__name__)

PROBE_TASK = "codeworker.health_probe"
PROBE_HEADER = "codeworker_probe"

STAGES = (
    stages.checkout,
    *stages.AFTER_CHECKOUT,
    stages.resume,
    stages.pull_request,
    stages.merge,
    stages.start_revision,
    stages.take_branch,
    stages.revised,
)
"""Every stage an operation run enters (``OperationRun._run_stages``): their series start at zero."""


@dataclass
class _WorkerServices:
    """The main process's HTTP server and heartbeat (one worker per process)."""

    app: Celery | None = None
    boot_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    probe_queue: str = ""
    heartbeat: ConsumerHeartbeat | None = None
    redis_ping: RedisPing | None = None
    server: HttpServer | None = None


_services = _WorkerServices()


def _probe_strategy(task: Any, app: Celery, consumer: Any, **_: Any) -> Callable[..., None]:
    """Handles probe messages in the consumer itself: acknowledged at once, never sent to the pool,
    so a probe proves the consumer reads Redis without taking a job slot."""

    def on_probe(message: Any, *_args: Any, **_kwargs: Any) -> None:
        message.ack()
        heartbeat = _services.heartbeat
        if heartbeat is not None and message.headers.get(PROBE_HEADER) == _services.boot_id:
            heartbeat.received()

    return on_probe


def _send_probe() -> None:
    """Publish one probe on this worker's probe queue over a fresh connection that gives up fast,
    so the probe thread never hangs in kombu's reconnect loop while Redis is down."""
    app = _services.app
    assert app is not None
    message = app.amqp.create_task_message(
        uuid.uuid4().hex, PROBE_TASK, (), {}, create_sent_event=False, ignore_result=True
    )
    options = {"socket_timeout": 2, "socket_connect_timeout": 2}
    with app.connection_for_write(transport_options=options) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=2)
        app.amqp.send_task_message(
            connection.Producer(),
            PROBE_TASK,
            message,
            queue=_services.probe_queue,
            retry=False,
            headers={PROBE_HEADER: _services.boot_id},
        )


def _pool_saturated(worker: Any) -> bool:
    """Every slot holds an unacknowledged job: Redis QoS stops the consumer reading, probes too."""
    prefetch = worker.app.conf.worker_prefetch_multiplier
    return len(worker_state.reserved_requests) >= worker.concurrency * prefetch


class HttpService(bootsteps.StartStopStep):
    """Serves the worker's HTTP endpoints from the main process. Started before the consumer;
    stopped at ``worker_shutdown``, after the consumer and the pool, so /health answers (503)
    until the very end of a shutdown."""

    label = "HTTP server"

    def start(self, worker: Any) -> None:
        settings = get_settings()
        heartbeat = ConsumerHeartbeat(
            _send_probe,
            lambda: _pool_saturated(worker),
            interval=settings.health_probe_interval,
            stale_after=settings.health_stale_after,
        )
        _services.probe_queue = f"{settings.queue}.probe.{worker.hostname}"
        _services.heartbeat = heartbeat
        _services.redis_ping = redis_ping = RedisPing(settings.redis_url, settings.redis_master_name)
        journal = ActiveJobs.of_worker(settings.workspace_root, os.getpid())
        registry = BranchRegistry(redis_for(settings), Keys(settings.key_prefix))
        pulls = PullRequests.from_settings(settings)

        def send(task: str, job: dict[str, Any], task_id: str) -> None:
            worker.app.send_task(task, args=[job], task_id=task_id, queue=settings.queue)

        state = WorkerState(
            hostname=worker.hostname,
            concurrency=worker.concurrency,
            health=lambda: heartbeat.check(redis_ping()),
            active_jobs=lambda: active_jobs(journal),
            registry=registry,
            started_at=time.time(),
            triggers=lambda deliveries: Triggers(settings, registry, pulls, deliveries, send),
        )
        # Before the first scrape can come: an idle worker shows every known series at zero.
        metrics.export_zeros(settings.model, [stage.__name__ for stage in STAGES])
        _services.server = HttpServer(
            create_http_app(settings, state), settings.http_host, settings.port
        ).start()
        heartbeat.start()
        log.info("HTTP server listening on %s:%d", settings.http_host, _services.server.port)

    def stop(self, worker: Any) -> None:
        """Nothing yet: the server outlives the consumer and the pool (see ``_stop_http``)."""


class HealthProbeQueue(bootsteps.StartStopStep):
    """Adds the worker's probe queue to the task consumer, after every (re)start of the consumer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer: Any) -> None:
        heartbeat = _services.heartbeat
        if heartbeat is None:  # a worker without HttpService (an in-process test worker)
            return
        consumer.add_task_queue(_services.probe_queue)
        heartbeat.consumer_ready.set()
        heartbeat.probe()

    def stop(self, consumer: Any) -> None:
        if _services.heartbeat is not None:
            _services.heartbeat.consumer_ready.clear()


def _stop_http(**_: Any) -> None:
    if _services.heartbeat is not None:
        _services.heartbeat.stop()
    if _services.server is not None:
        _services.server.stop()
        _services.server = None
    if _services.redis_ping is not None:
        _services.redis_ping.close()


def install(app: Celery) -> None:
    """Give ``app`` the worker's bootsteps, its probe task and its signal handlers."""
    _services.app = app

    @app.task(name=PROBE_TASK, Strategy=f"{__name__}:_probe_strategy", ignore_result=True)
    def _health_probe() -> None:
        """Never runs: :func:`_probe_strategy` consumes probes in the worker's main process."""

    app.steps["worker"].add(HttpService)
    app.steps["consumer"].add(HealthProbeQueue)
    signals.worker_shutdown.connect(_stop_http)
    worker_signals.connect()
