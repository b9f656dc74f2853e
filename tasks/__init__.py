"""One thin Celery task per operation type, and ``codeworker.follow_up``; each hands its job to
the pipeline.

Installed as ``codeworker.tasks``. Each module is named for its :class:`OperationType` and holds
only ``operation_task(__name__, __doc__)``: the Celery app imports ``codeworker.tasks.<type>`` for
every type, and a module named for no type fails at import. ``follow_up`` holds
``follow_up_task(__name__, __doc__)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from celery import Task

from codeworker.celery import app
from codeworker.models import InvalidJob, OperationType, Status, job_argument
from codeworker.pipeline.errors import RetryOperation
from codeworker.pipeline.revision import TASK_NAME as FOLLOW_UP_TASK
from codeworker.pipeline.run import Progress
from codeworker.pipeline.service import pipeline
from codeworker.worker.cancelling import JobCancelled, OperationRequest

Runner = Callable[..., dict[str, Any]]
"""``(raw, progress=, task_id=, redelivered=)``: a pipeline entry point that runs one message."""


def run_operation(
    task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], runner: Runner
) -> dict[str, Any]:
    """Run the job (the task's one positional argument) through ``runner``. A copy still running
    elsewhere, or a model API that is overloaded, is retried later (the pipeline says when and has
    cleaned up). A cancelled job ends REVOKED (:mod:`codeworker.worker.cancelling`); its whole
    result is the operation's record (``codeworker status``)."""

    def progress(stage: Progress) -> None:
        task.update_state(state="PROGRESS", meta=stage.model_dump())

    try:
        job = job_argument(args, kwargs)
    except InvalidJob as exc:
        return pipeline().reject(None, exc)
    try:
        result = runner(
            job,
            progress=progress,
            task_id=task.request.id,
            redelivered=bool((task.request.delivery_info or {}).get("redelivered")),
        )
    except RetryOperation as later:
        raise task.retry(countdown=later.retry_after) from None
    if result["status"] == Status.CANCELLED:
        raise JobCancelled(result["error"])
    return result


def _task(name: str, module: str, doc: str | None, runner: Callable[[], Runner]) -> Task:
    def run(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return run_operation(self, args, kwargs, runner())

    run.__doc__ = (doc or "").partition(": ")[2] or doc
    run.__name__ = run.__qualname__ = name.rpartition(".")[2]
    run.__module__ = module
    # No Celery retry limit: the pipeline bounds each kind of retry itself (busy waits, deferrals,
    # stalls), and Celery's default of 3 cut a duplicate's busy waits short with
    # MaxRetriesExceededError (``retry(max_retries=None)`` means "the task's default", not "none").
    return app.task(name=name, bind=True, Request=OperationRequest, max_retries=None)(run)


def operation_task(module: str, doc: str | None) -> Task:
    """The task of the operation type ``module`` (``codeworker.tasks.error_fix``) is named for."""
    operation_type = OperationType(module.rpartition(".")[2])
    return _task(
        operation_type.task_name,
        module,
        doc,
        lambda: functools.partial(pipeline().run, operation_type=operation_type),
    )


def follow_up_task(module: str, doc: str | None) -> Task:
    """``codeworker.follow_up``: the next revision of an open pull request."""
    return _task(FOLLOW_UP_TASK, module, doc, lambda: pipeline().follow_up)
