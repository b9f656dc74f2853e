"""The worker's Celery signal handlers.

Main process: ``worker_init`` refuses to start without a sandbox or a token, picks the metrics
directory and the journal before the pool forks, adopts dead workers' jobs and starts the reaper
(:mod:`codeworker.worker.orphans`); ``worker_shutting_down`` remembers why the worker stops. Pool
children: ``task_prerun`` / ``task_postrun`` count jobs, their outcome and duration.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from typing import Any

from celery import signals

from codeworker import logs
from codeworker.config import get_settings
from codeworker.models import OperationType, Status
from codeworker.pipeline.revision import TASK_NAME as FOLLOW_UP_TASK
from codeworker.pipeline.service import WORKER_PID_ENV
from codeworker.sandbox.bubblewrap import SandboxUnavailable, check_sandbox
from codeworker.worker import metrics, orphans
from codeworker.worker.cancelling import JobCancelled
from codeworker.worker.journal import WORKER_ID_ENV, ActiveJobs

log = logging.getLogger(__name__)


def _structured_logs(logger: logging.Logger, **_: Any) -> None:
    for handler in logger.handlers:
        logs.configure(handler, get_settings().log_format)


def _before_the_pool_forks(sender: Any = None, **_: Any) -> None:
    """Children inherit both: the journal (its worker's pid and id) and a fresh metrics
    directory. Then the main process takes on what only it can do for jobs whose child is gone."""
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
    # Made and locked now, so the adoption below passes it over and the children write to it.
    os.environ[WORKER_ID_ENV] = ActiveJobs.of_worker(settings.workspace_root, os.getpid()).worker_id
    metrics.use_directory(settings.metrics_dir / str(os.getpid()))
    orphans.adopt_orphans()
    orphans.Reaper(settings.reap_interval).start()
    # atexit runs after the pool is gone and the cancelled jobs' messages are requeued.
    atexit.register(orphans.after_shutdown)


_shutdown_signal: list[str] = []
"""The signal that started this worker's shutdown, if any (see ``stopped_on_request``)."""


def _remember_shutdown(sig: str = "", how: str = "", **_: Any) -> None:
    _shutdown_signal.append(sig)
    log.warning(
        "%s shutdown on %s: no new jobs; running ones get %.0f s", how, sig, get_settings().shutdown_grace
    )


def stopped_on_request() -> bool:
    """The worker is ending because an operator (or Kubernetes) asked it to with SIGTERM or SIGINT.

    Celery's cold shutdown exits with status 1 even then; ``codeworker worker`` reports 0, since
    the cancelled jobs were requeued and cleaned up as designed."""
    return any(sig in ("SIGTERM", "SIGINT", "SIGQUIT") for sig in _shutdown_signal)


REQUEUED = "requeued"
"""The ``status`` counted for a job a shutdown interrupted: it runs again elsewhere."""

_job_started: dict[str, float] = {}
"""Task id -> monotonic start, in the pool child running it."""


def _job_type(task: Any) -> str | None:
    """The ``operation_type`` a task's job metrics are counted under; None for any other task."""
    name = getattr(task, "name", "")
    return metrics.FOLLOW_UP if name == FOLLOW_UP_TASK else OperationType.of_task(name)


def _count_job_started(task_id: str, task: Any, **_: Any) -> None:
    operation_type = _job_type(task)
    if operation_type is None:
        return
    _job_started[task_id] = time.monotonic()
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    # The pipeline logs the redelivery once it knows the operation (after "stalled", if it was).
    metrics.job_started(operation_type, redelivered=redelivered)


def _count_job_finished(
    task_id: str, task: Any, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    operation_type = _job_type(task)
    started = _job_started.pop(task_id, None)
    if operation_type is None or started is None:
        return
    if isinstance(retval, dict):
        status = str(retval.get("status"))
    elif isinstance(retval, JobCancelled):
        status = Status.CANCELLED
    elif state is None:
        # No state: the task was interrupted (a shutdown's SystemExit); its message is requeued.
        status = REQUEUED
    else:
        status = state.lower()
    metrics.job_finished(operation_type, status, time.monotonic() - started)


def _child_exited(pid: int, **_: Any) -> None:
    """A pool child's live gauges stop counting (children killed outright are swept at scrape)."""
    metrics.mark_process_dead(pid)


def connect() -> None:
    """Connect every handler above to its Celery signal."""
    signals.after_setup_logger.connect(_structured_logs)
    signals.after_setup_task_logger.connect(_structured_logs)
    signals.worker_init.connect(_before_the_pool_forks)
    signals.worker_shutting_down.connect(_remember_shutdown)
    signals.task_prerun.connect(_count_job_started)
    signals.task_postrun.connect(_count_job_finished)
    signals.worker_process_shutdown.connect(_child_exited)
