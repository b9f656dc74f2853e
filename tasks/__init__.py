"""One thin Celery task per operation type; each hands its job to the pipeline."""

from __future__ import annotations

from typing import Any

from celery import Task

from codeworker.models import InvalidJob, job_argument
from codeworker.pipeline import Progress, RetryOperation, pipeline


def run_operation(
    task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], operation_type: str
) -> dict[str, Any]:
    """Run the job (the task's one positional argument). A copy still running elsewhere, or a model
    API that is overloaded, is retried later (the pipeline says when and has cleaned up)."""

    def progress(stage: Progress) -> None:
        task.update_state(state="PROGRESS", meta=stage.model_dump())

    try:
        job = job_argument(args, kwargs)
    except InvalidJob as exc:
        return pipeline().reject(None, exc)
    try:
        return pipeline().run(job, operation_type, progress=progress, attempt=task.request.retries)
    except RetryOperation as later:
        raise task.retry(countdown=later.retry_after, max_retries=None) from None
