"""A job whose files another operation holds gives its worker slot back, through a real worker with
one pool process: it is re-queued with a countdown (holding nothing meanwhile), another job runs in
that slot, and once the files are free the deferred job runs to its pull request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from codeworker.coordination.claims import OperationClaims
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.locks import FileLocks, list_locks
from codeworker.coordination.registry import BranchRegistry, BranchStatus
from codeworker.loopback.waiting import wait_until
from tests.support.jobs import QUEUE, RESULT_TIMEOUT, new_repo, scripted_job
from tests.support.worker import WorkerProcess


@pytest.fixture(scope="module")
def broker_url(redis_server) -> str:
    return redis_server.url.rsplit("/", 1)[0] + "/9"


@pytest.fixture(scope="module")
def worker(worker_env: dict) -> Iterator[WorkerProcess]:
    """One pool process: a job waiting for a lock in it would stop every other job."""
    env = {**worker_env, "CODEWORKER_LOCK_WAIT": "0.5"}
    process = WorkerProcess(env, name="defer", concurrency=1).start()
    yield process
    assert process.stop() == 0


def test_a_locked_job_gives_its_slot_to_another_and_runs_when_the_files_are_free(
    worker, client, broker, git_server, github_stub
):
    name, url = new_repo(git_server)
    held = FileLocks(broker, Keys(), repo_id(url), "op-someone-else", ttl=120)
    held.acquire(["app.py"], wait=0)
    claims = OperationClaims(broker, Keys(), 30, 600)
    waiting = scripted_job(url, name, {"write": {"app.py": "X = 2\n"}}, target_files=["app.py"])
    deferred = client.send_task("codeworker.refactor", args=[waiting], queue=QUEUE)
    wait_until(
        lambda: (claims.get(waiting["operation_id"]) or {}).get("lock_waits", 0) >= 1,
        60,
        "the job to give its slot back",
    )

    other_name, other_url = new_repo(git_server)
    other = scripted_job(other_url, other_name, {"write": {"app.py": "Y = 1\n"}})
    first = client.send_task("codeworker.refactor", args=[other], queue=QUEUE).get(timeout=RESULT_TIMEOUT)

    assert first["status"] == "pr_open", first["error"]
    assert not deferred.ready()
    assert [lock.holder for lock in list_locks(broker, Keys())] == ["op-someone-else"]
    assert github_stub.pull_requests("acme", name) == []

    held.release()
    result = deferred.get(timeout=RESULT_TIMEOUT)

    assert result["status"] == "pr_open", result["error"]
    [pull] = github_stub.pull_requests("acme", name)
    assert pull["head"]["ref"] == result["branch"]
    record = BranchRegistry(broker, Keys()).get(repo_id(url), result["branch"])
    assert record is not None and record.status is BranchStatus.PR_OPEN
    assert list_locks(broker, Keys()) == []
    operation = claims.get(waiting["operation_id"])
    assert operation["lock_waits"] >= 1 and "lock_wait_since" not in operation
    assert "is locked by operation op-someone-else" in worker.output
