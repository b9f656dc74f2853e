"""Operator limits: repository size, change size, and the files the agent's editor reads or writes.

Real Redis, the real smart-HTTP git server, the pipeline in-process with the test-only scripted
executor (tests/plugins): a refused job must leave nothing pushed, locked, registered or half-fetched.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.locks import FileLocks
from codeworker.coordination.registry import BranchStatus
from codeworker.executors.agent.tools import EDITOR, Tools
from codeworker.git.errors import RepositoryTooLarge
from codeworker.git.mirrors import Mirrors
from codeworker.pipeline.service import Pipeline
from codeworker.sandbox.checkout import Checkout
from tests.plugins.cw_scripted import ScriptedExecutor
from tests.support.jobs import new_repo, scripted_job

APP_PY = "def answer():\n    return 42\n"


def limited(pipe: Pipeline, **limits: int) -> Pipeline:
    """The test pipeline with other limits, running the scripted executor for every job."""
    settings = pipe.settings.model_copy(update=limits)
    return dataclasses.replace(
        Pipeline.from_settings(settings), resolve_executor=lambda name, operation_type: ScriptedExecutor()
    )


NO_TESTS = {"app.py": APP_PY}
"""A repository without a test suite: the scripted executor then runs no command."""


def objects_size(mirror: Path) -> int:
    return sum(entry.stat().st_size for entry in (mirror / "objects").rglob("*") if entry.is_file())


def assert_nothing_left(pipe: Pipeline, job: dict) -> None:
    """No lock, no worktree, no journal entry; the result is recorded, so it is never run again."""
    assert list(pipe.redis.scan_iter(Keys().lock_pattern())) == []
    assert list((pipe.settings.workspace_root / "worktrees").glob(f"{job['operation_id']}.*")) == []
    assert pipe.journal.all() == []
    assert pipe.claims.get(job["operation_id"])["state"] == "finished"


# -- repository size ------------------------------------------------------------------------------


def test_a_repository_over_the_limit_fails_and_leaves_the_mirror_usable(pipe, git_server):
    # Random hex barely compresses: the pack is several times the limit.
    big_name, big_url = new_repo(git_server, {"app.py": APP_PY, "blob.txt": os.urandom(300_000).hex()})
    strict = limited(pipe, max_repo_bytes=100_000)
    job = scripted_job(big_url, big_name, {"write": {"app.py": "changed\n"}})

    result = strict.run(job, "refactor")

    assert result["status"] == "failed" and result["success"] is False
    assert "too large" in result["error"] and "its git objects" in result["error"]
    assert "100,000 bytes (CODEWORKER_MAX_REPO_BYTES)" in result["error"]
    assert result["commits"] == [] and result["pr"] is None
    assert git_server.branches("acme", big_name) == ["main"]
    assert strict.registry.get(repo_id(big_url), result["branch"]) is None  # never registered
    assert_nothing_left(strict, job)
    # The transfer was aborted: libgit2 dropped the partial pack, the mirror holds nothing.
    mirror = strict.mirrors.mirror_path(big_url)
    assert objects_size(mirror) < 100_000
    assert strict.run(job, "refactor") == result  # a redelivery returns the record, no new fetch

    # The next job on a normal repository is unaffected.
    name, url = new_repo(git_server, NO_TESTS)
    ok = strict.run(
        scripted_job(url, name, {"write": {"app.py": "def answer():\n    return 43\n"}}), "refactor"
    )
    assert ok["status"] == "pr_open", ok["error"]

    # With the limit raised, the aborted mirror fetches the big repository from scratch.
    roomy = limited(pipe, max_repo_bytes=10_000_000)
    again = roomy.run(scripted_job(big_url, big_name, {"write": {"app.py": "changed\n"}}), "refactor")
    assert again["status"] == "pr_open", again["error"]
    assert again["branch"] in git_server.branches("acme", big_name)


def test_a_small_pack_that_checks_out_too_large_is_refused_before_it_is_written(pipe, git_server):
    # A megabyte of one character packs into about a kilobyte: only the checkout measure sees it.
    name, url = new_repo(git_server, {"app.py": APP_PY, "zeros.txt": "0" * 1_000_000})
    strict = limited(pipe, max_repo_bytes=200_000)
    job = scripted_job(url, name, {"write": {"app.py": "changed\n"}})

    result = strict.run(job, "refactor")

    assert result["status"] == "failed"
    assert "its checked-out files" in result["error"] and "CODEWORKER_MAX_REPO_BYTES" in result["error"]
    assert objects_size(strict.mirrors.mirror_path(url)) < 200_000
    assert git_server.branches("acme", name) == ["main"]
    assert_nothing_left(strict, job)


def test_a_mirror_already_over_a_lowered_limit_fails_without_fetching(pipe, git_server, tmp_path):
    _, url = new_repo(git_server, {"app.py": APP_PY, "one.txt": os.urandom(30_000).hex()})
    mirrors = Mirrors(tmp_path / "ws", pipe.settings.github_token, max_repo_bytes=500_000)
    mirrors.fetch(url)
    stored = objects_size(mirrors.mirror_path(url))
    assert 30_000 < stored < 500_000

    lowered = Mirrors(tmp_path / "ws", pipe.settings.github_token, max_repo_bytes=stored - 1)
    requests = len(git_server.requests)
    with pytest.raises(RepositoryTooLarge) as refused:
        lowered.checkout(url, "main", "codeworker/refactor/x", "op-grown", "a1")
    assert refused.value.size == stored and refused.value.limit == stored - 1
    assert len(git_server.requests) == requests  # refused before any network round trip
    assert not lowered.worktree_path("op-grown", "a1").exists()


# -- change size ----------------------------------------------------------------------------------


def test_a_diff_over_the_limit_is_blocked_and_nothing_is_pushed(pipe, git_server):
    name, url = new_repo(git_server, NO_TESTS)
    strict = limited(pipe, max_diff_bytes=1_000)
    job = scripted_job(url, name, {"write": {"app.py": "x = 1\n" * 500}}, target_files=["app.py"])

    result = strict.run(job, "refactor")

    assert result["status"] == "blocked" and result["success"] is False
    assert "too large to push" in result["error"] and "bytes of diff" in result["error"]
    assert "over the limit of 1,000 (CODEWORKER_MAX_DIFF_BYTES)" in result["error"]
    assert result["commits"] == [] and result["files_modified"] == ["app.py"]
    assert git_server.branches("acme", name) == ["main"]
    assert strict.registry.get(repo_id(url), result["branch"]).status == BranchStatus.FAILED
    assert_nothing_left(strict, job)


def test_a_blocked_oversized_change_leaves_the_mirror_as_it_was(pipe, git_server):
    """Measuring the change stages it, and staging writes blobs: into the job's own store, which
    goes with the worktree, never into the mirror every later job fetches into."""
    name, url = new_repo(git_server, NO_TESTS)
    pipe.mirrors.fetch(url)
    objects = pipe.mirrors.mirror_path(url) / "objects"
    before = sorted(str(path.relative_to(objects)) for path in objects.rglob("*") if path.is_file())
    strict = limited(pipe, max_diff_bytes=100_000)
    # Random base64 barely compresses: about 1.5 MB of objects (a job description holds 100 kB).
    script = {"write": {"app.py": "x = 1\n"}, "run": "head -c 1500000 /dev/urandom | base64 > dump.txt"}
    job = scripted_job(url, name, script, target_files=["app.py", "dump.txt"])

    result = strict.run(job, "refactor")

    assert result["status"] == "blocked" and "bytes of diff" in result["error"]
    after = sorted(str(path.relative_to(objects)) for path in objects.rglob("*") if path.is_file())
    assert after == before
    assert list((objects.parent / "worktrees").glob("*")) == []
    assert_nothing_left(strict, job)
    accepted = strict.run(scripted_job(url, name, {"write": {"app.py": "x = 1\n"}}), "refactor")
    assert accepted["status"] == "pr_open", accepted["error"]
    pipe.mirrors.fetch(url)  # the mirror names no object it lacks


def test_too_many_changed_files_are_blocked(pipe, git_server):
    name, url = new_repo(git_server, NO_TESTS)
    strict = limited(pipe, max_changed_files=2)
    files = {f"new/{n}.txt": f"{n}\n" for n in range(3)}

    result = strict.run(scripted_job(url, name, {"write": files}), "refactor")

    assert result["status"] == "blocked"
    assert "3 files changed, over the limit of 2 (CODEWORKER_MAX_CHANGED_FILES)" in result["error"]
    assert git_server.branches("acme", name) == ["main"]
    assert list(strict.redis.scan_iter(Keys().lock_pattern())) == []


def test_a_change_within_the_limits_is_pushed(pipe, git_server):
    name, url = new_repo(git_server, NO_TESTS)
    strict = limited(pipe, max_diff_bytes=1_000, max_changed_files=1)

    result = strict.run(
        scripted_job(url, name, {"write": {"app.py": "def answer():\n    return 43\n"}}), "refactor"
    )

    assert result["status"] == "pr_open", result["error"]
    assert result["branch"] in git_server.branches("acme", name)


# -- the agent's editor ---------------------------------------------------------------------------


@pytest.fixture()
def tools(pipe, git_server) -> Iterator[Tools]:
    """The editor over a real checkout of a real repository, with real locks, limited to 1000 bytes."""
    name, url = new_repo(git_server, {"small.py": "a = 1\nb = 2\n", "big.txt": "y" * 1500 + "\n"})
    worktree = pipe.mirrors.checkout(url, "main", f"codeworker/refactor/{name}", f"op-{name}", "a1")
    locks = FileLocks(pipe.redis, pipe.keys, repo_id(url), f"op-{name}", ttl=30)
    checkout = Checkout(worktree, locks, pipe.settings, None)
    yield Tools(checkout, 10_000, 1_000)
    locks.release()
    checkout.close()
    worktree.remove()


def edit(tools: Tools, **tool_input: object):
    return tools.call(EDITOR, tool_input)


@pytest.mark.parametrize(
    "tool_input",
    [
        {"command": "view"},
        {"command": "str_replace", "old_str": "yyy", "new_str": "z"},
        {"command": "insert", "insert_line": 0, "insert_text": "z"},
    ],
)
def test_every_editor_command_that_reads_refuses_a_file_over_the_limit(tools, tool_input):
    result = edit(tools, path="big.txt", **tool_input)

    assert result.is_error
    assert "big.txt is 1501 bytes, more than the 1000 bytes the editor may read" in result.text
    assert "CODEWORKER_MAX_VIEW_BYTES" in result.text
    assert (tools.workspace.root / "big.txt").read_text() == "y" * 1500 + "\n"


@pytest.mark.parametrize(
    "tool_input",
    [
        {"command": "create", "path": "new.txt", "file_text": "n" * 1001},
        {"command": "str_replace", "path": "small.py", "old_str": "a = 1", "new_str": "a = '" + "n" * 1000},
        {"command": "insert", "path": "small.py", "insert_line": 1, "insert_text": "n" * 1000},
    ],
)
def test_every_editor_command_that_writes_refuses_a_file_over_the_limit(tools, tool_input):
    result = edit(tools, **tool_input)

    assert result.is_error
    assert "bytes, more than the 1000 bytes the editor may write" in result.text
    assert "nothing changed" in result.text
    assert (tools.workspace.root / "small.py").read_text() == "a = 1\nb = 2\n"
    assert not (tools.workspace.root / "new.txt").exists()
    assert tools.workspace.changed_files() == []


def test_the_editor_works_up_to_the_limit(tools):
    assert not edit(tools, command="create", path="new.txt", file_text="n" * 1000).is_error
    assert not edit(tools, command="view", path="new.txt").is_error
    assert tools.workspace.changed_files() == ["new.txt"]
