"""Adoption of a dead worker's active-job journal by the next worker that starts on its
WORKSPACE_ROOT, with real `codeworker worker` processes: a journal is adopted only when no process
of its worker holds its lock (pid reuse cannot hide a dead worker nor fake a live one), the adopted
entries and the journal go away, and an operation that finished elsewhere is left as it was."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
import uuid
from pathlib import Path

import redis

from codeworker.coordination.claims import OperationClaims
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.registry import BranchRecord, BranchStatus
from codeworker.loopback.redis_server import free_port
from codeworker.loopback.waiting import wait_until
from codeworker.loopback.worker import get
from codeworker.worker.journal import LOCK_FILE, ActiveJob, ActiveJobs
from tests.support.gates import RedisGate
from tests.support.jobs import QUEUE, RESULT_TIMEOUT, new_repo, scripted_job
from tests.support.worker import WorkerProcess

ADOPTED = "adopted "
"""What a worker logs when it takes over a dead worker's jobs."""


GRACE = 2
"""Seconds a stopping worker waits for running jobs: Celery waits all of it when a job has only
just ended, and a test that failed leaves a job parked."""


def start_worker(env: dict, root: Path, name: str) -> WorkerProcess:
    """A worker on WORKSPACE_ROOT ``root``; several may share one."""
    return WorkerProcess(
        {
            **env,
            "WORKSPACE_ROOT": str(root),
            "PORT": str(free_port()),
            "CODEWORKER_SHUTDOWN_GRACE": str(GRACE),
        },
        name=name,
    ).start()


def journals(root: Path) -> list[Path]:
    return [journal.directory for journal in ActiveJobs.on_machine(root)]


def lock_held(journal: Path) -> bool:
    """Some process holds the journal's lock (we take it for an instant if nobody does)."""
    fd = os.open(journal / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (pool children and whatever they started), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def kill_whole_worker(worker: WorkerProcess) -> None:
    """SIGKILL the worker's main process and everything under it, as losing its machine would."""
    assert worker.process is not None
    main = worker.process.pid
    os.kill(main, signal.SIGSTOP)  # no new pool child while we look for them
    for pid in [main, *descendants(main)]:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(pid, signal.SIGKILL)
    worker.stop(signal.SIGKILL, timeout=10)


def forget_message(broker: redis.Redis, task_id: str) -> None:
    """Drop a killed worker's delivery of ``task_id`` from kombu's unacked set and the queue, so
    no later test's worker gets it back."""
    for tag, raw in broker.hgetall("unacked").items():
        if json.loads(raw)[0]["headers"].get("id") == task_id:
            broker.zrem("unacked_index", tag)
            broker.hdel("unacked", tag)
    for raw in broker.lrange(QUEUE, 0, -1):
        if json.loads(raw)["headers"].get("id") == task_id:
            broker.lrem(QUEUE, 0, raw)


def stopped_cleanly(*workers: WorkerProcess | None) -> None:
    """Stop every worker (SIGTERM), then check that each exited 0."""
    codes = [(worker, worker.stop()) for worker in workers if worker is not None]
    for worker, code in codes:
        assert code == 0, worker.output[-4000:]


def claims_state(broker: redis.Redis, operation_id: str) -> str | None:
    record = OperationClaims(broker, Keys(), ttl=1, result_ttl=1).get(operation_id)
    return record and record["state"]


def test_a_dead_workers_journal_is_adopted_though_its_pids_live_on_and_only_once(
    worker_env, broker, registry, git_server, tmp_path
):
    """After a container restart pids start over, so the entry's pid (ours here) is alive again:
    what counts is that nobody holds the journal's lock."""
    root = tmp_path / "ws"
    _, url = new_repo(git_server)
    operation_id = f"op-{uuid.uuid4().hex[:12]}"
    claims = OperationClaims(broker, Keys(), ttl=2, result_ttl=3600)
    claim = claims.claim(operation_id)
    branch = f"codeworker/refactor/{operation_id}"
    registry.register(
        BranchRecord.new(
            repository=url,
            repo=repo_id(url),
            branch=branch,
            operation_id=operation_id,
            operation_type="refactor",
        )
    )
    dead = ActiveJobs(root / "active" / uuid.uuid4().hex)
    dead.write(
        ActiveJob(
            operation_id=operation_id,
            operation_type="refactor",
            repository=url,
            repo=repo_id(url),
            branch=branch,
            claim_owner=claim.owner,
            lock_owner=f"{operation_id}:dead",
            started_at=time.time(),
            pid=os.getpid(),
        )
    )
    (dead.directory / LOCK_FILE).touch()  # its worker is gone: nobody holds it
    (dead.directory / f".{operation_id}.{os.getpid()}.tmp").write_text("{")  # a write cut short

    first = start_worker(worker_env, root, "adopt-1")
    try:
        assert f"adopted 1 job(s) of dead worker {dead.worker_id}" in first.output, first.output[-4000:]
        assert not dead.directory.exists()
        record = registry.get(repo_id(url), branch)
        assert record.status == BranchStatus.ABANDONED, record
        stored = claims.get(operation_id)
        assert stored["state"] == "abandoned" and stored.get("stalls") == 1, stored
        [own] = journals(root)
        assert lock_held(own)
    finally:
        assert first.stop() == 0, first.output[-4000:]
    assert journals(root) == [], "a clean exit leaves no journal behind"

    second = start_worker(worker_env, root, "adopt-2")
    try:
        assert ADOPTED not in second.output, second.output[-4000:]
        assert registry.get(repo_id(url), branch) == record
        assert claims.get(operation_id)["state"] == "abandoned"
    finally:
        assert second.stop() == 0, second.output[-4000:]


def test_a_live_workers_journal_is_never_adopted_by_a_second_worker_on_its_root(
    worker_env, broker, celery_client, registry, git_server, tmp_path
):
    root = tmp_path / "ws"
    name, url = new_repo(git_server)
    gate = RedisGate(broker)
    job = scripted_job(
        url, name, {"redis_gate": gate.name, "write": {"NOTES.md": "notes\n"}}, target_files=["NOTES.md"]
    )
    lock_key = Keys().lock(repo_id(url), "NOTES.md")

    first = start_worker(worker_env, root, "live-1")
    second: WorkerProcess | None = None
    try:
        pending = celery_client.send_task("codeworker.refactor", args=[job], queue=QUEUE)
        parked = gate.arrival(workers=[first])
        [journal] = journals(root)
        [entry] = ActiveJobs(journal).all()
        assert entry.operation_id == job["operation_id"]

        second = start_worker(worker_env, root, "live-2")

        assert ADOPTED not in second.output, second.output[-4000:]
        assert [entry.operation_id for entry in ActiveJobs(journal).all()] == [job["operation_id"]]
        [record] = registry.list(repo=repo_id(url))
        assert record.status == BranchStatus.ACTIVE
        assert broker.exists(lock_key)
        assert claims_state(broker, job["operation_id"]) == "running"
        status, body = get(int(first.env["PORT"]), "/status")
        assert status == 200 and [job["operation_id"]] == [j["operation_id"] for j in body["active"]], body
        assert len(journals(root)) == 2 and all(lock_held(j) for j in journals(root))

        gate.release(parked)
        result = pending.get(timeout=RESULT_TIMEOUT)
        assert result["success"] is True and result["status"] == "pr_open", result["error"]
        assert job["operation_id"] not in second.output, "the second worker touched the job"
    finally:
        stopped_cleanly(first, second)
    assert journals(root) == []


def test_restarting_a_dead_worker_after_its_job_finished_elsewhere_leaves_the_job_as_it_was(
    worker_env, broker, celery_client, registry, git_server, github_stub, tmp_path
):
    """The issue's case: the machine of a worker dies mid-job, the job runs to its PR elsewhere,
    then the machine comes back (same WORKSPACE_ROOT) and adopts the dead worker's journal."""
    dead_root, other_root = tmp_path / "dead", tmp_path / "other"
    name, url = new_repo(git_server)
    gate = RedisGate(broker)
    job = scripted_job(
        url, name, {"redis_gate": gate.name, "write": {"NOTES.md": "notes\n"}}, target_files=["NOTES.md"]
    )
    operation_id = job["operation_id"]
    claims = OperationClaims(broker, Keys(), ttl=1, result_ttl=1)

    doomed = start_worker(worker_env, dead_root, "doomed")
    elsewhere: WorkerProcess | None = None
    restarted: WorkerProcess | None = None
    first_delivery = celery_client.send_task("codeworker.refactor", args=[job], queue=QUEUE)
    try:
        gate.arrival(workers=[doomed])
        [journal] = journals(dead_root)
        [entry] = ActiveJobs(journal).all()
        kill_whole_worker(doomed)
        wait_until(lambda: not lock_held(journal), timeout=30, what="the dead worker's lock released")

        # The job runs again elsewhere (a second delivery of it) and opens its PR.
        elsewhere = start_worker(worker_env, other_root, "elsewhere")
        rerun = celery_client.send_task("codeworker.refactor", args=[job], queue=QUEUE)
        gate.release(gate.arrival(workers=[elsewhere]))
        result = rerun.get(timeout=RESULT_TIMEOUT)
        assert result["success"] is True and result["status"] == "pr_open", result["error"]
        assert result["branch"] == entry.branch
        finished = registry.get(repo_id(url), entry.branch)
        assert finished.status == BranchStatus.PR_OPEN
        claim = claims.get(operation_id)
        assert claim["state"] == "finished"

        restarted = start_worker(worker_env, dead_root, "restarted")

        assert f"adopted 1 job(s) of dead worker {journal.name}" in restarted.output, restarted.output[-4000:]
        assert registry.get(repo_id(url), entry.branch) == finished
        after = claims.get(operation_id)
        assert (after["state"], after["owner"], after["result"]) == (
            "finished",
            claim["owner"],
            claim["result"],
        )
        assert not journal.exists()
        assert len(github_stub.pull_requests("acme", name)) == 1
        assert not broker.exists(Keys().lock(repo_id(url), "NOTES.md"))
    finally:
        if doomed.process is not None:
            kill_whole_worker(doomed)
        forget_message(broker, first_delivery.id)
        stopped_cleanly(elsewhere, restarted)
