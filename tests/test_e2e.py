"""End to end: jobs sent by name through real Redis to a real `codeworker worker` process, a real
git smart-HTTP remote and the GitHub stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import redis

from codeworker.coordination.claims import OperationClaims
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.registry import BranchRegistry, BranchStatus
from codeworker.loopback.waiting import wait_until
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support.jobs import (
    APP_PY,
    QUEUE,
    RESULT_TIMEOUT,
    TEST_APP_PY,
    new_repo,
    parked,
    run_job,
    scripted_job,
)

SENDER = textwrap.dedent(
    """
    import json, sys
    from celery import Celery
    broker, task, job = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    app = Celery(broker=broker, backend=broker)
    result = app.send_task(task, args=[job], queue="code-operation").get(timeout=120)
    assert not any(m.split(".")[0] in ("codeworker", "tasks", "executors") for m in sys.modules), "imported"
    print(json.dumps(result))
    """
)


def test_job_sent_by_name_from_a_plain_process_opens_a_pull_request(
    broker_url, worker, git_server, github_stub, registry
):
    name, url = new_repo(git_server)
    job = scripted_job(
        url, name, {"write": {"app.py": APP_PY.replace("'hello '", "'hello, '")}}, target_files=["app.py"]
    )
    job["description"] = json.dumps({"write": {"app.py": "def greet(name):\n    return f'hello {name}'\n"}})
    sender = subprocess.run(
        [sys.executable, "-c", SENDER, broker_url, "codeworker.refactor", json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=RESULT_TIMEOUT + 30,
        env={**os.environ, "PYTHONPATH": ""},
        check=True,
    )
    result = json.loads(sender.stdout)

    assert result["success"] is True, result["error"]
    assert result["status"] == "pr_open"
    assert result["operation_id"] == job["operation_id"]
    assert result["branch"].startswith("codeworker/refactor/op")
    assert result["files_modified"] == ["app.py"]
    assert len(result["commits"]) == 1
    assert result["commits"][0] == git_server.ref_sha("acme", name, f"refs/heads/{result['branch']}")
    assert (
        git_server.read_file("acme", name, result["branch"], "app.py")
        == "def greet(name):\n    return f'hello {name}'\n"
    )
    assert git_server.read_file("acme", name, "main", "app.py") == APP_PY
    assert result["verification"]["after"]["passed"] is True
    assert set(result) >= {
        "pr",
        "iterations",
        "duration",
        "error",
        "usage",
        "secret_findings",
        "verification",
    }

    pulls = github_stub.pull_requests("acme", name)
    assert len(pulls) == 1
    assert pulls[0]["head"]["ref"] == result["branch"] and pulls[0]["base"]["ref"] == "main"
    assert result["pr"]["number"] == pulls[0]["number"] and result["pr"]["url"] == pulls[0]["html_url"]
    assert "app.py" in pulls[0]["body"]

    record = registry.get(repo_id(url), result["branch"])
    assert record is not None
    assert record.status == BranchStatus.PR_OPEN
    assert record.pr_number == pulls[0]["number"]
    assert record.operation_id == job["operation_id"]
    assert record.fencing_token is not None


def test_without_approval_the_change_is_merged_into_the_base(client, git_server, registry):
    name, url = new_repo(git_server)
    new = "def greet(name):\n    return 'hi ' + name\n"
    test = TEST_APP_PY.replace("hello x", "hi x")
    job = scripted_job(
        url, name, {"write": {"app.py": new, "tests/test_app.py": test}}, approval_required=False
    )

    result = run_job(client, job)

    assert result["status"] == "merged", result["error"]
    assert result["success"] is True and result["pr"] is None
    assert git_server.read_file("acme", name, "main", "app.py") == new
    assert git_server.read_file("acme", name, "main", "tests/test_app.py") == test
    assert registry.get(repo_id(url), result["branch"]).status == BranchStatus.MERGED


def test_merge_refused_when_the_base_moved_in_a_conflicting_way(client, git_server, registry, tmp_path):
    name, url = new_repo(git_server)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    job = scripted_job(
        url,
        name,
        {"gate": str(gate), "write": {"app.py": APP_PY.replace("+ name", "+ name  # ours")}},
        approval_required=False,
    )
    pending = client.send_task("codeworker.refactor", args=[job], queue=QUEUE)
    with parked(gate):
        # The executor has checked out and waits on the FIFO; someone else changes the same lines.
        moved = git_server.commit_on("acme", name, "main", {"app.py": "theirs = 2\n"}, "someone else")
    result = pending.get(timeout=RESULT_TIMEOUT)

    assert result["status"] == "conflict" and result["success"] is False
    assert "app.py" in result["error"]
    assert git_server.ref_sha("acme", name, "refs/heads/main") == moved
    assert result["branch"] in git_server.branches("acme", name)
    assert registry.get(repo_id(url), result["branch"]).status == BranchStatus.FAILED


def test_same_operation_id_twice_gives_one_branch_one_pr_and_the_same_result(client, git_server, github_stub):
    name, url = new_repo(git_server)
    job = scripted_job(url, name, {"write": {"NOTES.md": "notes\n"}})

    first = run_job(client, job)
    second = run_job(client, job)

    assert first["status"] == "pr_open"
    assert second == first
    assert len(github_stub.pull_requests("acme", name)) == 1
    assert [b for b in git_server.branches("acme", name) if b != "main"] == [first["branch"]]


def test_a_duplicate_delivered_while_the_first_runs_waits_for_its_result(
    client, git_server, github_stub, tmp_path
):
    name, url = new_repo(git_server)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    job = scripted_job(url, name, {"gate": str(gate), "write": {"NOTES.md": "once\n"}})

    first = client.send_task("codeworker.refactor", args=[job], queue=QUEUE)
    gate_fd = os.open(gate, os.O_WRONLY)  # returns once the first delivery is parked mid-run
    states: list[str] = []

    def release_on_retry(message: dict) -> None:
        states.append(message["status"])
        # The second delivery found a live heartbeat and was retried instead of started.
        if message["status"] == "RETRY" and states.count("RETRY") == 1:
            os.write(gate_fd, b"go")
            os.close(gate_fd)

    duplicate = client.send_task("codeworker.refactor", args=[job], queue=QUEUE)
    second = duplicate.get(timeout=RESULT_TIMEOUT, on_message=release_on_retry)
    results = first.get(timeout=RESULT_TIMEOUT), second
    assert "RETRY" in states

    assert results[0]["status"] == "pr_open" and results[1] == results[0]
    assert len(github_stub.pull_requests("acme", name)) == 1
    assert [b for b in git_server.branches("acme", name) if b != "main"] == [results[0]["branch"]]


def test_committed_aws_key_is_blocked_and_nothing_is_pushed(client, git_server, github_stub, registry):
    name, url = new_repo(git_server)
    key_id = "AKIA" + "QYLPMN5HHHFPZAM2"
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "zq9Lm3Ab"
    config = f"aws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
    job = scripted_job(url, name, {"write": {"deploy/config.ini": config}})

    result = run_job(client, job)

    assert result["status"] == "blocked" and result["success"] is False
    assert "deploy/config.ini" in result["error"]
    assert result["commits"] == [] and result["pr"] is None
    findings = result["secret_findings"]
    assert any(
        f["path"] == "deploy/config.ini" and f["line"] == 1 and f["severity"] == "HIGH" for f in findings
    )
    serialized = json.dumps(result)
    assert key_id not in serialized and secret not in serialized
    assert git_server.branches("acme", name) == ["main"]
    assert github_stub.pull_requests("acme", name) == []
    assert registry.get(repo_id(url), result["branch"]).status == BranchStatus.FAILED


def test_two_jobs_on_one_file_never_both_modify_it(client, broker_url, git_server, tmp_path):
    name, url = new_repo(git_server)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    first = scripted_job(
        url, name, {"gate": str(gate), "write": {"app.py": APP_PY + "first = 1\n"}}, target_files=["app.py"]
    )
    second = scripted_job(url, name, {"write": {"app.py": APP_PY + "second = 2\n"}}, target_files=["app.py"])

    pending = client.send_task("codeworker.refactor", args=[first], queue=QUEUE)
    locks = redis.Redis.from_url(broker_url, decode_responses=True)
    claims = OperationClaims(locks, Keys(), 30, 600)
    lock_key = Keys().lock(repo_id(url), "app.py")
    with parked(gate):
        # The first job holds app.py and waits on the FIFO; the second one waits for the file,
        # giving its worker slot back between tries.
        assert locks.exists(lock_key)
        waiting = client.send_task("codeworker.refactor", args=[second], queue=QUEUE)
        wait_until(
            lambda: (claims.get(second["operation_id"]) or {}).get("lock_waits", 0) >= 1,
            RESULT_TIMEOUT,
            "the second job to wait for app.py",
        )
        assert not waiting.ready()
        assert locks.hget(lock_key, "operation_id") == first["operation_id"]
    done = pending.get(timeout=RESULT_TIMEOUT)
    later = waiting.get(timeout=RESULT_TIMEOUT)

    assert done["success"] is True, done["error"]
    assert later["success"] is True, later["error"]
    assert git_server.read_file("acme", name, done["branch"], "app.py") == APP_PY + "first = 1\n"
    assert git_server.read_file("acme", name, later["branch"], "app.py") == APP_PY + "second = 2\n"
    registry = BranchRegistry(locks, Keys())
    fences = [registry.get(repo_id(url), job["branch"]).fencing_token for job in (done, later)]
    assert fences[0] < fences[1]  # the second took the file after the first had released it
    assert not locks.exists(lock_key)


def test_invalid_jobs_fail_at_once_without_retry(client, git_server):
    cases = [
        ("codeworker.error_fix", {"description": "x"}, "repository"),
        ("codeworker.error_fix", "not a job", "JSON object"),
        (
            "codeworker.feature_implementation",
            {"description": "", "repository": {"url": "file:///etc"}},
            "scheme",
        ),
        (
            "codeworker.test",
            {
                "description": "x",
                "repository": {"url": git_server.base_url + "acme/x.git"},
                "target_files": ["../x"],
            },
            "target_files",
        ),
        (
            "codeworker.refactor",
            {
                "description": "x",
                "repository": {"url": git_server.base_url + "acme/x.git"},
                "executor": "nope",
            },
            "unknown executor",
        ),
    ]
    for task, job, words in cases:
        async_result = client.send_task(task, args=[job], queue=QUEUE)
        result = async_result.get(timeout=RESULT_TIMEOUT)
        assert result["status"] == "invalid" and result["success"] is False
        assert words in result["error"], result["error"]
        assert async_result.state == "SUCCESS"
        assert async_result.retries == 0


def test_the_token_appears_nowhere(client, worker, git_server, github_stub, workspace_root):
    """Runs last in this module: every earlier job's output is searched too."""
    name, url = new_repo(git_server)
    result = run_job(client, scripted_job(url, name, {"write": {"app.py": APP_PY + "\n# touched\n"}}))
    assert result["success"], result["error"]

    for secret in (GITHUB_TOKEN, ANTHROPIC_KEY):
        assert secret not in worker.output
        assert secret not in json.dumps(result)
        for request in git_server.requests:
            assert secret not in request.path
        for request in github_stub.requests:
            assert secret not in request.path
        for path in workspace_root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert secret.encode() not in path.read_bytes(), path
    assert "operation_id" in worker.output and result["operation_id"] in worker.output
