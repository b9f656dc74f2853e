"""The Celery app. Settings are chosen for long, non-idempotent jobs (README: "Celery settings")."""

from __future__ import annotations

import atexit
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis as redis_lib
from celery import Celery, bootsteps, signals
from celery.signals import after_setup_logger, after_setup_task_logger
from celery.worker import state as worker_state

from codeworker import lifecycle, logs, metrics
from codeworker.active import ActiveJobs
from codeworker.config import get_settings
from codeworker.health import ConsumerHeartbeat, RedisPing
from codeworker.http import HttpServer, WorkerState
from codeworker.http import create_app as create_http_app
from codeworker.keys import Keys
from codeworker.pipeline import WORKER_PID_ENV
from codeworker.registry import BranchRegistry
from codeworker.sandbox import SandboxUnavailable, check_sandbox

_log = logging.getLogger("codeworker.worker")

TASK_MODULES = ["tasks.error_fix", "tasks.feature_implementation", "tasks.refactor", "tasks.test"]


def create_app() -> Celery:
    settings = get_settings()
    app = Celery("codeworker", include=TASK_MODULES)
    app.conf.update(
        broker_url=settings.redis_url,
        # kombu's Redis transport, except that an undecodable queue entry is dropped, not fatal.
        broker_transport="codeworker.broker:Transport",
        result_backend=settings.redis_url,
        # A job is acknowledged only when it ends, so a worker that dies mid-job loses nothing.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One job per free slot: a long job must not sit reserved behind another long job.
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        # Redis redelivers unacked jobs after the visibility timeout; it must outlive the hard
        # limit or a running job is handed to a second worker.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        task_soft_time_limit=settings.soft_time_limit,
        task_time_limit=settings.hard_time_limit,
        # Flower needs both; STARTED tells a sender its job left the queue.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        result_extended=True,
        result_expires=settings.result_expires,
        # After a broker reconnect the unacked jobs are redelivered anyway; keep running copies
        # from pushing twice.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_routes={"codeworker.*": {"queue": settings.queue}},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=True,
        # SIGTERM (remapped to SIGQUIT by `codeworker worker`) stops intake at once, gives
        # running jobs this long, then cancels them; their messages go back to the queue.
        worker_soft_shutdown_timeout=settings.shutdown_grace,
    )
    return app


app = create_app()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _structured_logs(logger: logging.Logger, **_: Any) -> None:
    for handler in logger.handlers:
        logs.configure(handler, get_settings().log_format)


# -- the worker's HTTP server, health probe and metrics ------------------------------------------
#
# Main process: worker_init picks the metrics directory and the journal before the pool forks;
# the HttpService bootstep serves /health, /status, /metrics and the webhook; the HealthProbeQueue
# consumer bootstep reads the worker's own probe queue (see codeworker.health). Pool children:
# task_prerun / task_postrun count jobs, their outcome and duration.

PROBE_TASK = "codeworker.health_probe"
PROBE_HEADER = "codeworker_probe"


@dataclass
class _WorkerServices:
    """The main process's HTTP server and heartbeat (one worker per process)."""

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


@app.task(name=PROBE_TASK, Strategy=f"{__name__}:_probe_strategy", ignore_result=True)
def _health_probe() -> None:
    """Never runs: :func:`_probe_strategy` consumes probes in the worker's main process."""


def _send_probe() -> None:
    """Publish one probe on this worker's probe queue over a fresh connection that gives up fast,
    so the probe thread never hangs in kombu's reconnect loop while Redis is down."""
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
    return len(worker_state.reserved_requests) >= worker.concurrency * app.conf.worker_prefetch_multiplier


def _snapshot(items: Any) -> list[Any]:
    """A copy of a set the consumer thread changes while we read it."""
    for _ in range(5):
        try:
            return list(items)
        except RuntimeError:  # "Set changed size during iteration"
            continue
    return []


def _active_jobs(journal: ActiveJobs) -> list[dict[str, Any]]:
    """Jobs of this worker: the children's journal (stage, iteration) joined with Celery's own
    requests, which also know jobs received but not yet claimed (stage ``starting``)."""
    entries = journal.all()
    jobs_by_pid = {entry.pid: entry for entry in entries}
    jobs = [
        entry.model_dump(
            include={
                "operation_id",
                "operation_type",
                "repository",
                "branch",
                "stage",
                "iteration",
                "max_iterations",
                "started_at",
                "pid",
            }
        )
        for entry in entries
    ]
    for request in _snapshot(worker_state.active_requests):
        pid = request.worker_pid
        if pid in jobs_by_pid:
            continue
        job = request.args[0] if request.args and isinstance(request.args[0], dict) else {}
        repository = job.get("repository") if isinstance(job.get("repository"), dict) else {}
        jobs.append(
            {
                "operation_id": job.get("operation_id") or job.get("operationId"),
                "operation_type": request.name.removeprefix("codeworker."),
                "repository": repository.get("url"),
                "branch": None,
                "stage": "starting",
                "iteration": 0,
                "max_iterations": 0,
                "started_at": request.time_start,
                "pid": pid,
            }
        )
    return jobs


@signals.worker_init.connect
def _before_the_pool_forks(sender: Any = None, **_: Any) -> None:
    """Children inherit both: the journal's owner pid and a fresh metrics directory. Then the
    main process takes on what only it can do for jobs whose child is gone (codeworker.lifecycle)."""
    settings = get_settings()
    try:
        check_sandbox(settings)
    except SandboxUnavailable as exc:
        # SystemExit passes through Celery's signal dispatch, which logs and swallows exceptions.
        raise SystemExit(f"codeworker worker refuses to start: {exc}") from None
    if not settings.github_token.get_secret_value():
        # Without it every job would fail at clone time; better one clear line at start.
        raise SystemExit(
            "codeworker worker refuses to start: GITHUB_TOKEN is not set (needed to clone and push)"
        )
    os.environ[WORKER_PID_ENV] = str(os.getpid())
    metrics.use_directory(settings.metrics_dir / str(os.getpid()))
    lifecycle.adopt_orphans()
    lifecycle.Reaper(settings.reap_interval).start()
    # atexit runs after the pool is gone and the cancelled jobs' messages are requeued.
    atexit.register(lifecycle.after_shutdown)


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
        _services.redis_ping = redis_ping = RedisPing(settings.redis_url)
        journal = ActiveJobs.of_worker(settings.workspace_root, os.getpid())
        state = WorkerState(
            hostname=worker.hostname,
            concurrency=worker.concurrency,
            health=lambda: heartbeat.check(redis_ping()),
            active_jobs=lambda: _active_jobs(journal),
            registry=BranchRegistry(
                redis_lib.Redis.from_url(settings.redis_url, decode_responses=True),
                Keys(settings.key_prefix),
            ),
            started_at=time.time(),
        )
        _services.server = HttpServer(
            create_http_app(settings, state), settings.http_host, settings.port
        ).start()
        heartbeat.start()
        logging.getLogger("codeworker.http").info(
            "HTTP server listening on %s:%d", settings.http_host, _services.server.port
        )

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


app.steps["worker"].add(HttpService)
app.steps["consumer"].add(HealthProbeQueue)


_shutdown_signal: list[str] = []
"""The signal that started this worker's shutdown, if any (see ``stopped_on_request``)."""


@signals.worker_shutting_down.connect
def _remember_shutdown(sig: str = "", how: str = "", **_: Any) -> None:
    _shutdown_signal.append(sig)
    _log.warning(
        "%s shutdown on %s: no new jobs; running ones get %.0f s", how, sig, get_settings().shutdown_grace
    )


def stopped_on_request() -> bool:
    """The worker is ending because an operator (or Kubernetes) asked it to with SIGTERM or SIGINT.

    Celery's cold shutdown exits with status 1 even then; ``codeworker worker`` reports 0, since
    the cancelled jobs were requeued and cleaned up as designed."""
    return any(sig in ("SIGTERM", "SIGINT", "SIGQUIT") for sig in _shutdown_signal)


@signals.worker_shutdown.connect
def _stop_http(**_: Any) -> None:
    if _services.heartbeat is not None:
        _services.heartbeat.stop()
    if _services.server is not None:
        _services.server.stop()
        _services.server = None
    if _services.redis_ping is not None:
        _services.redis_ping.close()


_job_started: dict[str, float] = {}
"""Task id -> monotonic start, in the pool child running it."""


def _operation_type(task: Any) -> str | None:
    name = getattr(task, "name", "") or ""
    if not name.startswith("codeworker.") or name == PROBE_TASK:
        return None
    return name.removeprefix("codeworker.")


@signals.task_prerun.connect
def _count_job_started(task_id: str, task: Any, **_: Any) -> None:
    operation_type = _operation_type(task)
    if operation_type is None:
        return
    _job_started[task_id] = time.monotonic()
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    metrics.job_started(operation_type, redelivered=redelivered)
    if redelivered:
        _log.warning("job %s redelivered", task_id, extra={"lifecycle": "redelivered"})


@signals.task_postrun.connect
def _count_job_finished(
    task_id: str, task: Any, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    operation_type = _operation_type(task)
    started = _job_started.pop(task_id, None)
    if operation_type is None or started is None:
        return
    status = retval.get("status") if isinstance(retval, dict) else None
    metrics.job_finished(
        operation_type, str(status or (state or "unknown").lower()), time.monotonic() - started
    )


@signals.worker_process_shutdown.connect
def _child_exited(pid: int, **_: Any) -> None:
    """A pool child's live gauges stop counting (children killed outright are swept at scrape)."""
    metrics.mark_process_dead(pid)
