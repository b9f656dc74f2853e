"""Redis that survives the loss of its primary: a real primary, replica and three sentinels on
loopback (tests/support/sentinel.py), a real `codeworker worker` whose REDIS_URL is the
``sentinel://`` URL, and the primary SIGKILLed while a job is parked mid-run.

Both outcomes the README promises happen here. With the job's claim, locks, branch record and
message replicated before the primary died, the job finishes on the promoted replica with one push
and one pull request. With them deleted on the replica before the primary died (what an
asynchronous replica that had not yet received them would hold), the job notices before pushing,
stops, and runs again from the start on the new primary: again one push and one pull request.
Either way the worker goes on consuming without a restart, and /health says ready."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from pydantic import ValidationError

from codeworker.config import Settings
from codeworker.coordination.connection import SentinelUrl, redis_password
from codeworker.coordination.keys import Keys
from codeworker.loopback.waiting import wait_until
from codeworker.loopback.worker import get
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support.jobs import QUEUE, RESULT_TIMEOUT, new_repo, open_gate, release, scripted_job
from tests.support.sentinel import MASTER, SentinelGroup
from tests.support.worker import WorkerProcess, worker_environment


def test_a_sentinel_url_is_read_as_celery_reads_it():
    url = "sentinel://:pa%40ss@10.0.0.1:26380/2;sentinel://10.0.0.2;sentinel://10.0.0.3:26381"
    parsed = SentinelUrl.parse(url)
    assert parsed.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("10.0.0.3", 26381))
    assert parsed.db == 2 and parsed.password == "pa@ss" and redis_password(url) == "pa@ss"
    assert Settings(redis_url=url).redis_url == url


@pytest.mark.parametrize(
    "url, named",
    [
        ("sentinel://h:26379;redis://h2:6379/0", "redis://h2"),
        ("sentinel://", "sentinel://"),
        ("sentinel://;", ""),
    ],
)
def test_a_broken_sentinel_url_is_refused_naming_the_part(url, named):
    with pytest.raises(ValidationError) as refused:
        Settings(redis_url=url)
    assert "REDIS_URL" in str(refused.value) or "redis_url" in str(refused.value)
    assert named in str(refused.value) and ":pw@" not in str(refused.value)


@pytest.fixture()
def group() -> Iterator[SentinelGroup]:
    servers = SentinelGroup()
    yield servers
    servers.close()


@pytest.fixture()
def worker(group: SentinelGroup, git_server, github_stub, tmp_path: Path) -> Iterator[WorkerProcess]:
    env = worker_environment(
        group.url(), tmp_path / "workspace", git_server, github_stub, GITHUB_TOKEN, ANTHROPIC_KEY
    )
    env |= {
        "CODEWORKER_REDIS_MASTER_NAME": MASTER,
        "CODEWORKER_CLAIM_TTL": "2",
        "CODEWORKER_VISIBILITY_TIMEOUT": "10",
        "CODEWORKER_RESTORE_INTERVAL": "2",
        "CODEWORKER_SHUTDOWN_GRACE": "2",
    }
    process = WorkerProcess(env, name="sentinel", concurrency=2).start()
    yield process
    process.stop(signal.SIGKILL, timeout=10)


def sender(group: SentinelGroup) -> Celery:
    """A plain Celery client of the group, as a web backend would configure one."""
    app = Celery(broker=group.url(), backend=group.url())
    app.conf.broker_transport_options = {"master_name": MASTER}
    app.conf.result_backend_transport_options = {"master_name": MASTER}
    return app


def gated_job(git_server, tmp_path: Path, label: str) -> tuple[dict, Path, str]:
    """A job that parks at the FIFO it returns once it took its claim, lock and branch record."""
    name, url = new_repo(git_server)
    gate = tmp_path / f"gate-{label}"
    os.mkfifo(gate)
    code = f"def greet(name):\n    return 'hello ' + name  # {label}\n"
    script = {"gate": str(gate), "write": {"app.py": code}}
    return scripted_job(url, name, script, target_files=["app.py"]), gate, name


def park(
    group: SentinelGroup, worker, git_server, tmp_path: Path, label: str
) -> tuple[dict, Path, str, str, int]:
    """Send a gated job and return once it is parked: (job, gate, repository, task id, gate fd)."""
    app = sender(group)
    job, gate, name = gated_job(git_server, tmp_path, label)
    task_id = app.send_task("codeworker.refactor", args=[job], queue=QUEUE).id
    app.close()
    return job, gate, name, task_id, open_gate(gate, worker)


def result_of(group: SentinelGroup, task_id: str) -> dict:
    """The task's result, read through a client made after the failover."""
    app = sender(group)
    try:
        return app.AsyncResult(task_id).get(timeout=RESULT_TIMEOUT)
    finally:
        app.close()


def delivered_once(result: dict, name: str, git_server, github_stub) -> None:
    assert result["success"] is True and result["status"] == "pr_open", result
    assert len(github_stub.pull_requests("acme", name)) == 1
    pushes = [update.ref for update in git_server.ref_updates("acme", name) if update.accepted]
    assert pushes == [f"refs/heads/{result['branch']}"]


def ready(worker: WorkerProcess) -> bool:
    status, body = get(int(worker.env["PORT"]), "/health")
    return status == 200 and body.get("ready") is True


def consumes_after_failover(group: SentinelGroup, worker, git_server, github_stub, killed: float) -> float:
    """A job sent after the failover completes on the same worker process (no restart); seconds
    from the primary's death to its result."""
    app = sender(group)
    try:
        name, url = new_repo(git_server)
        job = scripted_job(url, name, {"write": {"NOTES.md": "after the failover\n"}})
        result = app.send_task("codeworker.refactor", args=[job], queue=QUEUE).get(timeout=RESULT_TIMEOUT)
    finally:
        app.close()
    elapsed = time.monotonic() - killed
    delivered_once(result, name, git_server, github_stub)
    wait_until(lambda: ready(worker), 30, "/health ready after the failover")
    assert worker.process is not None and worker.process.poll() is None
    assert "Unrecoverable error" not in worker.output
    return elapsed


def test_a_failover_after_the_job_was_replicated_finishes_it_once(
    group, worker, git_server, github_stub, tmp_path
):
    _, _, name, task_id, fd = park(group, worker, git_server, tmp_path, "replicated")
    group.synced()  # the claim, the lock, the branch record and the unacked message are on the replica

    killed = time.monotonic()
    group.fail_primary()
    release(fd)

    result = result_of(group, task_id)
    delivered_once(result, name, git_server, github_stub)
    elapsed = consumes_after_failover(group, worker, git_server, github_stub, killed)
    print(f"failover to the first new job completed: {elapsed:.1f} s")


def test_a_failover_that_lost_the_claim_stops_before_pushing_and_runs_again(
    group, worker, git_server, github_stub, tmp_path
):
    job, gate, name, task_id, fd = park(group, worker, git_server, tmp_path, "lost")
    group.synced()
    keys = Keys()
    record = [keys.claim(job["operation_id"]), keys.heartbeat(job["operation_id"])]
    group.lose_on_replica([*record, keys.all_branches()], [keys.lock_pattern(), keys.branch("*", "*")])

    killed = time.monotonic()
    group.fail_primary()
    release(fd)
    # It found its claim gone before pushing and runs again from the start: it parks once more.
    release(open_gate(gate, worker))

    result = result_of(group, task_id)
    delivered_once(result, name, git_server, github_stub)
    assert "Redis lost the claim of operation" in worker.output
    elapsed = consumes_after_failover(group, worker, git_server, github_stub, killed)
    print(f"failover (claim lost) to the first new job completed: {elapsed:.1f} s")
