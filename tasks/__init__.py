"""One thin Celery task per operation type; each hands its job to the pipeline.

Installed as ``codeworker.tasks``. Each module is named for its :class:`OperationType` and holds
only ``operation_task(__name__, __doc__)``: the Celery app imports ``codeworker.tasks.<type>`` for
every type, and a module named for no type fails at import.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from codeworker.celery import app
from codeworker.models import InvalidJob, OperationType, Status, job_argument
from codeworker.pipeline.errors import RetryOperation
from codeworker.pipeline.run import Progress
from codeworker.pipeline.service import pipeline
from codeworker.worker.cancelling import JobCancelled, OperationRequest


def run_operation(
    task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], operation_type: OperationType
) -> dict[str, Any]:
    """Run the job (the task's one positional argument). A copy still running elsewhere, or a model
    API that is overloaded, is retried later (the pipeline says when and has cleaned up). A
    cancelled job ends REVOKED (:mod:`codeworker.worker.cancelling`); its whole result is the
    operation's record (``codeworker status``)."""

    def progress(stage: Progress) -> None:
        task.update_state(state="PROGRESS", meta=stage.model_dump())

    try:
        job = job_argument(args, kwargs)
    except InvalidJob as exc:
        return pipeline().reject(None, exc)
    try:
        result = pipeline().run(
            job,
            operation_type,
            progress=progress,
            task_id=task.request.id,
            redelivered=bool((task.request.delivery_info or {}).get("redelivered")),
        )
    except RetryOperation as later:
        raise task.retry(countdown=later.retry_after) from None
    if result["status"] == Status.CANCELLED:
        raise JobCancelled(result["error"])
    return result


def operation_task(module: str, doc: str | None) -> Task:
    """The task of the operation type ``module`` (``codeworker.tasks.error_fix``) is named for."""
    operation_type = OperationType(module.rpartition(".")[2])

    def run(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return run_operation(self, args, kwargs, operation_type)

    run.__doc__ = (doc or "").partition(": ")[2] or doc
    run.__name__ = run.__qualname__ = operation_type.value
    run.__module__ = module
    # No Celery retry limit: the pipeline bounds each kind of retry itself (busy waits, deferrals,
    # stalls), and Celery's default of 3 cut a duplicate's busy waits short with
    # MaxRetriesExceededError (``retry(max_retries=None)`` means "the task's default", not "none").
    return app.task(name=operation_type.task_name, bind=True, Request=OperationRequest, max_retries=None)(run)
