"""Killing workers in the middle of jobs, and what a test checks afterwards: a fleet of real
``codeworker worker`` processes, each on its own WORKSPACE_ROOT as if on its own machine."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from celery import Celery

from codeworker.coordination.keys import Keys, repo_id
from codeworker.loopback.gitserver import GitServer
from tests.support.jobs import GATE_TIMEOUT, QUEUE, new_repo, open_gate, scripted_job
from tests.support.redis_server import free_port
from tests.support.worker import WorkerProcess, get

_names = itertools.count(1)


@dataclass
class Fleet:
    """Workers sharing one broker; ``env`` is their common environment."""

    env: dict[str, str]
    root: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    killed: list[WorkerProcess] = field(default_factory=list)

    def start(self) -> WorkerProcess:
        number = next(_names)
        worker = WorkerProcess(
            {
                **self.env,
                "PORT": str(free_port()),
                "WORKSPACE_ROOT": str(self.root / f"machine-{number}"),
            },
            name=f"fleet-{number}",
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

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=30)
        self.workers.clear()


@dataclass
class GatedJob:
    """A scripted job on a fresh repository that parks at a FIFO until the test lets it go."""

    name: str
    url: str
    gate: Path
    job: dict

    @classmethod
    def create(cls, git_server: GitServer, directory: Path, with_operation_id: bool = True) -> GatedJob:
        # No tests in the repository: no sandboxed test run, the job is only what recovery needs.
        name, url = new_repo(git_server, {"app.py": "GREETING = 'hi'\n"})
        gate = directory / f"gate-{name}"
        os.mkfifo(gate)
        job = scripted_job(
            url,
            name,
            {"gate": str(gate), "write": {"app.py": "GREETING = 'hello'\n"}},
            target_files=["app.py"],
        )
        if not with_operation_id:
            del job["operation_id"]
        return cls(name, url, gate, job)

    def send(self, client: Celery) -> object:
        return client.send_task("codeworker.refactor", args=[self.job], queue=QUEUE)

    def park(self, timeout: float = GATE_TIMEOUT) -> int:
        """Wait until a worker runs the job and holds it at the gate; the gate's write end."""
        return open_gate(self.gate, timeout=timeout)


def pushes(git_server: GitServer, name: str) -> int:
    """Pushes the git server received for repository ``acme/<name>``."""
    return sum(
        1
        for request in git_server.requests
        if request.method == "POST" and f"/acme/{name}" in request.path and "git-receive-pack" in request.path
    )


def locks_left(store: redis.Redis, url: str) -> list[str]:
    """File locks still held on the repository at ``url``."""
    return list(store.scan_iter(match=Keys().lock(repo_id(url), "*")))


def kill_and_time_recovery(
    fleet: Fleet, job: GatedJob, operation_id: str, fd: int, timeout: float = GATE_TIMEOUT
) -> tuple[float, int]:
    """SIGKILL the worker holding the parked job (its whole process group), then wait until the job
    is parked again on another worker: (seconds from the kill, the new gate's write end)."""
    fleet.kill(fleet.running(operation_id))
    killed = time.monotonic()
    os.close(fd)  # the killed job's read end is gone; this write end is of no use any more
    parked = job.park(timeout)
    return time.monotonic() - killed, parked
