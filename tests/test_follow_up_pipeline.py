"""A follow-up through the pipeline in-process: the next revision of an open pull request."""

from __future__ import annotations

import os
import signal

import pytest

from codeworker.executors.base import Workspace
from codeworker.loopback.github_stub import GitHubStub
from codeworker.loopback.gitserver import GitServer
from codeworker.pipeline.errors import LockDeferred
from codeworker.pipeline.service import Pipeline
from tests.support.jobs import new_repo
from tests.support.pipeline_runs import FnExecutor, make_job, run, with_executor


def write(path: str, text: str):
    def work(workspace: Workspace) -> None:
        (workspace.root / path).write_text(text)

    return work


def test_a_follow_up_pushes_a_second_commit_on_the_same_branch(
    pipe: Pipeline, git_server: GitServer, github_stub: GitHubStub
) -> None:
    name, url = new_repo(git_server)
    job = make_job(pipe, url, name)
    first = run(pipe, job, write("app.py", "def greet(name):\n    return 'hi ' + name\n"))
    assert first["status"] == "pr_open", first
    branch = first["branch"]
    human = git_server.commit_on("acme", name, branch, {"NOTES.md": "by a person\n"}, "A person's commit")

    follow = with_executor(pipe, FnExecutor(write("extra.py", "X = 1\n")))
    second = follow.follow_up(
        {"operation_id": job.operation_id, "instructions": "also add extra.py", "requested_by": "alice"}
    )
    assert second["status"] == "pr_open", second
    assert second["operation_id"] == f"{job.operation_id}.r1"
    assert second["branch"] == branch
    tip = git_server.ref_sha("acme", name, branch)
    assert tip == second["commits"][-1]
    assert git_server.parents("acme", name, branch) == [human]
    assert git_server.read_file("acme", name, branch, "extra.py") == "X = 1\n"
    assert git_server.read_file("acme", name, branch, "NOTES.md") == "by a person\n"
    record = pipe.registry.of_operation(job.operation_id)
    assert record is not None
    assert (record.status, record.revisions, record.head) == ("pr_open", 1, tip)
    comments = github_stub.issue_comments("acme", name, first["pr"]["number"])
    assert any("Revision 1" in c["body"] and "alice" in c["body"] for c in comments), comments


def test_a_branch_moved_during_the_revision_runs_it_again_on_the_new_commit(
    pipe: Pipeline, git_server: GitServer
) -> None:
    name, url = new_repo(git_server)
    job = make_job(pipe, url, name)
    first = run(pipe, job, write("app.py", "def greet(name):\n    return 'hi ' + name\n"))
    branch = first["branch"]
    pushed_meanwhile: list[str] = []

    def work_while_a_person_pushes(workspace: Workspace) -> None:
        (workspace.root / "extra.py").write_text("X = 1\n")
        if not pushed_meanwhile:
            pushed_meanwhile.append(
                git_server.commit_on("acme", name, branch, {"NOTES.md": "mine\n"}, "Mine")
            )

    follow = with_executor(pipe, FnExecutor(work_while_a_person_pushes))
    request = {"operation_id": job.operation_id, "instructions": "add extra.py", "requested_by": "alice"}
    with pytest.raises(LockDeferred, match="the branch moved while the revision ran"):
        follow.follow_up(request, task_id="task-1")

    assert git_server.ref_sha("acme", name, branch) == pushed_meanwhile[0]  # nothing of ours pushed
    record = pipe.registry.of_operation(job.operation_id)
    assert record is not None and (record.status, record.revising, record.revisions) == ("pr_open", None, 0)

    again = follow.follow_up(request, task_id="task-1")  # the task's retry: the same revision

    assert again["status"] == "pr_open" and again["operation_id"] == f"{job.operation_id}.r1", again
    assert git_server.parents("acme", name, branch) == pushed_meanwhile
    assert git_server.read_file("acme", name, branch, "extra.py") == "X = 1\n"


def test_a_killed_revision_puts_the_pull_request_back_to_open(
    pipe: Pipeline, git_server: GitServer, tmp_path
) -> None:
    name, url = new_repo(git_server)
    job = make_job(pipe, url, name)
    first = run(pipe, job, write("app.py", "def greet(name):\n    return 'hi ' + name\n"))
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    request = {"operation_id": job.operation_id, "instructions": "add extra.py", "requested_by": "alice"}

    child = os.fork()
    if child == 0:  # the "pool child": runs the revision until it is killed at the gate
        try:
            parked = FnExecutor(lambda ws: (ws.write_file("extra.py", "X = 1\n"), gate.read_text()))
            with_executor(pipe, parked).follow_up(request, task_id="task-killed")
        finally:
            os._exit(0)
    fd = os.open(gate, os.O_WRONLY)  # the child is parked mid-revision
    (entry,) = [e for e in pipe.journal.all() if e.operation_id == f"{job.operation_id}.r1"]
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    os.close(fd)
    record = pipe.registry.of_operation(job.operation_id)
    assert record is not None and (record.status, record.revising) == ("revising", f"{job.operation_id}.r1")

    pipe.abandon(entry, "worker shut down")

    record = pipe.registry.of_operation(job.operation_id)
    assert record is not None and (record.status, record.revising) == ("pr_open", None)
    assert record.error == "worker shut down"
    assert git_server.ref_sha("acme", name, first["branch"]) == first["commits"][-1]
    # The task's redelivery is the same revision, and it runs.
    done = with_executor(pipe, FnExecutor(write("extra.py", "X = 1\n"))).follow_up(
        request, task_id="task-killed"
    )
    assert done["status"] == "pr_open" and done["operation_id"] == f"{job.operation_id}.r1", done
