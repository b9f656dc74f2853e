"""A real Celery Flower process pointed at the workers' broker lists codeworker's jobs, with their
task names and states, through Flower's HTTP API."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from codeworker.coordination.keys import Keys, repo_id
from codeworker.loopback.redis_server import free_port
from codeworker.loopback.waiting import wait_until
from codeworker.loopback.worker import BIN
from tests.support.jobs import QUEUE, RESULT_TIMEOUT, new_repo, scripted_job
from tests.support.worker import WorkerProcess

DEADLINE = 60
POLL = 0.2


class Flower:
    """``celery flower`` on a free local port, keeping every line it prints."""

    def __init__(self, broker_url: str, unauthenticated_api: bool = True) -> None:
        self.worker = ""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [
                str(BIN / "celery"),
                "--broker",
                broker_url,
                "flower",
                # Flower's own options are tornado's: --name=value.
                f"--port={self.port}",
                "--address=127.0.0.1",
            ],
            env={
                **{k: v for k, v in os.environ.items() if k != "FLOWER_UNAUTHENTICATED_API"},
                **({"FLOWER_UNAUTHENTICATED_API": "true"} if unauthenticated_api else {}),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def get(self, path: str) -> tuple[int, str]:
        """Status and body of ``GET path``; (0, reason) when Flower does not answer yet."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:  # noqa: S310
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def alive(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail("flower exited:\n" + "\n".join(self.lines[-40:]))
        return True

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture()
def flower(broker_url: str, worker: WorkerProcess) -> Iterator[Flower]:
    hostname = worker.wait_for_line(" ready.").split(" ready.")[0].split('"event": "')[-1]
    process = Flower(broker_url)
    process.worker = hostname
    try:
        wait_until(
            lambda: process.alive() and process.get("/healthcheck")[0] == 200,
            timeout=DEADLINE,
            what="flower to listen",
            interval=POLL,
        )

        def sees_worker() -> bool:
            status, body = process.get("/metrics")
            if status != 200:
                return False
            return any(
                sample.labels.get("worker") == hostname and sample.value == 1
                for family in text_string_to_metric_families(body)
                if family.name == "flower_worker_online"
                for sample in family.samples
            )

        # The worker's heartbeat events reach Flower: its event receiver is consuming, so it will
        # also see the task events of the jobs sent from here on.
        wait_until(
            sees_worker, timeout=DEADLINE, what=f"flower to see worker {hostname} online", interval=POLL
        )
        yield process
    finally:
        process.stop()


def test_flower_lists_the_jobs_with_their_names_and_states(flower, client, git_server):
    name, url = new_repo(git_server)
    job = scripted_job(url, name, {"write": {"NOTES.md": "notes\n"}})
    done = client.send_task("codeworker.refactor", args=[job], queue=QUEUE)
    result = done.get(timeout=RESULT_TIMEOUT)
    assert result["success"] is True and result["status"] == "pr_open", result["error"]

    invalid = client.send_task("codeworker.error_fix", args=[{"description": "x"}], queue=QUEUE)
    rejected = invalid.get(timeout=RESULT_TIMEOUT)
    assert rejected["status"] == "invalid" and rejected["success"] is False

    expected = {done.id: "codeworker.refactor", invalid.id: "codeworker.error_fix"}

    def listed() -> dict[str, Any] | None:
        status, body = flower.get("/api/tasks")
        assert status in (0, 200), (status, body)
        tasks = json.loads(body) if status == 200 else {}
        # States arrive as events; wait until both jobs have reached their final one.
        if all(tasks.get(task_id, {}).get("state") == "SUCCESS" for task_id in expected):
            return tasks
        return None

    tasks = wait_until(listed, timeout=DEADLINE, what="flower to list both jobs as SUCCESS", interval=POLL)

    for task_id, task_name in expected.items():
        task = tasks[task_id]
        assert task["name"] == task_name
        assert task["state"] == "SUCCESS"
        assert task["worker"] == flower.worker
        assert task["received"] and task["started"] and task["succeeded"]

    status, body = flower.get(f"/api/task/info/{done.id}")
    assert status == 200, body
    info = json.loads(body)
    assert info["name"] == "codeworker.refactor" and info["state"] == "SUCCESS"
    assert job["operation_id"] in info["result"]

    # A job can also be looked up by its name and state.
    status, body = flower.get("/api/tasks?taskname=codeworker.error_fix&state=SUCCESS")
    assert status == 200, body
    assert invalid.id in json.loads(body)


def test_flowers_terminate_shows_revoked_only_once_the_job_has_stopped(
    flower, client, git_server, github_stub, broker_url, workspace_root
):
    """Flower's Terminate button (``POST /api/task/revoke/<id>?terminate=true``) on a job in a slow
    test command: Flower lists it REVOKED only after its locks and worktree are gone, and nothing
    was pushed."""
    name, url = new_repo(git_server, {"app.py": "X = 1\n"})
    job = scripted_job(
        url,
        name,
        {"write": {"app.py": "X = 2\n"}, "run": "touch .started && sleep 600"},
        target_files=["app.py"],
    )
    task = client.send_task("codeworker.refactor", args=[job], queue=QUEUE)
    wait_until(lambda: list(workspace_root.glob("worktrees/*/.started")), DEADLINE, "the test command")

    revoke = f"{flower.url}/api/task/revoke/{task.id}?terminate=true"
    request = urllib.request.Request(revoke, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        assert response.status == 200

    def state() -> str:
        status, body = flower.get(f"/api/task/info/{task.id}")
        return json.loads(body)["state"] if status == 200 else ""

    wait_until(lambda: state() == "REVOKED", DEADLINE, "flower to show the job REVOKED", POLL)
    store = redis.Redis.from_url(broker_url)
    assert list(store.scan_iter(match=Keys().lock(repo_id(url), "*"))) == []
    assert not list(workspace_root.glob("worktrees/*/.started"))
    assert git_server.ref_updates("acme", name) == [] and github_stub.pull_requests("acme", name) == []


def test_flower_api_refuses_without_auth_or_the_unauthenticated_switch(broker_url):
    """Without auth or FLOWER_UNAUTHENTICATED_API, Flower's API answers 401: an operator must choose."""
    process = Flower(broker_url, unauthenticated_api=False)
    try:
        wait_until(
            lambda: process.alive() and process.get("/healthcheck")[0] == 200,
            timeout=DEADLINE,
            what="flower to listen",
            interval=POLL,
        )
        assert process.get("/api/tasks")[0] == 401
    finally:
        process.stop()
