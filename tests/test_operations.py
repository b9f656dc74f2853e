"""What makes a run one attempt of one operation: the operation id of a job sent without one, the
branch name, and the separate counts (and limits) of busy waits, deferrals and stalls."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from codeworker.coordination.keys import Keys
from codeworker.loopback.gitserver import GitServer
from codeworker.pipeline.errors import OperationBusy, busy_delay
from codeworker.pipeline.run import branch_name
from tests.support.pipeline_runs import FnExecutor, make_job, with_executor


@pytest.fixture()
def repo(git_server: GitServer) -> tuple[str, str]:
    name = f"ops-{uuid.uuid4().hex[:8]}"
    # No tests: ``true`` is the cheapest test command whose unchanged outcome verifies a refactor.
    return name, git_server.create_repo(
        "acme", name, {"app.py": "X = 1\n", ".codeworker.yml": "test_command: 'true'\n"}
    )


def write_app(workspace) -> None:
    workspace.write_file("app.py", "X = 2\n")


def test_a_job_without_operation_id_is_the_operation_of_its_task_id(pipe, repo, git_server):
    name, url = repo
    raw = {"description": "Change X", "repository": {"url": url, "owner": "acme", "name": name}}
    pipeline = with_executor(pipe, FnExecutor(write_app))
    task_id = str(uuid.uuid4())

    first = pipeline.run(raw, "refactor", task_id=task_id)
    again = pipeline.run(raw, "refactor", task_id=task_id, redelivered=True)

    assert first["success"] is True, first["error"]
    assert first["operation_id"] == task_id
    assert again == first
    assert len([b for b in git_server.branches("acme", name) if b != "main"]) == 1


def test_ids_sharing_their_first_characters_get_distinct_branches(pipe, repo):
    name, url = repo
    one = make_job(pipe, url, name, operation_id="deploy-2026-12-02-a")
    two = make_job(pipe, url, name, operation_id="deploy-2026-12-02-b")
    assert one.description == two.description
    assert branch_name(one) != branch_name(two)
    assert branch_name(one).startswith("codeworker/refactor/deploy20-")


def test_a_copy_of_a_running_operation_comes_back_soon_and_backs_off(pipe, repo):
    name, url = repo
    job = make_job(pipe, url, name)
    elsewhere = pipe.claims.claim(job.operation_id)
    assert elsewhere.owner is not None
    raw = job.model_dump(mode="json")

    delays = []
    for _ in range(4):
        with pytest.raises(OperationBusy) as busy:
            pipe.run(raw, "refactor")
        delays.append(busy.value.retry_after)

    assert delays == [busy_delay(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    result = {"success": True, "operation_id": job.operation_id, "status": "pr_open"}
    pipe.claims.finish(job.operation_id, elsewhere.owner, result)
    assert pipe.run(raw, "refactor") == result


def test_a_copy_gives_up_after_the_busy_wait_limit(pipe, repo):
    name, url = repo
    job = make_job(pipe, url, name)
    pipe.claims.claim(job.operation_id)
    limited = dataclasses.replace(pipe, settings=pipe.settings.model_copy(update={"max_busy_waits": 1}))
    raw = job.model_dump(mode="json")
    with pytest.raises(OperationBusy):
        limited.run(raw, "refactor")

    result = limited.run(raw, "refactor")

    assert result["status"] == "failed"
    assert "CODEWORKER_MAX_BUSY_WAITS" in result["error"]


def test_an_operation_whose_worker_keeps_dying_ends_failed(pipe, repo, git_server):
    name, url = repo
    job = make_job(pipe, url, name)
    for _ in range(pipe.settings.max_stalls + 1):
        # An attempt whose worker died: its claim stays "running" and its heartbeat runs out.
        assert pipe.claims.claim(job.operation_id).owner is not None
        pipe.redis.delete(Keys().heartbeat(job.operation_id))

    result = with_executor(pipe, FnExecutor(write_app)).run(job.model_dump(mode="json"), "refactor")

    assert result["status"] == "failed"
    assert "CODEWORKER_MAX_STALLS" in result["error"]
    assert git_server.branches("acme", name) == ["main"]
    assert pipe.claims.get(job.operation_id)["state"] == "finished"
