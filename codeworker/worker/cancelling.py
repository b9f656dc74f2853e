"""Celery's side of cancelling a job: revoke records a cancellation and never kills the pool child,
and a cancelled job's task turns REVOKED only once the job has really stopped.

- The control commands ``revoke`` and ``terminate`` (Flower's Revoke and Terminate buttons,
  ``app.control.revoke(task_id, terminate=...)``) record a cancellation of the task id in Redis
  (:mod:`codeworker.coordination.cancellations`), where every worker sees it, today's and those
  started later; then Celery's own revoke runs without terminating anything, so this worker still
  discards a queued copy it receives. No signal reaches the pool child, whatever Flower asked for: a
  killed child would leave its locks, worktree and branch record to the stalled-job clean-up, and
  the job would run again. The job stops itself within ``cancel_poll_interval`` instead.
- The control command ``codeworker.cancel`` is the call by name for a backend that knows the
  operation id: ``app.control.broadcast("codeworker.cancel", arguments={"operation_id": ...,
  "requested_by": ...}, reply=True)``. Every worker that hears it answers; the first records it.
- :class:`OperationRequest`, the request class of the operation tasks, announces a cancelled job as
  revoked (the ``task-revoked`` event Flower shows, the REVOKED state in the result backend with
  the result's one line of what was left behind) when the task ends with :class:`JobCancelled`.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import Ignore
from celery.utils.functional import maybe_list
from celery.worker import control
from celery.worker.request import Request

from codeworker.config import get_settings
from codeworker.coordination.cancellations import Cancellations, CancelState, cancellation_now
from codeworker.coordination.connection import redis_for
from codeworker.coordination.keys import Keys

log = logging.getLogger(__name__)

CANCEL_COMMAND = "codeworker.cancel"


class JobCancelled(Ignore):
    """Raised by an operation task whose job ended cancelled: Celery stores nothing for it in the
    pool process; :class:`OperationRequest` announces it revoked in the main process."""

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


class OperationRequest(Request):
    """The operation tasks' request: a job that ended cancelled is announced revoked."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, JobCancelled):
            # Celery's own announcement (task-revoked event, REVOKED result, ack), made now that
            # the job has stopped rather than when the revoke arrived.
            self._announce_revoked(exc.summary, True, None, False)
            return None
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


@lru_cache(maxsize=1)
def _cancellations() -> Cancellations:
    settings = get_settings()
    return Cancellations(redis_for(settings), Keys(settings.key_prefix), settings.result_expires)


_celery_revoke = control.Panel.data["revoke"]


@control.control_command(variadic="task_id", signature="[id1 [id2 [... [idN]]]]")
def revoke(
    state: Any, task_id: Any, terminate: bool = False, signal: str | None = None, **kwargs: Any
) -> Any:
    """Revoke task by task id (or list of ids): cancel the job, then Celery's revoke without
    terminate."""
    via = f"revoke (terminate, {signal or 'SIGTERM'})" if terminate else "revoke"
    for task in maybe_list(task_id) or []:
        try:
            _cancellations().request(cancellation_now("celery revoke", via), task_id=task)
        except Exception:  # Celery's revoke below still keeps a queued copy from starting here
            log.exception("recording the cancellation of task %s failed", task)
    return _celery_revoke(state, task_id, terminate=False, **kwargs)


@control.control_command(variadic="task_id", args=[("signal", str)], signature="<signal> [id1 [... [idN]]]")
def terminate(state: Any, signal: str, task_id: Any, **kwargs: Any) -> Any:
    """Terminate task by task id (or list of ids): cancel the job (no signal is sent)."""
    return revoke(state, task_id, terminate=True, signal=signal)


@control.control_command(
    name=CANCEL_COMMAND,
    args=[("operation_id", str), ("requested_by", str)],
    signature="<operation_id> [requested_by]",
)
def cancel(state: Any, operation_id: str, requested_by: str = "backend", **kwargs: Any) -> dict[str, str]:
    """Cancel an operation by its id."""
    done = _cancellations().request(cancellation_now(requested_by, CANCEL_COMMAND), operation_id=operation_id)
    if done.state is CancelState.FINISHED:
        status = (done.result or {}).get("status")
        return control.nok(f"operation {operation_id} already finished ({status}); nothing to cancel")
    return control.ok(f"cancellation of {operation_id} {done.state.value}")
