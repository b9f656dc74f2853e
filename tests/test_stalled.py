"""A worker that dies mid-job: the job runs again on another worker within seconds, exactly once.

Real ``codeworker worker`` processes, each on its own WORKSPACE_ROOT as if on its own machine,
killed with SIGKILL (the whole process group: main process and pool; or only the pool process that
runs the job). Jobs park at a Redis gate (tests/support/gates.py), so the test releases exactly
the attempt it saw arrive, and sees any other attempt that gets there. The loop and most tests
shorten the visibility timeout (6 s) and the restore interval (0.5 s) to keep ``make test`` short;
``test_recovery_with_the_default_settings`` runs one kill with the shipped defaults (30 s and 5 s,
a 30 s claim heartbeat) and checks the README's 45 s bound.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest
import redis

from codeworker.config import Settings
from codeworker.coordination.claims import OperationClaims
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.registry import BranchRegistry
from codeworker.loopback.waiting import wait_until
from codeworker.loopback.worker import running_in_group
from tests.support.jobs import RESULT_TIMEOUT
from tests.support.stalls import SHORT_RECOVERY, Fleet, GatedJob, kill_and_time_recovery, locks_left, pushes

RECOVERY_BOUND = 45.0
"""Seconds from a worker's death to its job running elsewhere, with the default settings."""


@pytest.fixture(scope="module")
def broker_url(redis_server) -> str:
    # A database of its own: messages of killed workers must not reach other modules' workers.
    return redis_server.url.rsplit("/", 1)[0] + "/5"


@pytest.fixture()
def fleet(worker_env: dict, tmp_path) -> Iterator[Fleet]:
    with Fleet({**worker_env, **SHORT_RECOVERY}, tmp_path / "machines") as fleet:
        yield fleet


def finished_once(result: dict, job: GatedJob, git_server, github_stub, broker) -> None:
    assert result["success"] is True, result["error"]
    assert result["status"] == "pr_open"
    assert pushes(git_server, job.name, result["branch"]) == 1
    assert len(github_stub.pull_requests("acme", job.name)) == 1
    assert locks_left(broker, job.url) == []
    assert job.gate.waiting() == [], "another attempt of the finished job reached the gate"


def test_a_killed_workers_jobs_run_again_elsewhere_five_times_over(
    fleet, celery_client, broker, git_server, github_stub
):
    fleet.start()
    fleet.start()
    recoveries = []
    for round_ in range(5):
        job = GatedJob.create(git_server, broker, with_operation_id=round_ % 2 == 0)
        pending = job.send(celery_client)
        operation_id = job.job.get("operation_id", pending.id)
        seconds, again = kill_and_time_recovery(fleet, job, operation_id, job.park(fleet))
        recoveries.append(seconds)
        job.release(again)
        result = pending.get(timeout=RESULT_TIMEOUT)

        finished_once(result, job, git_server, github_stub, broker)
        assert result["operation_id"] == operation_id
        assert OperationClaims(broker, Keys(), 1, 60).get(operation_id)["stalls"] == 1
        fleet.start()  # the dead machine's replacement
    survivor_log = "\n".join(worker.output for worker in fleet.workers)
    assert '"lifecycle": "stalled"' in survivor_log and '"lifecycle": "redelivered"' in survivor_log
    print(
        f"recovery over 5 kills: median {statistics.median(recoveries):.1f} s, worst {max(recoveries):.1f} s"
    )
    assert max(recoveries) < 6 + 0.5 + 10  # timeout + restore interval + starting the job again


def test_a_killed_pool_process_s_job_runs_again(fleet, celery_client, broker, git_server, github_stub):
    fleet.start()
    fleet.start()
    job = GatedJob.create(git_server, broker)
    pending = job.send(celery_client)
    parked = job.park(fleet)
    holder = fleet.running(job.job["operation_id"])
    assert holder.process is not None
    # Only the pool process that runs the job, as the kernel's OOM killer or a hard time limit
    # would: the worker's main process and its other pool process live on.
    assert parked.pid != holder.process.pid and parked.pid in running_in_group(holder.process.pid)
    os.kill(parked.pid, signal.SIGKILL)
    killed = time.monotonic()
    again = job.park(fleet)
    seconds = time.monotonic() - killed
    job.release(again)
    result = pending.get(timeout=RESULT_TIMEOUT)

    finished_once(result, job, git_server, github_stub, broker)
    assert holder.process.poll() is None
    print(f"recovery after killing the pool process: {seconds:.1f} s")
    assert seconds < RECOVERY_BOUND


def test_recovery_with_the_default_settings(
    worker_env, celery_client, broker, git_server, github_stub, tmp_path
):
    defaults = {k: v for k, v in worker_env.items() if k != "CODEWORKER_CLAIM_TTL"}
    defaults["CODEWORKER_SETUP_NETWORK"] = "none"
    fleet = Fleet(defaults, tmp_path / "machines")
    try:
        fleet.start()
        fleet.start()
        job = GatedJob.create(git_server, broker)
        pending = job.send(celery_client)
        seconds, again = kill_and_time_recovery(
            fleet, job, job.job["operation_id"], job.park(fleet), timeout=90
        )
        job.release(again)
        finished_once(pending.get(timeout=RESULT_TIMEOUT), job, git_server, github_stub, broker)
    finally:
        fleet.stop()
    print(f"recovery with the default settings: {seconds:.1f} s")
    settings = Settings(_env_file=None)
    assert settings.visibility_timeout + settings.restore_interval < RECOVERY_BOUND
    assert seconds < RECOVERY_BOUND


def unacked_score(broker: redis.Redis, task_id: str) -> float | None:
    for tag, raw in broker.hgetall("unacked").items():
        if json.loads(raw)[0]["headers"]["id"] == task_id:
            return broker.zscore("unacked_index", tag)
    return None


def test_a_long_job_on_a_live_worker_is_never_handed_out_again(
    fleet, celery_client, broker, git_server, github_stub
):
    first = fleet.start()
    second = fleet.start()
    job = GatedJob.create(git_server, broker)
    pending = job.send(celery_client)
    parked = job.park(fleet)
    delivered = unacked_score(broker, pending.id)
    assert delivered is not None
    # Parked for three visibility timeouts (6 s), each refresh observed in Redis: the message's
    # score moves on while no other worker gets it.
    seen = {delivered}

    def refreshed() -> bool:
        score = unacked_score(broker, pending.id)
        assert score is not None, "the running job's message left the unacked set"
        seen.add(score)
        return max(seen) - delivered > 3 * 6

    wait_until(refreshed, timeout=60, interval=0.2)
    assert broker.llen("code-operation") == 0
    job.release(parked)
    finished_once(pending.get(timeout=RESULT_TIMEOUT), job, git_server, github_stub, broker)
    runs = [
        worker
        for worker in (first, second)
        if f"Task codeworker.refactor[{pending.id}] received" in worker.output
    ]
    assert len(runs) == 1, "the job was delivered to more than one worker"


def test_the_same_operation_sent_twice_at_once_runs_once(
    fleet, celery_client, broker, git_server, github_stub
):
    fleet.start()
    fleet.start()
    job = GatedJob.create(git_server, broker)
    job.job["description"] = json.dumps({"write": {"app.py": "GREETING = 'hey'\n"}})
    first, second = job.send(celery_client), job.send(celery_client)
    results = [first.get(timeout=RESULT_TIMEOUT), second.get(timeout=RESULT_TIMEOUT)]

    assert results[0] == results[1]
    finished_once(results[0], job, git_server, github_stub, broker)


def test_a_superseded_attempt_pushes_nothing(fleet, celery_client, broker, git_server, github_stub):
    fleet.start()
    job = GatedJob.create(git_server, broker)
    pending = job.send(celery_client)
    parked = job.park(fleet)
    operation_id = job.job["operation_id"]
    claims = OperationClaims(broker, Keys(), 60, 600)
    [registered] = BranchRegistry(broker, Keys()).list(repo=repo_id(job.url))
    # Another attempt takes the operation over, as one would after this one's heartbeat lapsed,
    # and finishes it with a result of its own.
    broker.delete(Keys().heartbeat(operation_id))
    live = claims.claim(operation_id)
    assert live.state == "claimed" and live.owner is not None
    live_result = {"success": True, "operation_id": operation_id, "status": "pr_open", "by": "live"}
    claims.finish(operation_id, live.owner, live_result)
    job.release(parked)

    # The superseded attempt's task answers the operation's result, never its own failure.
    assert pending.get(timeout=RESULT_TIMEOUT) == live_result
    assert pushes(git_server, job.name) == 0
    assert github_stub.pull_requests("acme", job.name) == []
    # It stopped without marking the branch record, which is the live attempt's to change.
    assert BranchRegistry(broker, Keys()).get(registered.repo, registered.branch) == registered


def test_a_superseded_attempt_leaves_the_live_attempt_alone(
    fleet, celery_client, broker, git_server, github_stub
):
    """Two attempts of one operation on one machine: the first, superseded while parked, stops and
    touches nothing of the second (its worktree, its local branch, the record, the locks), pushes
    nothing, and its task answers the operation's result."""
    worker = fleet.start()  # two pool processes: one per attempt
    job = GatedJob.create(git_server, broker)
    operation_id = job.job["operation_id"]
    first = job.send(celery_client)
    stale = job.park(fleet)
    # The first attempt's heartbeat lapses and the operation is claimed away from it (the test
    # takes it for a moment, so the first attempt's watchdog cannot re-arm it), then the same job
    # arrives again and a second attempt claims it.
    broker.delete(Keys().heartbeat(operation_id))
    assert OperationClaims(broker, Keys(), 60, 600).claim(operation_id).state == "claimed"
    broker.delete(Keys().heartbeat(operation_id))
    second = job.send(celery_client)
    live = job.park(fleet)
    registry = BranchRegistry(broker, Keys())
    [record] = registry.list(repo=repo_id(job.url))
    worktrees = sorted((Path(worker.env["WORKSPACE_ROOT"]) / "worktrees").glob(f"{operation_id}.*"))
    assert len(worktrees) == 2
    root = Path(worker.env["WORKSPACE_ROOT"])
    mirror = pygit2.Repository(str(next((root / "mirrors").rglob(f"{job.name}.git"))))
    branches_before = sorted(
        ref for ref in mirror.references if ref.startswith(f"refs/heads/{record.branch}")
    )
    assert len(branches_before) == 2
    lock_owner = broker.hget(locks_left(broker, job.url)[0], "owner")

    job.release(stale)
    worker.wait_for_line("this attempt was superseded")

    assert pushes(git_server, job.name) == 0
    assert registry.get(record.repo, record.branch) == record
    assert broker.hget(locks_left(broker, job.url)[0], "owner") == lock_owner
    [left] = (root / "worktrees").glob(f"{operation_id}.*")
    assert left in worktrees and left.is_dir()
    mirror = pygit2.Repository(str(mirror.path))
    assert len([ref for ref in mirror.references if ref in branches_before]) == 1

    job.release(live)
    result = second.get(timeout=RESULT_TIMEOUT)
    assert first.get(timeout=RESULT_TIMEOUT) == result
    finished_once(result, job, git_server, github_stub, broker)
