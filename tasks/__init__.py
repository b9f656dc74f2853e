"""One thin Celery task per operation type; each hands its job to the pipeline."""

from __future__ import annotations

from typing import Any

from celery import Task

from codeworker.pipeline import OperationBusy, Progress, pipeline


def run_operation(task: Task, job: Any, operation_type: str) -> dict[str, Any]:
    """Run the job; a copy still running elsewhere is retried after its heartbeat would expire."""

    def progress(stage: Progress) -> None:
        task.update_state(state="PROGRESS", meta=stage.model_dump())

    try:
        return pipeline().run(job, operation_type, progress=progress)
    except OperationBusy as busy:
        raise task.retry(countdown=busy.retry_after, max_retries=None) from None
