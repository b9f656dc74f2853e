"""The Celery app and its configuration. Settings are chosen for long, non-idempotent jobs
(README: "Celery settings"); what the worker process adds to Celery (bootsteps, signal handlers,
the HTTP server) lives in :mod:`codeworker.worker` and is installed on the app here."""

from __future__ import annotations

from celery import Celery

from codeworker.config import get_settings
from codeworker.coordination.connection import is_sentinel
from codeworker.models import OperationType
from codeworker.worker.bootsteps import install


def create_app() -> Celery:
    settings = get_settings()
    sentinel = is_sentinel(settings.redis_url)
    # Celery's and kombu's Sentinel support find the primary by this name, and ask again after a
    # failover (codeworker.coordination.connection says how our own clients do).
    master = {"master_name": settings.redis_master_name} if sentinel else {}
    tasks = [*(f"codeworker.tasks.{kind}" for kind in OperationType), "codeworker.tasks.follow_up"]
    app = Celery("codeworker", include=tasks)
    app.conf.update(
        broker_url=settings.redis_url,
        # kombu's Redis transport, except that an undecodable queue entry is dropped, not fatal.
        broker_transport=f"codeworker.worker.broker:{'SentinelTransport' if sentinel else 'Transport'}",
        result_backend=settings.redis_url,
        result_backend_transport_options=master,
        # A job is acknowledged only when it ends, so a worker that dies mid-job loses nothing.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One job per free slot: a long job must not sit reserved behind another long job.
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker_concurrency,
        # A job whose worker died goes back to the queue within visibility_timeout +
        # restore_interval: every worker looks that often (not kombu's 10 x 10 s) for unacked
        # messages nobody refreshed, and a live worker refreshes its own every third of the
        # timeout (codeworker.worker.broker), so a long job is never handed out twice.
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.restore_interval,
            "unacked_restore_throttle": 1,
            # The restore mutex of a worker killed while restoring must not block the others
            # for kombu's default 5 minutes.
            "unacked_mutex_expire": max(10, int(settings.restore_interval * 2)),
            **master,
        },
        task_soft_time_limit=settings.soft_time_limit,
        task_time_limit=settings.hard_time_limit,
        # Flower needs both; STARTED tells a sender its job left the queue.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        result_extended=True,
        result_expires=settings.result_expires,
        # A job keeps running through a broker reconnect: cancelling it wastes its work, and with
        # Redis still down Celery would record it REVOKED instead of retrying it. A copy handed
        # out meanwhile waits on the claim; two copies never both push (claim checked before push).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Reserve only what the pool can run, counting jobs still running from before a
        # reconnect (Celery skips its own prefetch reduction on Redis).
        worker_disable_prefetch=True,
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
install(app)
