"""The ``codeworker`` command against a real worker, real Redis and the real git remote."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from codeworker.coordination.keys import repo_id
from codeworker.coordination.registry import BranchRecord
from codeworker.loopback.redis_server import free_port
from tests.support.cli import codeworker
from tests.support.jobs import APP_PY, RESULT_TIMEOUT, new_repo, parked, run_job, scripted_job
from tests.support.worker import WorkerProcess


def test_submit_wait_prints_the_stages_and_the_result(worker, worker_env, git_server, tmp_path):
    name, url = new_repo(git_server)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(scripted_job(url, name, {"write": {"CHANGELOG.md": "- tidy\n"}})))

    done = codeworker(worker_env, "submit", str(job_file), "--wait", "--timeout", str(RESULT_TIMEOUT))

    result = json.loads(done.stdout)
    assert result["status"] == "pr_open" and result["success"] is True
    stages = [line.split()[0] for line in done.stderr.splitlines() if line.startswith("  ")]
    assert stages[0] in ("started", "checkout")
    for stage in ("checkout", "lock", "execute", "scan", "commit", "push", "pull_request"):
        assert stage in stages, done.stderr
    assert stages.index("checkout") < stages.index("push") < stages.index("pull_request")


def test_submit_with_flags_and_a_bad_type_is_a_usage_error(worker_env):
    done = codeworker(worker_env, "submit", "--repo", "https://github.com/a/b", "-d", "x", check=False)
    assert done.returncode == 2
    assert "operation type must be one of" in done.stderr


def test_status_locks_and_branches_show_a_running_job(client, worker_env, git_server, tmp_path):
    name, url = new_repo(git_server)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    job = scripted_job(
        url, name, {"gate": str(gate), "write": {"app.py": APP_PY + "x = 1\n"}}, target_files=["app.py"]
    )
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    task_id = codeworker(worker_env, "submit", str(job_file)).stdout.strip()

    with parked(gate):
        held = codeworker(worker_env, "locks").stdout
        running = json.loads(codeworker(worker_env, "status", job["operation_id"]).stdout)
        listed = codeworker(worker_env, "branches", "--repo", url).stdout

    assert f"app.py  {job['operation_id']}  ttl=" in held
    assert running["state"] == "running" and running["heartbeat_ttl"] > 0
    assert listed.startswith("active") and job["operation_id"] in listed

    client.AsyncResult(task_id).get(timeout=RESULT_TIMEOUT)
    finished = json.loads(codeworker(worker_env, "status", job["operation_id"]).stdout)
    assert finished["state"] == "finished" and finished["result"]["status"] == "pr_open"
    assert codeworker(worker_env, "locks").stdout.strip() == "no locks held"
    pr_open = json.loads(
        codeworker(worker_env, "branches", "--repo", url, "--status", "pr_open", "--json").stdout
    )
    assert [record["operation_id"] for record in pr_open] == [job["operation_id"]]


def test_run_executes_one_operation_in_process(worker_env, git_server, tmp_path: Path):
    name, url = new_repo(git_server)
    env = {**worker_env, "WORKSPACE_ROOT": str(tmp_path / "ws")}
    done = codeworker(
        env,
        "run",
        "--type",
        "refactor",
        "--repo",
        url,
        "--executor",
        "scripted",
        "-d",
        json.dumps({"write": {"app.py": APP_PY + "y = 2\n"}}),
        "--merge",
    )
    result = json.loads(done.stdout)
    assert result["status"] == "merged"
    assert git_server.read_file("acme", name, "main", "app.py") == APP_PY + "y = 2\n"
    assert "push" in done.stderr
    assert codeworker(env, "status", "no-such-op", check=False).returncode == 1


def test_follow_up_refuses_an_operation_without_an_open_pull_request(worker_env, registry):
    unknown = codeworker(worker_env, "follow-up", "op-no-such-thing", "add a test", check=False)
    assert unknown.returncode == 1
    assert "no codeworker branch for operation op-no-such-thing" in unknown.stderr

    url = "https://github.com/acme/active"
    registry.register(
        BranchRecord.new(
            repository=url,
            repo=repo_id(url),
            branch="codeworker/op-active",
            operation_id="op-active",
            operation_type="refactor",
        )
    )
    active = codeworker(worker_env, "follow-up", "op-active", "add a test", check=False)
    assert active.returncode == 1
    assert "its branch is active; only an open pull request is revised" in active.stderr


def test_follow_up_wait_pushes_a_revision_that_revisions_lists(client, worker_env, git_server):
    name, url = new_repo(git_server)
    job = scripted_job(url, name, {"write": {"app.py": APP_PY + "x = 1\n"}})
    first = run_job(client, job)
    assert first["status"] == "pr_open", first
    # The scripted executor applies a revision's instructions as its script.
    instructions = json.dumps({"write": {"NOTES.md": "revised\n"}})

    done = codeworker(
        worker_env,
        "follow-up",
        job["operation_id"],
        instructions,
        "--by",
        "alice",
        "--wait",
        "--timeout",
        str(RESULT_TIMEOUT),
    )

    second = json.loads(done.stdout)
    assert second["status"] == "pr_open" and second["success"] is True, second
    assert second["operation_id"] == f"{job['operation_id']}.r1"
    assert second["branch"] == first["branch"]
    assert git_server.ref_sha("acme", name, first["branch"]) == second["commits"][-1]
    assert git_server.parents("acme", name, first["branch"]) == [first["commits"][-1]]
    assert git_server.read_file("acme", name, first["branch"], "NOTES.md") == "revised\n"
    assert "push" in done.stderr

    listed = codeworker(worker_env, "revisions", job["operation_id"]).stdout
    assert f"branch     {first['branch']}" in listed
    assert f"r1  {job['operation_id']}.r1  finished  pr_open  {second['commits'][-1][:12]}" in listed
    shown = json.loads(codeworker(worker_env, "revisions", job["operation_id"], "--json").stdout)
    assert (shown["record"]["status"], shown["record"]["revisions"]) == ("pr_open", 1)
    assert [(r["number"], r["state"], r["status"]) for r in shown["revisions"]] == [
        (1, "finished", "pr_open")
    ]


def test_a_worker_without_a_github_token_refuses_to_start_saying_why(worker_env):
    done = codeworker({**worker_env, "GITHUB_TOKEN": ""}, "worker", "-c", "1", check=False)
    assert done.returncode != 0
    assert "refuses to start: GITHUB_TOKEN is not set" in done.stdout + done.stderr


def test_sigusr2_prints_every_threads_stack_and_the_worker_goes_on(worker_env):
    process = WorkerProcess({**worker_env, "PORT": str(free_port())}, name="stacks").start()
    try:
        assert process.process is not None
        process.process.send_signal(signal.SIGUSR2)
        assert "most recent call first" in process.wait_for_line("most recent call first", timeout=10)
        assert process.process.poll() is None
    finally:
        assert process.stop() == 0
