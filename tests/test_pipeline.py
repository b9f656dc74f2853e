"""The pipeline in-process, with executors written in the test: every exit path cleans up."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
import uuid

import pytest

from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.locks import FileLocks, list_locks
from codeworker.coordination.registry import BranchStatus
from codeworker.executors.base import Outcome, RetryLater, Workspace
from codeworker.loopback.gitserver import GitServer
from codeworker.models import Job
from codeworker.pipeline.errors import LockDeferred, OperationDeferred
from codeworker.pipeline.run import OperationRun, branch_name
from codeworker.pipeline.service import Pipeline
from tests.support.pipeline_runs import FnExecutor, make_job, run, with_executor

APP_PY = "def answer():\n    return 42\n"


@pytest.fixture()
def repo(git_server: GitServer) -> tuple[str, str]:
    name = f"pipe-{uuid.uuid4().hex[:8]}"
    return name, git_server.create_repo("acme", name, {"app.py": APP_PY, "lib/util.py": "X = 1\n"})


def assert_clean(pipe: Pipeline, job: Job) -> None:
    """No lock left, no worktree left."""
    assert list(pipe.redis.scan_iter(Keys().lock_pattern())) == []
    worktrees = pipe.settings.workspace_root / "worktrees"
    assert list(worktrees.glob(f"{job.operation_id}.*")) == []


def test_stages_are_reported_in_order(pipe, repo):
    name, url = repo
    job = make_job(pipe, url, name, target_files=["app.py"])
    stages: list[str] = []
    result = run(
        pipe,
        job,
        lambda ws: ws.write_file("app.py", "def answer():\n    return 43\n"),
        lambda p: stages.append(p.stage),
    )
    assert result["status"] == "pr_open", result["error"]
    assert stages == [
        "checkout",
        "register",
        "lock",
        "setup",
        "baseline",
        "execute",
        "verify",
        "scan",
        "commit",
        "push",
        "pull_request",
    ]
    assert_clean(pipe, job)


def test_executor_crash_fails_cleanly(pipe, repo, git_server):
    name, url = repo
    job = make_job(pipe, url, name, target_files=["app.py"])

    def crash(ws: Workspace) -> None:
        ws.write_file("app.py", "broken")
        raise RuntimeError("executor exploded")

    result = run(pipe, job, crash)

    assert result["status"] == "failed" and "executor exploded" in result["error"]
    assert result["commits"] == []
    assert git_server.branches("acme", name) == ["main"]
    assert pipe.registry.get(repo_id(url), branch_name(job)).status == BranchStatus.FAILED
    assert_clean(pipe, job)


@pytest.mark.parametrize(
    "path", ["../outside.txt", "/etc/passwd", ".git/hooks/pre-commit", "link/escape.txt"]
)
def test_writes_outside_the_checkout_are_refused(pipe, repo, path, tmp_path):
    name, url = repo
    job = make_job(pipe, url, name)

    def escape(ws: Workspace) -> None:
        (ws.root / "link").symlink_to(tmp_path)
        ws.write_file(path, "pwned")

    result = run(pipe, job, escape)

    assert result["status"] == "failed"
    assert (
        "outside the checkout" in result["error"]
        or ".git" in result["error"]
        or "relative" in result["error"]
    )
    assert not (tmp_path / "escape.txt").exists()
    assert_clean(pipe, job)


def test_a_changed_file_held_by_another_operation_stops_the_job(pipe, repo, git_server):
    name, url = repo
    other = FileLocks(pipe.redis, pipe.keys, repo_id(url), "op-other", ttl=30)
    other.acquire(["lib/util.py"], wait=0)
    job = make_job(pipe, url, name)

    result = run(pipe, job, lambda ws: (ws.root / "lib/util.py").write_text("X = 2\n"))

    assert result["status"] == "failed"
    assert "lib/util.py is locked by operation op-other" in result["error"]
    assert git_server.branches("acme", name) == ["main"]
    other.verify()
    other.release()
    assert_clean(pipe, job)


def test_a_lock_lost_before_push_stops_the_push(pipe, repo, git_server):
    name, url = repo
    job = make_job(pipe, url, name, target_files=["app.py"])

    def steal(ws: Workspace) -> None:
        ws.write_file("app.py", "stolen = True\n")
        # Another operation takes the file over, as if our TTL had expired.
        pipe.redis.delete(Keys().lock(repo_id(url), "app.py"))
        FileLocks(pipe.redis, pipe.keys, repo_id(url), "op-thief", ttl=30).acquire(["app.py"], wait=0)

    result = run(pipe, job, steal)

    assert result["status"] == "failed" and "app.py" in result["error"]
    assert git_server.branches("acme", name) == ["main"]
    thief = pipe.redis.hgetall(Keys().lock(repo_id(url), "app.py"))
    assert thief["operation_id"] == "op-thief"


def test_no_changes_is_reported_and_nothing_pushed(pipe, repo, git_server):
    name, url = repo
    job = make_job(pipe, url, name)
    result = run(pipe, job, lambda ws: None)
    assert result["status"] == "no_changes" and result["success"] is False
    assert git_server.branches("acme", name) == ["main"]
    assert_clean(pipe, job)


def test_pull_request_failure_leaves_a_pushed_branch(pipe, repo, git_server, github_stub):
    name, url = repo
    job = make_job(pipe, url, name)
    github_stub.fail_next("POST", rf"/repos/acme/{name}/pulls$", status=503, after_processing=False, times=3)

    result = run(pipe, job, lambda ws: ws.write_file("NEW.md", "new\n"))

    assert result["status"] == "pushed" and result["success"] is False
    assert "pull request failed" in result["error"] and "503" in result["error"]
    assert result["branch"] in git_server.branches("acme", name)
    assert len(result["commits"]) == 1
    assert pipe.registry.get(repo_id(url), result["branch"]).status == BranchStatus.PUSHED
    assert_clean(pipe, job)


@pytest.mark.parametrize("approval_required", [True, False], ids=["review", "merge-asked"])
def test_unverified_change_opens_a_draft_and_is_never_merged(
    pipe, repo, github_stub, git_server, approval_required
):
    """The repository has no tests: nothing verifies the change, whatever the executor says."""
    name, url = repo
    job = make_job(pipe, url, name, approval_required=approval_required)

    class ClaimsSuccess(FnExecutor):
        def run(self, job: Job, workspace: Workspace) -> Outcome:
            self.work(workspace)
            return Outcome.model_validate({"summary": "done", "verified": True})

    claim = pipe.claims.claim(job.operation_id)
    executor = ClaimsSuccess(lambda ws: ws.write_file("NEW.md", "draft\n"))
    base = git_server.ref_sha("acme", name, "refs/heads/main")
    result = OperationRun(pipe, job, executor, claim.owner, None, time.monotonic()).execute()

    assert result["status"] == "pr_open" and result["success"] is False
    assert (
        result["error"]
        == "not verified: the repository has no test command, so nothing can verify the change"
    )
    assert result["pr"]["draft"] is True
    assert github_stub.pull_requests("acme", name)[0]["draft"] is True
    assert git_server.ref_sha("acme", name, "refs/heads/main") == base


def test_pipeline_run_records_the_result_for_redelivery(pipe, repo):
    _, url = repo
    raw = {
        "description": "{}",
        "repository": {"url": url},
        "executor": "autofix",
        "operation_id": "op-redeliver",
    }
    first = pipe.run(raw, "refactor")
    assert pipe.run(raw, "refactor") == first
    assert pipe.claims.get("op-redeliver")["state"] == "finished"


def test_an_overloaded_model_defers_the_job_with_everything_cleaned(pipe, repo, git_server):
    name, url = repo
    job = make_job(pipe, url, name, target_files=["app.py"])
    raw = job.model_dump(mode="json")

    class Overloaded:
        name = "overloaded"

        def run(self, job: Job, workspace: Workspace) -> Outcome:
            workspace.write_file("app.py", "half done\n")
            raise RetryLater("model API overloaded (529)", retry_after=7)

    with pytest.raises(OperationDeferred) as deferred:
        with_executor(pipe, Overloaded()).run(raw, "refactor")

    assert deferred.value.retry_after == 30  # backoff, since the API asked for less
    assert_clean(pipe, job)
    assert pipe.journal.all() == []
    assert git_server.branches("acme", name) == ["main"]
    assert pipe.registry.get(repo_id(url), branch_name(job)).status == BranchStatus.ABANDONED
    assert pipe.claims.claim(job.operation_id).state == "claimed"  # the retry may start at once


def test_the_last_deferral_fails_the_job(pipe, repo):
    name, url = repo
    job = make_job(pipe, url, name)

    class Overloaded:
        name = "overloaded"

        def run(self, job: Job, workspace: Workspace) -> Outcome:
            raise RetryLater("model API overloaded (529)", retry_after=1)

    raw = job.model_dump(mode="json")
    overloaded = with_executor(pipe, Overloaded())
    delays = []
    for _ in range(pipe.settings.max_deferrals):
        with pytest.raises(OperationDeferred) as deferred:
            overloaded.run(raw, "refactor")
        delays.append(deferred.value.retry_after)
    result = overloaded.run(raw, "refactor")

    assert delays == [min(600, 30 * 2**n) for n in range(pipe.settings.max_deferrals)]
    assert result["status"] == "failed" and "gave up after" in result["error"]
    assert pipe.claims.get(job.operation_id)["deferrals"] == pipe.settings.max_deferrals


def test_a_job_whose_files_are_locked_gives_its_slot_back_and_runs_once_they_are_free(pipe, repo, git_server):
    name, url = repo
    job = make_job(pipe, url, name, target_files=["app.py"])
    raw = job.model_dump(mode="json")
    other = FileLocks(pipe.redis, pipe.keys, repo_id(url), "op-other", ttl=30)
    other.acquire(["app.py"], wait=0)
    change = with_executor(
        pipe, FnExecutor(lambda ws: ws.write_file("app.py", "def answer():\n    return 43\n"))
    )

    delays = []
    for _ in range(3):
        with pytest.raises(LockDeferred) as deferred:
            change.run(raw, "refactor")
        assert "app.py is locked by operation op-other" in str(deferred.value)
        delays.append(deferred.value.retry_after)
        # Nothing of the job stays while it waits: no lock, no worktree, no journal entry.
        assert [lock.holder for lock in list_locks(pipe.redis, pipe.keys)] == ["op-other"]
        assert list((pipe.settings.workspace_root / "worktrees").glob(f"{job.operation_id}.*")) == []
        assert pipe.journal.all() == []
        assert pipe.registry.get(repo_id(url), branch_name(job)).status == BranchStatus.ABANDONED
    assert delays == [1, 2, 4]
    record = pipe.claims.get(job.operation_id)
    assert record["state"] == "abandoned" and record["lock_waits"] == 3 and record["lock_wait_since"]

    other.release()
    result = change.run(raw, "refactor")

    assert result["status"] == "pr_open", result["error"]
    assert sorted(git_server.branches("acme", name)) == sorted(["main", branch_name(job)])
    assert "lock_wait_since" not in pipe.claims.get(job.operation_id)
    assert_clean(pipe, job)


def test_a_job_that_waited_longer_than_the_total_fails_naming_the_holder(pipe, repo, git_server):
    name, url = repo
    job = make_job(pipe, url, name, target_files=["app.py"])
    raw = job.model_dump(mode="json")
    other = FileLocks(pipe.redis, pipe.keys, repo_id(url), "op-holder", ttl=30)
    other.acquire(["app.py"], wait=0)
    patient = dataclasses.replace(pipe, settings=pipe.settings.model_copy(update={"lock_wait_total": 0.5}))
    change = with_executor(patient, FnExecutor(lambda ws: ws.write_file("app.py", "x = 1\n")))
    with pytest.raises(LockDeferred) as deferred:
        change.run(raw, "refactor")
    assert 0 < deferred.value.retry_after <= 0.5  # never past the total
    # The operation started waiting before this attempt: the total counts from then.
    pipe.redis.hset(pipe.keys.claim(job.operation_id), "lock_wait_since", time.time() - 1)

    result = change.run(raw, "refactor")

    assert result["status"] == "failed"
    assert "app.py is locked by operation op-holder" in result["error"]
    assert "CODEWORKER_LOCK_WAIT_TOTAL" in result["error"]
    assert git_server.branches("acme", name) == ["main"]
    other.release()
    assert_clean(pipe, job)


def test_a_killed_job_is_abandoned_from_its_journal_entry(pipe, repo, git_server, tmp_path):
    name, url = repo
    job = make_job(pipe, url, name, target_files=["app.py"])
    gate = tmp_path / "gate"
    os.mkfifo(gate)

    child = os.fork()
    if child == 0:  # the "pool child": runs the job until it is killed at the gate
        try:
            run(pipe, job, lambda ws: (ws.write_file("app.py", "x\n"), gate.read_text()))
        finally:
            os._exit(0)
    fd = os.open(gate, os.O_WRONLY)  # the child is parked mid-job, holding its lock
    (entry,) = pipe.journal.all()
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    os.close(fd)
    assert entry.stage == "execute" and entry.locked == ["app.py"]
    assert pipe.redis.exists(Keys().lock(repo_id(url), "app.py"))

    pipe.abandon(entry, "worker shut down")

    assert_clean(pipe, job)
    assert pipe.journal.all() == []
    assert pipe.registry.get(repo_id(url), entry.branch).status == BranchStatus.ABANDONED
    assert pipe.claims.get(job.operation_id)["state"] == "abandoned"
    assert pipe.claims.claim(job.operation_id).state == "claimed"
    assert git_server.branches("acme", name) == ["main"]
