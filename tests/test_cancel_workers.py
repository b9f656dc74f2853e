"""Stopping jobs for real, through real ``codeworker worker`` processes: Flower's Terminate (Celery's
``revoke(terminate=True)``) in a slow test command and in the agent loop, ``codeworker cancel``
right before the push, a revoke of queued jobs that a restarted worker receives, and a backend's
cancel by name. Each checks what reached the remote, the PR stand-in and Redis once the task turned
REVOKED, and prints the seconds from the request to that moment (the README's figures)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from celery.result import AsyncResult

from codeworker.coordination.claims import OperationClaims
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.registry import BranchRegistry, BranchStatus
from codeworker.loopback.waiting import wait_until
from tests.support import anthropic_stub as s
from tests.support.cli import codeworker
from tests.support.jobs import QUEUE, RESULT_TIMEOUT, new_repo, scripted_job
from tests.support.stalls import SHORT_RECOVERY, Fleet, GatedJob, locks_left, pushes

STOP_TIMEOUT = 60
"""Seconds a test waits for a cancelled job's task to turn REVOKED."""


@pytest.fixture(scope="module")
def broker_url(redis_server) -> str:
    # A database of its own: a job parked by a failed test here must not reach other modules' workers.
    return redis_server.url.rsplit("/", 1)[0] + "/7"


@pytest.fixture(scope="module")
def worker_env(worker_env: dict, model: s.AnthropicStub) -> dict:
    return {**worker_env, **SHORT_RECOVERY, "ANTHROPIC_BASE_URL": model.url}


@pytest.fixture()
def fleet(worker_env: dict, tmp_path) -> Iterator[Fleet]:
    with Fleet(worker_env, tmp_path / "machines") as fleet:
        yield fleet


def revoked(task: AsyncResult, since: float) -> float:
    """Seconds from ``since`` until ``task`` is REVOKED in the result backend."""
    wait_until(lambda: task.state == "REVOKED", STOP_TIMEOUT, f"task {task.id} revoked")
    return time.monotonic() - since


def stopped_cleanly(broker, url: str, name: str, operation_id: str, git_server, github_stub) -> dict:
    """What the stopped operation left: no push, no PR, no lock, a cancelled branch record (if it
    got that far); its recorded result."""
    assert pushes(git_server, name) == 0
    assert github_stub.pull_requests("acme", name) == []
    assert locks_left(broker, url) == []
    records = BranchRegistry(broker, Keys()).list(repo=repo_id(url))
    assert [record.status for record in records] in ([], [BranchStatus.CANCELLED])
    result = OperationClaims(broker, Keys(), 1, 60).get(operation_id)["result"]
    assert result["status"] == "cancelled" and not result["success"]
    return result


def worktrees(fleet: Fleet) -> list[Path]:
    return [path for path in fleet.root.glob("machine-*/worktrees/*") if path.is_dir()]


def serves(client: Celery, git_server) -> None:
    """The worker goes on: a plain job after the cancelled one succeeds."""
    name, url = new_repo(git_server, {"app.py": "X = 1\n"})
    job = scripted_job(url, name, {"write": {"app.py": "X = 2\n"}})
    result = client.send_task("codeworker.refactor", args=[job], queue=QUEUE).get(timeout=RESULT_TIMEOUT)
    assert result["status"] == "pr_open", result["error"]


def test_terminate_stops_a_job_in_its_test_command(fleet, celery_client, broker, git_server, github_stub):
    fleet.start()
    name, url = new_repo(git_server, {"app.py": "X = 1\n"})
    job = scripted_job(url, name, {"write": {"app.py": "X = 2\n"}, "run": "touch .started && sleep 600"})
    task = celery_client.send_task("codeworker.refactor", args=[job], queue=QUEUE)
    wait_until(lambda: list(fleet.root.glob("machine-*/worktrees/*/.started")), 60, "the test command")

    asked = time.monotonic()
    celery_client.control.revoke(task.id, terminate=True, signal="SIGTERM")
    seconds = revoked(task, asked)

    assert worktrees(fleet) == [], "REVOKED before the worktree was removed"
    result = stopped_cleanly(broker, url, name, job["operation_id"], git_server, github_stub)
    assert result["cancellation"]["via"] == "revoke (terminate, SIGTERM)"
    assert result["error"].startswith(
        "cancelled by celery revoke (revoke (terminate, SIGTERM)) during execute"
    )
    assert "nothing was pushed" in str(task.result)
    print(f"terminate in a test command: REVOKED {seconds:.2f} s after the request")
    serves(celery_client, git_server)


def test_terminate_stops_the_agent_loop(fleet, celery_client, broker, git_server, github_stub, model):
    fleet.start()
    name, url = new_repo(git_server)
    job = {
        "operation_type": "error_fix",
        "description": "greet is rude",
        "repository": {"url": url, "owner": "acme", "name": name, "branch": "main"},
        "operation_id": f"op-agent-{name}",
    }
    model.script.clear()
    model.play(*[s.say(s.bash("sleep 0.2")) for _ in range(1000)])
    before = len(model.messages_requests)
    task = celery_client.send_task("codeworker.error_fix", args=[job], queue=QUEUE)
    wait_until(lambda: len(model.messages_requests) >= before + 3, 60, "three agent turns")

    asked = time.monotonic()
    celery_client.control.revoke(task.id, terminate=True)
    seconds = revoked(task, asked)
    turns = len(model.messages_requests)

    result = stopped_cleanly(broker, url, name, job["operation_id"], git_server, github_stub)
    assert "during execute" in result["error"]
    serves(celery_client, git_server)
    assert len(model.messages_requests) == turns, "the agent went on after its task was REVOKED"
    model.script.clear()
    print(f"terminate in the agent loop: REVOKED {seconds:.2f} s after the request")


@pytest.mark.parametrize("how", ["codeworker-cancel", "terminate"])
def test_a_cancellation_right_before_the_push(
    worker_env, tmp_path, celery_client, broker, git_server, github_stub, how
):
    """With the cancellation watch made too slow to see it, the check made with the push's
    checkpoint (one Redis step) stops the job before anything leaves the machine."""
    env = {**worker_env, "CODEWORKER_CANCEL_POLL_INTERVAL": "3600"}
    with Fleet(env, tmp_path / "machines") as fleet:
        fleet.start()
        job = GatedJob.create(git_server, broker)
        task = job.send(celery_client)
        parked = job.park(fleet)
        operation_id = job.job["operation_id"]
        if how == "terminate":
            celery_client.control.revoke(task.id, terminate=True, signal="SIGKILL", reply=True)
            asked_by = "celery revoke (revoke (terminate, SIGKILL))"
        else:
            done = codeworker({"REDIS_URL": env["REDIS_URL"]}, "cancel", operation_id, "--by", "alice")
            assert done.stdout.startswith(f"cancellation of {operation_id} recorded; it stops within")
            asked_by = "alice (codeworker cancel)"

        released = time.monotonic()
        job.release(parked)
        seconds = revoked(task, released)

        result = stopped_cleanly(broker, job.url, job.name, operation_id, git_server, github_stub)
        assert result["error"] == f"cancelled by {asked_by} during push; nothing was pushed"
        again = codeworker({"REDIS_URL": env["REDIS_URL"]}, "cancel", operation_id, check=False)
        assert again.returncode == 1
        assert again.stderr.strip() == (
            f"Error: operation {operation_id} already finished (cancelled); nothing to cancel"
        )
        print(f"{how} right before the push: REVOKED {seconds:.2f} s after the job went on")


def test_revoked_queued_jobs_never_run_even_on_a_worker_started_later(
    worker_env, tmp_path, celery_client, broker, git_server, github_stub
):
    """Two busy workers, two queued jobs revoked, then both workers killed: the worker started
    after them never heard the revoke (Celery keeps it in memory) and receives everything."""
    with Fleet(worker_env, tmp_path / "machines", concurrency=1) as fleet:
        fleet.start(), fleet.start()
        busy = [GatedJob.create(git_server, broker) for _ in range(2)]
        busy_tasks = [job.send(celery_client) for job in busy]
        for job in busy:
            job.park(fleet)
        queued = [GatedJob.create(git_server, broker) for _ in range(2)]
        queued_tasks = [job.send(celery_client) for job in queued]
        celery_client.control.revoke([task.id for task in queued_tasks])
        for worker in list(fleet.workers):
            fleet.kill(worker)
        fleet.start()

        pending = list(busy)
        while pending:  # the one pool process takes the restored jobs in either order
            [job] = wait_until(lambda: [j for j in pending if j.gate.waiting()], STOP_TIMEOUT, "a rerun")
            job.release(job.park(fleet))
            pending.remove(job)
        assert [task.get(timeout=RESULT_TIMEOUT)["status"] for task in busy_tasks] == ["pr_open"] * 2
        claims = OperationClaims(broker, Keys(), 1, 60)
        for job in queued:
            wait_until(
                lambda job=job: (claims.get(job.job["operation_id"]) or {}).get("result"),
                STOP_TIMEOUT,
                "the later worker's answer to a revoked job",
            )
            assert job.gate.waiting() == [], "a revoked job started"
            result = stopped_cleanly(
                broker, job.url, job.name, job.job["operation_id"], git_server, github_stub
            )
            assert (
                result["error"] == "cancelled by celery revoke (revoke) before it started; nothing was done"
            )
        assert [task.state for task in queued_tasks] == ["REVOKED", "REVOKED"]


def test_a_backend_cancels_by_name(fleet, celery_client, broker, git_server, github_stub):
    fleet.start()
    job = GatedJob.create(git_server, broker)
    task = job.send(celery_client)
    parked = job.park(fleet)
    operation_id = job.job["operation_id"]

    replies = celery_client.control.broadcast(
        "codeworker.cancel",
        arguments={"operation_id": operation_id, "requested_by": "backend-7"},
        reply=True,
        timeout=5,
    )
    assert [reply for answer in replies for reply in answer.values()] == [
        {"ok": f"cancellation of {operation_id} recorded"}
    ]
    asked = time.monotonic()
    job.release(parked)
    revoked(task, asked)

    result = stopped_cleanly(broker, job.url, job.name, operation_id, git_server, github_stub)
    assert result["cancellation"]["requested_by"] == "backend-7"
    status = json.loads(codeworker({"REDIS_URL": fleet.env["REDIS_URL"]}, "status", operation_id).stdout)
    assert status["cancellation"]["via"] == "codeworker.cancel"
