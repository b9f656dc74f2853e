"""Cancelling an operation, in-process against real Redis and git: where a running attempt stops,
what it leaves behind, and what a later delivery of a cancelled job does."""

from __future__ import annotations

import dataclasses
import time

import pytest

from codeworker.coordination.cancellations import Cancellations, CancelSignal, CancelState, cancellation_now
from codeworker.coordination.keys import repo_id
from codeworker.coordination.registry import BranchRegistry, BranchStatus
from codeworker.executors.base import Workspace
from codeworker.pipeline.service import Pipeline
from tests.support.jobs import new_repo
from tests.support.pipeline_runs import FnExecutor, with_executor


def job_on_new_repo(git_server, operation_id: str) -> tuple[dict, str]:
    name, url = new_repo(git_server, {"app.py": "X = 1\n"})
    job = {
        "operation_id": operation_id,
        "description": "Change X",
        "repository": {"url": url, "owner": "acme", "name": name},
        "target_files": ["app.py"],
    }
    return job, name


def cancel(pipe: Pipeline, operation_id: str, by: str = "alice") -> CancelState:
    return pipe.cancellations.request(cancellation_now(by, "test"), operation_id=operation_id).state


def quick(pipe: Pipeline, poll: float) -> Pipeline:
    return dataclasses.replace(pipe, settings=pipe.settings.model_copy(update={"cancel_poll_interval": poll}))


def left_behind(pipe: Pipeline, url: str) -> dict:
    """What a stopped operation left in Redis and on disk."""
    return {
        "locks": list(pipe.redis.scan_iter(pipe.keys.lock_pattern())),
        "worktrees": sorted(p.name for p in (pipe.settings.workspace_root / "worktrees").glob("*")),
        "records": [(r.status, r.error) for r in pipe.registry.list(repo=repo_id(url))],
    }


def test_a_running_command_is_killed_and_nothing_is_pushed(pipe, git_server, github_stub):
    job, name = job_on_new_repo(git_server, "op-cancel-cmd")
    pipe = quick(pipe, 0.1)
    ran: list[float] = []

    def work(ws: Workspace) -> None:
        ws.write_file("app.py", "X = 2\n")
        cancel(pipe, "op-cancel-cmd")
        ran.append(time.monotonic())
        ws.run("sleep 600")

    result = with_executor(pipe, FnExecutor(work)).run(job, "refactor")
    stopped = time.monotonic() - ran[0]

    assert result["status"] == "cancelled" and not result["success"]
    assert result["cancellation"]["requested_by"] == "alice"
    assert result["error"].startswith("cancelled by alice (test) during execute; nothing was pushed")
    assert stopped < 300, "the sleeping command ran to its end"
    assert git_server.ref_updates("acme", name) == []
    assert github_stub.pull_requests("acme", name) == []
    left = left_behind(pipe, job["repository"]["url"])
    assert left["locks"] == [] and left["worktrees"] == []
    assert [status for status, _ in left["records"]] == [BranchStatus.CANCELLED]
    assert pipe.claims.get("op-cancel-cmd")["result"]["status"] == "cancelled"


def test_a_redelivery_of_a_cancelled_job_answers_the_cancelled_result(pipe, git_server):
    job, _ = job_on_new_repo(git_server, "op-cancel-again")
    pipe = quick(pipe, 0.1)

    def work(ws: Workspace) -> None:
        cancel(pipe, "op-cancel-again")
        ws.run("sleep 600")

    first = with_executor(pipe, FnExecutor(work)).run(job, "refactor")
    again = with_executor(pipe, FnExecutor(lambda ws: pytest.fail("ran again"))).run(job, "refactor")
    assert again == first and first["status"] == "cancelled"
    assert cancel(pipe, "op-cancel-again") is CancelState.FINISHED


def test_a_job_cancelled_before_it_started_never_runs(pipe, git_server):
    job, name = job_on_new_repo(git_server, "op-cancel-queued")
    assert cancel(pipe, "op-cancel-queued") is CancelState.RECORDED
    assert cancel(pipe, "op-cancel-queued", by="bob") is CancelState.ALREADY

    result = with_executor(pipe, FnExecutor(lambda ws: pytest.fail("started"))).run(job, "refactor")

    assert result["status"] == "cancelled"
    assert result["error"] == "cancelled by alice (test) before it started; nothing was done"
    assert left_behind(pipe, job["repository"]["url"]) == {"locks": [], "worktrees": [], "records": []}
    assert git_server.ref_updates("acme", name) == []


def test_a_revoke_by_task_id_cancels_the_job_it_carries(pipe, git_server):
    """A revoke knows only the Celery task id, not the operation id the job names."""
    job, _ = job_on_new_repo(git_server, "op-cancel-task")
    pipe.cancellations.request(cancellation_now("celery revoke", "revoke"), task_id="task-7")

    result = with_executor(pipe, FnExecutor(lambda ws: pytest.fail("started"))).run(
        job, "refactor", task_id="task-7"
    )
    assert result["status"] == "cancelled" and result["cancellation"]["via"] == "revoke"


def test_the_check_before_the_push_reads_redis_not_only_the_watch(pipe, git_server, github_stub):
    """With the watch too slow to notice, the push's own check (with its checkpoint, one Redis step)
    still stops it."""
    job, name = job_on_new_repo(git_server, "op-cancel-push")
    pipe = quick(pipe, 3600)

    def work(ws: Workspace) -> None:
        ws.write_file("app.py", "X = 2\n")
        cancel(pipe, "op-cancel-push")

    stages: list[str] = []
    result = with_executor(pipe, FnExecutor(work)).run(job, "refactor", lambda p: stages.append(p.stage))

    assert stages[-1] == "push"
    assert result["status"] == "cancelled" and "during push; nothing was pushed" in result["error"]
    assert git_server.ref_updates("acme", name) == []
    assert pipe.claims.get("op-cancel-push").get("pushed") is None


class CancelledOnceOnTheRemote(BranchRegistry):
    """The registry, with the operation cancelled the moment its branch is recorded as pushed: the
    window between the push and the pull request."""

    def __init__(self, registry: BranchRegistry, cancellations: Cancellations, operation_id: str) -> None:
        super().__init__(registry.client, registry.keys)
        self.cancellations, self.operation_id = cancellations, operation_id

    def transition(self, repo, branch, to, attempt=None, **fields):  # type: ignore[override]
        record = super().transition(repo, branch, to, attempt, **fields)
        if to is BranchStatus.PUSHED:
            self.cancellations.request(cancellation_now("alice", "test"), operation_id=self.operation_id)
        return record


def test_a_branch_pushed_before_the_cancellation_is_kept_and_no_pull_request_opened(
    pipe, git_server, github_stub
):
    job, name = job_on_new_repo(git_server, "op-cancel-pr")
    pipe = dataclasses.replace(
        quick(pipe, 3600),
        registry=CancelledOnceOnTheRemote(pipe.registry, pipe.cancellations, "op-cancel-pr"),
    )
    work = FnExecutor(lambda ws: ws.write_file("app.py", "X = 2\n"))

    result = with_executor(pipe, work).run(job, "refactor")

    assert result["status"] == "cancelled"
    assert "during pull_request; the branch was pushed (1 commit(s)) and is kept" in result["error"]
    [pushed] = git_server.ref_updates("acme", name)
    assert result["commits"] == [pushed.new]
    assert github_stub.pull_requests("acme", name) == []
    left = left_behind(pipe, job["repository"]["url"])
    assert left["locks"] == [] and [s for s, _ in left["records"]] == [BranchStatus.CANCELLED]


def test_a_signal_kills_a_command_that_starts_after_it():
    signal = CancelSignal()
    killed: list[str] = []
    signal.set(cancellation_now("alice", "test"))
    with signal.killing(lambda: killed.append("late")):
        pass
    assert killed == ["late"]
    with pytest.raises(Exception, match="cancelled by alice"):
        signal.raise_if_set()
