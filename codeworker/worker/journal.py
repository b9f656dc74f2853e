"""The jobs a worker is running right now, as one small JSON file each on local disk.

A prefork child writes its job's entry when the job starts and removes it when the job ends; the
stage is updated as the job moves. The worker's main process reads the directory to answer
``/status`` and, when a shutdown cancels jobs or after a crash, to clean up what their children
could not: locks (by owner token), branch status, worktrees and idempotency claims.

The directory is ``<WORKSPACE_ROOT>/active/<pid of the worker's main process>``, so several
workers on one machine never read each other's entries, and entries of a worker that died (its pid
gone) can be adopted by the next one that starts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError


class ActiveJob(BaseModel):
    """What it takes to show a running job, and to clean up after it if it is killed."""

    operation_id: str
    operation_type: str
    repository: str
    repo: str
    branch: str
    claim_owner: str
    lock_owner: str
    locked: list[str] = []
    worktree: str | None = None
    stage: str = "claim"
    iteration: int = 0
    max_iterations: int = 0
    started_at: float
    pid: int


class ActiveJobs:
    """One directory of :class:`ActiveJob` files; writes are atomic (write, then rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def of_worker(cls, workspace_root: Path, worker_pid: int) -> ActiveJobs:
        return cls(workspace_root / "active" / str(worker_pid))

    def _path(self, operation_id: str) -> Path:
        return self.directory / f"{operation_id}.json"

    def write(self, job: ActiveJob) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f".{job.operation_id}.{os.getpid()}.tmp"
        temporary.write_text(job.model_dump_json())
        temporary.replace(self._path(job.operation_id))

    def remove(self, operation_id: str) -> None:
        self._path(operation_id).unlink(missing_ok=True)

    def all(self) -> list[ActiveJob]:
        jobs = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                jobs.append(ActiveJob.model_validate_json(path.read_text()))
            except (OSError, ValidationError):
                continue  # removed or half-written between glob and read: not active any more
        return jobs

    def elapsed(self, job: ActiveJob) -> float:
        return time.time() - job.started_at


def orphaned_directories(workspace_root: Path) -> list[ActiveJobs]:
    """Journals of workers on this machine whose main process is gone (killed, crashed)."""
    orphans = []
    for directory in sorted((workspace_root / "active").glob("*")):
        if directory.name.isdigit() and not alive(int(directory.name)):
            orphans.append(ActiveJobs(directory))
    return orphans


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
