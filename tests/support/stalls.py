"""Killing workers in the middle of jobs, and what a test checks afterwards: a fleet of real
``codeworker worker`` processes, each on its own WORKSPACE_ROOT as if on its own machine."""

from __future__ import annotations

import itertools
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from celery import Celery

from codeworker.coordination.keys import Keys, repo_id
from codeworker.loopback.gitserver import GitServer
from codeworker.loopback.redis_server import free_port
from codeworker.loopback.worker import get
from tests.support.gates import Arrival, RedisGate
from tests.support.jobs import GATE_TIMEOUT, QUEUE, new_repo, scripted_job
from tests.support.worker import WorkerProcess

_names = itertools.count(1)


SHORT_RECOVERY = {
    # The jobs need no setup, and a worker then skips the start-up probe of setup's network.
    "CODEWORKER_SETUP_NETWORK": "none",
    "CODEWORKER_VISIBILITY_TIMEOUT": "6",
    "CODEWORKER_RESTORE_INTERVAL": "0.5",
    # Longer than conftest's 2 s: a heartbeat late under load must not hand a parked job over.
    "CODEWORKER_CLAIM_TTL": "6",
    "CODEWORKER_REAP_INTERVAL": "0.5",
}
"""Recovery shortened for the fault tests (the shipped defaults are 30 s, 5 s and 30 s)."""


@dataclass
class Fleet:
    """Workers sharing one broker; ``env`` is their common environment."""

    env: dict[str, str]
    root: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    killed: list[WorkerProcess] = field(default_factory=list)
    """Workers killed or terminated while the others ran on."""
    stopped: list[WorkerProcess] = field(default_factory=list)
    """Workers :meth:`stop` stopped at the end."""
    concurrency: int = 2
    """Pool processes per worker."""

    def start(self) -> WorkerProcess:
        number = next(_names)
        worker = WorkerProcess(
            {
                **self.env,
                "PORT": str(free_port()),
                "WORKSPACE_ROOT": str(self.root / f"machine-{number}"),
                # Its own, so what a killed worker counted stays readable (metrics_totals).
                "CODEWORKER_METRICS_DIR": str(self.root / f"metrics-{number}"),
            },
            name=f"fleet-{number}",
            concurrency=self.concurrency,
        ).start()
        self.workers.append(worker)
        return worker

    def running(self, operation_id: str) -> WorkerProcess:
        """The worker whose /status lists ``operation_id`` as one of its jobs."""
        for worker in self.workers:
            _, status = get(int(worker.env["PORT"]), "/status")
            if any(job["operation_id"] == operation_id for job in status["active"]):
                return worker
        raise AssertionError(f"no worker runs {operation_id}")

    def kill(self, worker: WorkerProcess) -> None:
        worker.kill()
        self.workers.remove(worker)
        self.killed.append(worker)

    def terminate(self, worker: WorkerProcess, timeout: float = 60) -> int:
        """SIGTERM, as an operator or Kubernetes stops a worker; its exit status."""
        self.workers.remove(worker)
        self.killed.append(worker)
        return worker.stop(signal.SIGTERM, timeout)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=30)
        self.stopped += self.workers
        self.workers.clear()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        """Print every worker's log tail (pytest shows it when the test failed), then stop them."""
        for worker in self.workers + self.killed:
            print(f"==== {worker.name}\n" + "\n".join(worker.lines[-80:]))
        self.stop()


@dataclass
class GatedJob:
    """A scripted job on a fresh repository that parks at a Redis gate until the test lets it go."""

    name: str
    url: str
    gate: RedisGate
    job: dict

    @classmethod
    def create(cls, git_server: GitServer, store: redis.Redis, with_operation_id: bool = True) -> GatedJob:
        """``store``: a client of the workers' Redis database, where the gate lives."""
        # No tests in the repository: no sandboxed test run, the job is only what recovery needs.
        name, url = new_repo(git_server, {"app.py": "GREETING = 'hi'\n"})
        gate = RedisGate(store, f"gate-{name}")
        job = scripted_job(
            url,
            name,
            {"redis_gate": gate.name, "write": {"app.py": "GREETING = 'hello'\n"}},
            target_files=["app.py"],
            # A test command whose outcome the change keeps: the worker verifies the refactor.
            test_command="true",
        )
        if not with_operation_id:
            del job["operation_id"]
        return cls(name, url, gate, job)

    def send(self, client: Celery) -> object:
        return client.send_task("codeworker.refactor", args=[self.job], queue=QUEUE)

    def park(self, fleet: Fleet | None = None, timeout: float = GATE_TIMEOUT) -> Arrival:
        """Wait until an attempt of the job is held at the gate (``fleet``'s logs if none gets there)."""
        return self.gate.arrival(timeout, fleet.workers + fleet.killed if fleet else ())

    def release(self, arrival: Arrival) -> None:
        self.gate.release(arrival)


def pushes(git_server: GitServer, name: str, branch: str | None = None) -> int:
    """Ref updates of ``branch`` (of any ref when None) that the git server accepted for repository
    ``acme/<name>``: a push request that moved nothing does not count, two that moved it do."""
    return sum(
        1
        for update in git_server.ref_updates("acme", name)
        if update.accepted and (branch is None or update.ref == f"refs/heads/{branch}")
    )


def locks_left(store: redis.Redis, url: str) -> list[str]:
    """File locks still held on the repository at ``url``."""
    return list(store.scan_iter(match=Keys().lock(repo_id(url), "*")))


def kill_and_time_recovery(
    fleet: Fleet, job: GatedJob, operation_id: str, parked: Arrival, timeout: float = GATE_TIMEOUT
) -> tuple[float, Arrival]:
    """SIGKILL the worker holding the ``parked`` attempt (its whole process group), then wait until
    another attempt is parked on another worker: (seconds from the kill, that attempt)."""
    fleet.kill(fleet.running(operation_id))
    killed = time.monotonic()
    again = job.park(fleet, timeout)
    assert again.attempt != parked.attempt
    return time.monotonic() - killed, again
