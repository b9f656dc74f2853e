"""What a worker's main process does for jobs its pool children could not finish.

A job's child can die three ways: the worker shuts down and cancels it after the grace period, the
child is killed (hard time limit, out of memory), or the whole worker is killed. The message comes
back (late acks); these functions make the re-run start clean at once: locks released, branch
marked abandoned, worktree removed, claim given up. Each reads the jobs from the active-job journal.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import lru_cache

from codeworker.config import get_settings
from codeworker.coordination.claims import Abandoned
from codeworker.pipeline.service import Pipeline
from codeworker.worker.journal import ActiveJobs, alive

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _main_pipeline() -> Pipeline:
    """The main process's own services (never handed to children: it is built after the fork)."""
    return Pipeline.from_settings(get_settings(), os.getpid())


def abandon_all(
    journal: ActiveJobs, reason: str, why: Abandoned = Abandoned.STALLED, pid: int | None = None
) -> int:
    """Abandon the journal's jobs (only those of child ``pid`` when given), taking each out of the
    journal; how many there were."""
    pipeline = _main_pipeline()
    entries = [entry for entry in journal.all() if pid is None or entry.pid == pid]
    for entry in entries:
        try:
            pipeline.abandon(entry, reason, journal=journal, why=why)
        except Exception:  # Redis may be down at shutdown; lock TTLs and heartbeats still expire
            log.exception("could not abandon operation %s", entry.operation_id)
    return len(entries)


def after_shutdown() -> None:
    """At the main process's exit: jobs still in its journal were cancelled by the shutdown. The
    journal goes with them, unless a cleanup failed (the next worker to start retries it)."""
    journal = _main_pipeline().journal
    count = abandon_all(journal, "worker shut down before the job finished; requeued", Abandoned.REQUEUED)
    if count:
        log.warning("abandoned %d job(s) cancelled by the shutdown; their messages were requeued", count)
    journal.remove_if_empty()


def reap_dead_children() -> int:
    """Abandon jobs whose pool process is gone (hard time limit, OOM kill); how many."""
    journal = _main_pipeline().journal
    dead = {entry.pid for entry in journal.all() if not alive(entry.pid)}
    count = sum(abandon_all(journal, f"worker process {pid} died", pid=pid) for pid in dead)
    if count:
        log.warning("abandoned %d job(s) of dead pool process(es) %s", count, sorted(dead))
    return count


class Reaper:
    """A thread in the main process that reaps dead children's jobs every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="codeworker-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                reap_dead_children()
            except Exception:  # Redis down: try again next round
                log.exception("reaping dead pool processes failed")


def adopt_orphans() -> int:
    """At start: clean up after workers on this machine that died without their shutdown (those
    whose journal lock nobody holds); how many jobs they left. Each adopted job leaves the dead
    worker's journal, and the journal goes once empty, so the next start does not adopt it again."""
    adopted = 0
    for journal in ActiveJobs.on_machine(get_settings().workspace_root):
        with journal.adopted() as gone:
            if not gone:
                continue
            count = abandon_all(journal, f"worker {journal.worker_id} running it died")
            if count:
                log.warning("adopted %d job(s) of dead worker %s", count, journal.worker_id)
            adopted += count
    return adopted
