"""A follow-up through the pipeline in-process: the next revision of an open pull request."""

from __future__ import annotations

from codeworker.executors.base import Workspace
from codeworker.loopback.github_stub import GitHubStub
from codeworker.loopback.gitserver import GitServer
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
