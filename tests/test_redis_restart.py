"""Losing Redis under real `codeworker worker` processes, one running a job, one idle:
redis-server restarted without persistence, with an RDB snapshot or with an AOF, or every
connection dropped with Redis up. Both workers keep running and consuming, and the interrupted
job ends with a result: completed (once) when Redis kept its data, failed with an error and
nothing pushed when Redis lost its claim and locks. And `codeworker worker` exits with the
worker's real status: non-zero when the worker failed, 0 when asked to stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from codeworker.loopback.redis_server import (
    AOF_PERSISTENCE,
    NO_PERSISTENCE,
    RDB_PERSISTENCE,
    RedisServer,
    free_port,
)
from codeworker.loopback.waiting import wait_until
from codeworker.loopback.worker import BIN
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support.jobs import QUEUE, RESULT_TIMEOUT, new_repo, open_gate, release, scripted_job
from tests.support.worker import PLUGINS, WorkerProcess, worker_environment

OUTAGES = {
    "restart-without-persistence": NO_PERSISTENCE,
    "restart-with-rdb": RDB_PERSISTENCE,
    "restart-with-aof": AOF_PERSISTENCE,
    "dropped-connections": NO_PERSISTENCE,
}
"""How Redis is lost, and the persistence of the server it happens to."""


@pytest.fixture()
def redis() -> Iterator[RedisServer]:
    """A private redis-server for one test; ``persistence`` is set by the test before start."""
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture()
def env(redis: RedisServer, git_server, github_stub, tmp_path: Path) -> dict[str, str]:
    env = worker_environment(
        redis.url, tmp_path / "workspace", git_server, github_stub, GITHUB_TOKEN, ANTHROPIC_KEY
    )
    # A worker stopped right after a job may still have its ack to send: do not wait 30 s.
    return {**env, "CODEWORKER_CLAIM_TTL": "3", "CODEWORKER_SHUTDOWN_GRACE": "2"}


@pytest.fixture()
def workers() -> Iterator[list[WorkerProcess]]:
    """The workers a test starts; any still running at the end (a failed test) are killed."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop(signal.SIGKILL, timeout=10)


def start_worker(
    workers: list[WorkerProcess], env: dict[str, str], name: str, concurrency: int
) -> WorkerProcess:
    """A worker reserves one job per pool process (prefetch 1), so one that runs ``concurrency``
    parked jobs takes no other."""
    worker = WorkerProcess({**env, "PORT": str(free_port())}, name=name, concurrency=concurrency)
    workers.append(worker.start())
    return worker


def alive(worker: WorkerProcess) -> bool:
    """Running, and not on its way out after a fatal error."""
    running = worker.process is not None and worker.process.poll() is None
    return running and not any("Unrecoverable error" in line for line in worker.lines)


def waiting_for_work(redis: RedisServer, newer_than: int) -> int:
    """Consumers blocked in BRPOP on a connection opened after client id ``newer_than``: kombu
    reconnects some dropped connections by itself, so a worker does not always log one."""
    return sum(client["cmd"] == "brpop" and int(client["id"]) > newer_than for client in redis.clients())


def gated_job(git_server, tmp_path: Path, label: str) -> tuple[dict, Path, str]:
    """A job on a fresh repository that parks at the FIFO it returns, after taking its lock."""
    name, url = new_repo(git_server)
    gate = tmp_path / f"gate-{label}"
    os.mkfifo(gate)
    script = {
        "gate": str(gate),
        "write": {"app.py": f"def greet(name):\n    return 'hello ' + name  # {label}\n"},
    }
    return scripted_job(url, name, script, target_files=["app.py"]), gate, name


@pytest.mark.parametrize("outage", list(OUTAGES))
def test_losing_redis_leaves_a_busy_and_an_idle_worker_consuming_and_the_job_with_a_result(
    outage, redis, env, workers, git_server, github_stub, tmp_path
):
    redis.persistence = OUTAGES[outage]
    redis.start()
    data_kept = outage == "dropped-connections" or redis.persistence != NO_PERSISTENCE
    before = Celery(broker=redis.url)  # no result backend: nothing subscribed across the outage
    # Busy: a job parked mid-run (its message unacknowledged) and a free process, so its consumer
    # is waiting on Redis for more work when Redis goes away.
    busy = start_worker(workers, env, "busy", concurrency=2)
    job, gate, name = gated_job(git_server, tmp_path, "interrupted")
    interrupted = before.send_task("codeworker.refactor", args=[job], queue=QUEUE).id
    fd = open_gate(gate, busy)
    idle = start_worker(workers, env, "idle", concurrency=1)
    before.close()

    if outage == "dropped-connections":
        newer_than = max(int(client["id"]) for client in redis.clients())
        redis.drop_connections()
    else:
        newer_than = 0  # a restarted server numbers its clients from 1 again
        redis.restart()

    # Both workers stay up and wait for work again (the busy one used to die: "Unrecoverable
    # error"): one consumer each, each on a new connection.
    wait_until(
        lambda: waiting_for_work(redis, newer_than) >= 2 or not (alive(busy) and alive(idle)),
        what="both workers waiting for work on new connections",
    )
    for worker in (busy, idle):
        assert alive(worker), worker.output[-4000:]
    cancelled = "cannot be acknowledged after a connection loss" in busy.output
    assert not cancelled, "the running job was killed (worker_cancel_long_running_tasks_on_connection_loss)"
    release(fd)

    after = Celery(broker=redis.url, backend=redis.url)
    try:
        if not data_kept:
            # Its claim and locks went with Redis's data: it stops before pushing anything and
            # runs again from the start (ClaimVanished), so it parks at its gate once more.
            release(open_gate(gate))
        result = after.AsyncResult(interrupted).get(timeout=RESULT_TIMEOUT)
        # It completes, and only once (after a dropped connection its message was also handed out
        # again; after a restart without persistence it ran a second time, from scratch).
        assert result["success"] is True and result["status"] == "pr_open", result
        assert len(github_stub.pull_requests("acme", name)) == 1
        pushes = [update.ref for update in git_server.ref_updates("acme", name) if update.accepted]
        assert pushes == [f"refs/heads/{result['branch']}"]

        # Both keep consuming: three jobs sent now all park at once, which takes both workers'
        # three processes (two on `busy`, one on `idle`).
        jobs = [gated_job(git_server, tmp_path, label) for label in ("one", "two", "three")]
        pending = [after.send_task("codeworker.refactor", args=[job], queue=QUEUE) for job, _, _ in jobs]
        gates = [open_gate(gate) for _, gate, _ in jobs]
        assert sorted(sum(task.id in worker.output for task in pending) for worker in (busy, idle)) == [1, 2]
        for fd in gates:
            release(fd)
        for task in pending:
            done = task.get(timeout=RESULT_TIMEOUT)
            assert done["success"] is True and done["status"] == "pr_open", done
    finally:
        after.close()

    for worker in (busy, idle):
        log = worker.output
        assert "Unrecoverable error" not in log, log[-4000:]
        assert worker.stop() == 0, log[-4000:]


# -- the exit status of `codeworker worker` ----------------------------------------------------------


def test_the_worker_command_exits_non_zero_when_the_worker_fails(redis, env):
    """A worker that fails while starting (its HTTP port is taken) stops with status 1; the
    command used to exit 0 all the same (as after an "Unrecoverable error"), so a supervisor that
    restarts only on failure left it down."""
    redis.start()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        done = subprocess.run(
            [str(BIN / "codeworker"), "worker", "-c", "1", "--without-mingle", "--without-gossip"],
            env={**os.environ, **env, "PORT": str(taken.getsockname()[1]), "PYTHONPATH": str(PLUGINS)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Address already in use" in done.stdout + done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_the_worker_command_exits_0_when_asked_to_stop(sig, redis, env, workers):
    redis.start()
    worker = start_worker(workers, env, "stopped", concurrency=1)
    assert worker.stop(sig) == 0, worker.output[-4000:]
