"""What ``/status`` lists as this worker's jobs."""

from __future__ import annotations

from typing import Any

from celery.worker import state as worker_state

from codeworker.worker.journal import ActiveJobs

SHOWN_FIELDS = {
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
"""What ``/status`` shows of a journal entry (not the owner tokens, which would let a reader
release the job's locks)."""


def snapshot(items: Any) -> list[Any]:
    """A copy of a set the consumer thread changes while we read it."""
    for _ in range(5):
        try:
            return list(items)
        except RuntimeError:  # "Set changed size during iteration"
            continue
    return []


def active_jobs(journal: ActiveJobs) -> list[dict[str, Any]]:
    """Jobs of this worker: the children's journal (stage, iteration) joined with Celery's own
    requests, which also know jobs received but not yet claimed (stage ``starting``)."""
    entries = journal.all()
    jobs_by_pid = {entry.pid: entry for entry in entries}
    jobs = [entry.model_dump(include=SHOWN_FIELDS) for entry in entries]
    for request in snapshot(worker_state.active_requests):
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
