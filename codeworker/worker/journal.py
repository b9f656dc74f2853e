"""The jobs a worker is running right now, as one small JSON file each on local disk.

A prefork child writes its job's entry (one file per attempt) when the job starts and removes it
when the job ends; the stage is updated as the job moves. The worker's main process reads the
directory to answer ``/status`` and, when a shutdown cancels jobs or after a crash, to clean up
what their children could not: locks (by owner token), branch status, worktrees and idempotency claims.

The directory is ``<WORKSPACE_ROOT>/active/<worker id>``, a random id the worker's main process
makes at start and hands to its pool children (:data:`WORKER_ID_ENV`), so several workers on one
machine never read each other's entries. A pid would not do: after a container restart the new
worker has the pid of the dead one. Whether a journal's worker lives is decided by the kernel, not
by pids: the main process holds an exclusive ``flock`` on the journal's ``.lock`` file for its
whole life (its pool children inherit the descriptor), and the lock goes away when the last of
them exits, however it ends (SIGKILL included). A starting worker adopts a journal only if it can
take that lock, and keeps it while it adopts, so two starting workers never adopt the same one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ValidationError

from codeworker.coordination.attempts import attempt_token

log = logging.getLogger(__name__)

WORKER_ID_ENV = "CODEWORKER_WORKER_ID"
"""Set by the worker's main process before it forks: the journal its pool children write to."""

LOCK_FILE = ".lock"
"""In each journal directory; flocked by the journal's worker while any of its processes lives."""


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

    @property
    def worker_id(self) -> str:
        return self.directory.name

    @classmethod
    def of_worker(cls, workspace_root: Path, worker_pid: int) -> ActiveJobs:
        """The journal of the worker whose main process is ``worker_pid``: this process's own when
        that is this process (made and locked on first use, see :func:`_own_journal`), else the
        one the main process handed its pool children in :data:`WORKER_ID_ENV`."""
        if worker_pid == os.getpid():
            return _own_journal(workspace_root)
        worker_id = os.environ.get(WORKER_ID_ENV)
        if not worker_id:
            raise RuntimeError(f"worker process {worker_pid} did not hand its children {WORKER_ID_ENV}")
        return cls(workspace_root / "active" / worker_id)

    @classmethod
    def on_machine(cls, workspace_root: Path) -> list[ActiveJobs]:
        """Every worker's journal under ``workspace_root``, live or not (see :meth:`adopted`)."""
        active = workspace_root / "active"
        if not active.is_dir():
            return []
        return [
            cls(directory)
            for directory in sorted(active.iterdir())
            if directory.is_dir() and not directory.name.startswith(".")
        ]

    def _path(self, operation_id: str, claim_owner: str) -> Path:
        """One file per attempt: two attempts of one operation in one worker (a superseded one
        still running beside the live one) never write or remove each other's entry."""
        return self.directory / f"{operation_id}.{attempt_token(claim_owner)}.json"

    def write(self, job: ActiveJob) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(job.operation_id, job.claim_owner)
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        temporary.write_text(job.model_dump_json())
        temporary.replace(path)

    def remove(self, operation_id: str, claim_owner: str) -> None:
        """Take the entry of one attempt out (the one holding the claim as ``claim_owner``)."""
        self._path(operation_id, claim_owner).unlink(missing_ok=True)
        legacy = self.directory / f"{operation_id}.json"  # an older release named entries by operation
        try:
            if ActiveJob.model_validate_json(legacy.read_text()).claim_owner == claim_owner:
                legacy.unlink(missing_ok=True)
        except (OSError, ValidationError):
            pass

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

    @contextmanager
    def adopted(self) -> Iterator[bool]:
        """Take this journal over if its worker is gone: yields True with the journal's lock held
        for the block, or False (holding nothing) while any process of its worker lives or another
        worker adopts it. A journal the block emptied is removed before the lock is let go; one
        with entries left (their cleanup failed) stays for the next worker that starts."""
        lock = _try_lock(self.directory, legacy=_legacy_and_gone(self.directory))
        if lock is None:
            yield False
            return
        try:
            yield True
            self.remove_if_empty()
        finally:
            os.close(lock)

    def remove_if_empty(self) -> bool:
        """Remove the directory if no entry is left; only for the holder of its lock (its worker
        at a clean exit, or the worker adopting it). Whether it is gone."""
        if self.all():
            return False
        for leftover in self.directory.glob(".*.tmp"):  # entries a killed child never finished writing
            leftover.unlink(missing_ok=True)
        (self.directory / LOCK_FILE).unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            log.warning("journal %s is not empty after its jobs were cleaned up", self.directory)
            return False
        return True


_own: dict[Path, tuple[int, ActiveJobs, int]] = {}
"""Workspace root -> (pid, journal, descriptor of its held lock) of this process's own journal."""


def _own_journal(workspace_root: Path) -> ActiveJobs:
    """This process's journal under ``workspace_root``, made on first use under a fresh id with its
    lock held until the process ends. A pool child has its own pid, so what it inherits from the
    main process does not count as its own (it writes to the main process's journal instead).

    The directory is made under a hidden name and renamed once its lock is held, so no starting
    worker ever sees it unlocked."""
    own = _own.get(workspace_root)
    if own is not None and own[0] == os.getpid():
        return own[1]
    active = workspace_root / "active"
    active.mkdir(parents=True, exist_ok=True)
    worker_id = uuid.uuid4().hex
    staging = active / f".{worker_id}"
    staging.mkdir()
    lock = os.open(staging / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else knows the file yet
    journal = ActiveJobs(active / worker_id)
    staging.rename(journal.directory)
    _own[workspace_root] = (os.getpid(), journal, lock)
    return journal


def _try_lock(directory: Path, legacy: bool = False) -> int | None:
    """A descriptor holding the journal's lock, or None if a live worker (or an adopter) holds it.

    The lock file is created only for a ``legacy`` journal (an older release's, keyed by pid): one
    whose lock file is missing otherwise is being removed by whoever holds it."""
    flags = os.O_RDWR | (os.O_CREAT if legacy else 0)
    try:
        lock = os.open(directory / LOCK_FILE, flags, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return None
    return lock


def _legacy_and_gone(directory: Path) -> bool:
    """A journal written by a release that keyed journals by the main process's pid, whose process
    is gone: adopted the old way (pid reuse can still hide it, as it did then)."""
    return (
        directory.name.isdigit() and not (directory / LOCK_FILE).exists() and not alive(int(directory.name))
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
