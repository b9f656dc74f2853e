"""Graceful shutdown of a real `codeworker worker` process: SIGTERM during a long job stops intake at
once, cancels the job after the grace period, cleans up after it (locks, branch record, worktree)
and puts its message back on the queue; the worker exits 0 and a second worker completes the job."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis

from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.registry import BranchStatus
from codeworker.loopback.redis_server import free_port
from tests.support.jobs import QUEUE, RESULT_TIMEOUT, new_repo, open_gate, scripted_job
from tests.support.worker import WorkerProcess

GRACE = 2
EXIT_WITHIN = GRACE + 30
"""Seconds a worker may take from SIGTERM to exit: the grace period plus a generous margin."""


def queued_task_ids(client: redis.Redis) -> list[str]:
    """Task ids of the messages waiting in the Redis list of the queue (kombu's JSON envelope)."""
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(QUEUE, 0, -1)]


@pytest.fixture()
def shutdown_env(worker_env: dict) -> dict:
    return {**worker_env, "CODEWORKER_SHUTDOWN_GRACE": str(GRACE)}


def test_sigterm_requeues_a_long_job_cleans_up_and_a_second_worker_completes_it(
    shutdown_env, broker, celery_client, git_server, github_stub, registry, workspace_root, tmp_path
):
    assert broker.llen(QUEUE) == 0, "the queue must start empty"
    name, url = new_repo(git_server)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    job = scripted_job(
        url,
        name,
        {"gate": str(gate), "write": {"app.py": "def greet(name):\n    return f'hello {name}'\n"}},
        target_files=["app.py"],
    )
    other_name, other_url = new_repo(git_server)
    other_job = scripted_job(other_url, other_name, {"write": {"NOTES.md": "notes\n"}})

    lock_key = Keys().lock(repo_id(url), "app.py")
    worktrees = workspace_root / "worktrees"

    first = WorkerProcess({**shutdown_env, "PORT": str(free_port())}, name="shutdown-1").start()
    second: WorkerProcess | None = None
    fd: int | None = None
    pending = celery_client.send_task("codeworker.refactor", args=[job], queue=QUEUE)
    later = None
    try:
        fd = open_gate(gate)  # kept open: the job stays parked through the whole grace period

        # Parked mid-run: it holds its lock, its branch is registered, its worktree exists.
        assert broker.exists(lock_key)
        [record] = registry.list(repo=repo_id(url))
        branch = record.branch
        assert record.status == BranchStatus.ACTIVE
        assert record.operation_id == job["operation_id"]
        [worktree] = worktrees.glob(f"{job['operation_id']}.*")  # the attempt's own
        assert worktree.is_dir()

        signalled = time.monotonic()
        first.process.send_signal(signal.SIGTERM)
        first.wait_for_line("Initiating Soft Shutdown", timeout=10)
        # Intake is stopped: a job sent now (with a free pool slot) is not taken by this worker.
        later = celery_client.send_task("codeworker.refactor", args=[other_job], queue=QUEUE)

        code = first.stop(signal.SIGTERM, timeout=EXIT_WITHIN)
        elapsed = time.monotonic() - signalled
        log = first.output

        assert code == 0, log[-4000:]
        assert GRACE <= elapsed < EXIT_WITHIN, elapsed
        assert "Restoring 1 unacknowledged message(s)" in log, log[-4000:]
        assert "abandoned 1 job(s) cancelled by the shutdown" in log, log[-4000:]
        assert later.id not in log, "the first worker took a job after SIGTERM"

        # Cleaned up after: no lock, branch abandoned, no worktree; both messages wait in the queue.
        assert not broker.exists(lock_key)
        record = registry.get(repo_id(url), branch)
        assert record is not None and record.status == BranchStatus.ABANDONED, record
        assert not worktree.exists()
        assert sorted(queued_task_ids(broker)) == sorted([pending.id, later.id])

        os.close(fd)
        fd = None

        second = WorkerProcess({**shutdown_env, "PORT": str(free_port())}, name="shutdown-2").start()
        fd = open_gate(gate)  # the re-run, from the start, parks again
        os.write(fd, b"go")
        os.close(fd)
        fd = None

        result = pending.get(timeout=RESULT_TIMEOUT)
        assert result["success"] is True, result["error"]
        assert result["status"] == "pr_open"
        assert result["operation_id"] == job["operation_id"]
        assert result["branch"] == branch
        assert len(github_stub.pull_requests("acme", name)) == 1
        assert registry.get(repo_id(url), branch).status == BranchStatus.PR_OPEN
        assert not broker.exists(lock_key)

        other = later.get(timeout=RESULT_TIMEOUT)
        assert other["success"] is True and other["status"] == "pr_open", other["error"]
        assert later.id in second.output
    finally:
        if fd is not None:
            os.close(fd)
        # On failure, leave no message behind for another module's worker (the gated one would hang).
        for raw in broker.lrange(QUEUE, 0, -1):
            if json.loads(raw)["headers"]["id"] in (pending.id, later and later.id):
                broker.lrem(QUEUE, 0, raw)
        first.stop(signal.SIGKILL, timeout=10)
        if second is not None:
            assert second.stop() == 0, second.output[-4000:]
