"""A worker that dies mid-job: the job runs again on another worker within seconds, exactly once.

Real ``codeworker worker`` processes, each on its own WORKSPACE_ROOT as if on its own machine,
killed with SIGKILL (the whole process group: main process and pool). The loop and most tests
shorten the visibility timeout (6 s) and the restore interval (0.5 s) to keep ``make test`` short;
``test_recovery_with_the_default_settings`` runs one kill with the shipped defaults (30 s and 5 s,
a 30 s claim heartbeat) and checks the README's 45 s bound.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator

import pytest
import redis

from codeworker.config import Settings
from codeworker.coordination.claims import OperationClaims
from codeworker.coordination.keys import Keys
from tests.support.jobs import RESULT_TIMEOUT, release
from tests.support.stalls import Fleet, GatedJob, kill_and_time_recovery, locks_left, pushes
from tests.support.waiting import wait_until

SHORT = {
    # The jobs need no setup, and a worker then skips the start-up probe of setup's network.
    "CODEWORKER_SETUP_NETWORK": "none",
    "CODEWORKER_VISIBILITY_TIMEOUT": "6",
    "CODEWORKER_RESTORE_INTERVAL": "0.5",
    # Longer than conftest's 2 s: a heartbeat late under load must not hand a parked job over.
    "CODEWORKER_CLAIM_TTL": "6",
    "CODEWORKER_REAP_INTERVAL": "0.5",
}
RECOVERY_BOUND = 45.0
"""Seconds from a worker's death to its job running elsewhere, with the default settings."""


@pytest.fixture(scope="module")
def broker_url(redis_server) -> str:
    # A database of its own: messages of killed workers must not reach other modules' workers.
    return redis_server.url.rsplit("/", 1)[0] + "/5"


@pytest.fixture()
def fleet(worker_env: dict, tmp_path) -> Iterator[Fleet]:
    fleet = Fleet({**worker_env, **SHORT}, tmp_path / "machines")
    yield fleet
    for worker in fleet.workers + fleet.killed:
        print(f"==== {worker.name}\n" + "\n".join(worker.lines[-80:]))  # shown if the test failed
    fleet.stop()


def finished_once(result: dict, job: GatedJob, git_server, github_stub, broker) -> None:
    assert result["success"] is True, result["error"]
    assert result["status"] == "pr_open"
    assert pushes(git_server, job.name) == 1
    assert len(github_stub.pull_requests("acme", job.name)) == 1
    assert locks_left(broker, job.url) == []


def test_a_killed_workers_jobs_run_again_elsewhere_five_times_over(
    fleet, celery_client, broker, git_server, github_stub, tmp_path
):
    fleet.start()
    fleet.start()
    recoveries = []
    for round_ in range(5):
        job = GatedJob.create(git_server, tmp_path, with_operation_id=round_ % 2 == 0)
        pending = job.send(celery_client)
        operation_id = job.job.get("operation_id", pending.id)
        seconds, fd = kill_and_time_recovery(fleet, job, operation_id, job.park())
        recoveries.append(seconds)
        release(fd)
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


def test_recovery_with_the_default_settings(
    worker_env, celery_client, broker, git_server, github_stub, tmp_path
):
    defaults = {k: v for k, v in worker_env.items() if k != "CODEWORKER_CLAIM_TTL"}
    defaults["CODEWORKER_SETUP_NETWORK"] = "none"
    fleet = Fleet(defaults, tmp_path / "machines")
    try:
        fleet.start()
        fleet.start()
        job = GatedJob.create(git_server, tmp_path)
        pending = job.send(celery_client)
        seconds, fd = kill_and_time_recovery(fleet, job, job.job["operation_id"], job.park(), timeout=90)
        release(fd)
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
    fleet, celery_client, broker, git_server, github_stub, tmp_path
):
    first = fleet.start()
    second = fleet.start()
    job = GatedJob.create(git_server, tmp_path)
    pending = job.send(celery_client)
    fd = job.park()
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
    release(fd)
    finished_once(pending.get(timeout=RESULT_TIMEOUT), job, git_server, github_stub, broker)
    runs = [
        worker
        for worker in (first, second)
        if f"Task codeworker.refactor[{pending.id}] received" in worker.output
    ]
    assert len(runs) == 1, "the job was delivered to more than one worker"


def test_the_same_operation_sent_twice_at_once_runs_once(
    fleet, celery_client, broker, git_server, github_stub, tmp_path
):
    fleet.start()
    fleet.start()
    job = GatedJob.create(git_server, tmp_path)
    job.job["description"] = json.dumps({"write": {"app.py": "GREETING = 'hey'\n"}})
    first, second = job.send(celery_client), job.send(celery_client)
    results = [first.get(timeout=RESULT_TIMEOUT), second.get(timeout=RESULT_TIMEOUT)]

    assert results[0] == results[1]
    finished_once(results[0], job, git_server, github_stub, broker)


def test_a_superseded_attempt_pushes_nothing(fleet, celery_client, broker, git_server, github_stub, tmp_path):
    fleet.start()
    job = GatedJob.create(git_server, tmp_path)
    pending = job.send(celery_client)
    fd = job.park()
    claims = OperationClaims(broker, Keys(), 60, 600)
    # Another attempt takes the operation over, as one would after this one's heartbeat lapsed.
    broker.delete(Keys().heartbeat(job.job["operation_id"]))
    assert claims.claim(job.job["operation_id"]).state == "claimed"
    release(fd)

    result = pending.get(timeout=RESULT_TIMEOUT)

    assert result["success"] is False
    assert "stopped before pushing" in result["error"]
    assert pushes(git_server, job.name) == 0
    assert github_stub.pull_requests("acme", job.name) == []
