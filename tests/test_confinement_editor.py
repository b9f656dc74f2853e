"""Every way out of a job's checkout through the agent's text editor (``Tools`` over
``Checkout.resolve``/``read_file``/``write_file``), tried for real. Repositories live on the real
smart-HTTP git server; committed symlinks are made with git plumbing, as a hostile repository would
ship them.
"""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest

from tests.support import confinement
from tests.support.checkouts import needs_bwrap
from tests.support.confinement import SECRET, commit_and_push, refused

pytestmark = needs_bwrap

# The confinement fixtures, bound here rather than in conftest (see tests.support.confinement).
env = confinement.env
open_job = confinement.open_job


# == the text editor ==============================================================================


@pytest.mark.parametrize(
    "path", ["../secret.txt", "a/../../secret.txt", "..", "./../../../outside/secret.txt"]
)
@pytest.mark.parametrize("command", ["view", "create", "str_replace", "insert"])
def test_editor_refuses_parent_directory_paths(open_job, env, path, command) -> None:
    job = open_job()
    if "outside" in path:  # this one really names the secret (checkouts are <tmp>/ws/worktrees/<op>)
        assert (job.root / path).resolve() == (env.outside / "secret.txt").resolve()
    result = job.edit(
        command=command,
        path=path,
        file_text="pwned",
        old_str=SECRET,
        new_str="pwned",
        insert_line=0,
        insert_text="pwned",
    )
    assert refused(result, "refused", ".."), result.text
    assert SECRET not in result.text
    assert (env.outside / "secret.txt").read_text() == SECRET + "\n"


@pytest.mark.parametrize("command", ["view", "create", "str_replace"])
def test_editor_refuses_absolute_paths_outside(open_job, env, command) -> None:
    job = open_job()
    for path in (env.outside / "secret.txt", Path("/etc/passwd"), job.root.parent / "x.py"):
        result = job.edit(command=command, path=str(path), file_text="pwned", old_str="root", new_str="x")
        assert refused(result, "outside the checkout"), result.text
        assert SECRET not in result.text and "root:" not in result.text
    assert (env.outside / "secret.txt").read_text() == SECRET + "\n"
    assert not (job.root.parent / "x.py").exists()


def test_editor_refuses_committed_symlinks_to_files_outside(open_job, env) -> None:
    other = open_job({"secret.txt": SECRET + "\n"})
    job = open_job(
        links={
            "passwd": "/etc/passwd",
            "secret": str(env.outside / "secret.txt"),
            "sibling": f"../{other.root.name}/secret.txt",  # another job's checkout, relatively
        }
    )
    for link in ("passwd", "secret", "sibling"):
        assert (job.root / link).is_symlink()
        view = job.edit(command="view", path=link)
        edit = job.edit(command="str_replace", path=link, old_str="cwcanary", new_str="pwned")
        create = job.edit(command="create", path=link, file_text="pwned")
        for result in (view, edit, create):
            assert refused(result, "resolves outside the checkout"), (link, result.text)
            assert SECRET not in result.text and "root:" not in result.text
    assert (env.outside / "secret.txt").read_text() == SECRET + "\n"
    assert (other.root / "secret.txt").read_text() == SECRET + "\n"


def test_editor_refuses_committed_symlinked_directories(open_job, env) -> None:
    job = open_job(links={"d": str(env.outside), "up": "..", "tmp": "/tmp"})
    for path in ("d/x.py", "up/x.py", "tmp/x.py", "d/secret.txt"):
        result = job.edit(command="create", path=path, file_text="pwned")
        assert refused(result, "resolves outside the checkout"), (path, result.text)
    for path in ("d", "up", "d/secret.txt"):
        result = job.edit(command="view", path=path)
        assert refused(result, "resolves outside the checkout"), (path, result.text)
        assert SECRET not in result.text
    assert sorted(p.name for p in env.outside.iterdir()) == ["secret.txt"]
    assert not (job.root.parent / "x.py").exists() and not Path("/tmp/x.py").exists()
    # The links themselves stay what the repository made them; the root listing names them only.
    listing = job.edit(command="view", path=".")
    assert not listing.is_error and SECRET not in listing.text


def test_editor_refuses_the_git_file_and_paths_through_it(open_job) -> None:
    job = open_job(links={"g": ".git"})
    gitfile = (job.root / ".git").read_text()
    for path in (".git", ".git/config", ".git/hooks/pre-commit", "g", "g/config", "./.git"):
        for result in (
            job.edit(command="view", path=path),
            job.edit(command="create", path=path, file_text="gitdir: /tmp/evil\n"),
        ):
            assert refused(result, ".git"), (path, result.text)
    assert (job.root / ".git").read_text() == gitfile


def test_editor_refuses_nul_bytes_clearly(open_job) -> None:
    job = open_job()
    for command in ("view", "create"):
        result = job.edit(command=command, path="app.py\x00.txt", file_text="x")
        assert refused(result, "not a repo-relative path"), result.text
    assert sorted(p.name for p in job.root.iterdir()) == [".git", "README.md", "app.py"]


def test_editor_gives_a_clear_error_for_overlong_paths(open_job) -> None:
    job = open_job()
    for path in ("a" * 5000, "a/" * 2500 + "x", str(job.root / ("b" * 5000))):
        result = job.edit(command="create", path=path, file_text="x")
        assert refused(result, "longer than"), result.text[:300]
        assert len(result.text) < 500
    # One name longer than the file system allows (NAME_MAX, 255 bytes) though the path is short.
    result = job.edit(command="create", path="n" * 300 + ".py", file_text="x")
    assert refused(result, "longer than 255 bytes"), result.text[:300]
    assert len(result.text) < 500
    assert sorted(p.name for p in job.root.iterdir()) == [".git", "README.md", "app.py"]


def test_editor_refuses_three_hundred_nested_directories(open_job) -> None:
    """libgit2 cannot stage a tree 100 levels deep: refused up front, not at the commit."""
    job = open_job()
    result = job.edit(command="create", path="d/" * 300 + "deep.py", file_text="x = 1\n")
    assert refused(result, "301 levels deep", "at most 100"), result.text
    assert not (job.root / "d").exists()

    deep = "d/" * 99 + "deep.py"  # the deepest path git stages
    created = job.edit(command="create", path=deep, file_text="x = 1\n")
    assert not created.is_error, created.text
    assert job.edit(command="view", path=deep).text == "     1\tx = 1"
    assert job.worktree.changed_files() == [deep]
    sha = commit_and_push(job.worktree)
    assert job.worktree.repository()[sha].peel(pygit2.Tree)[deep].data == b"x = 1\n"


def test_editor_refuses_symlink_loops(open_job) -> None:
    job = open_job(links={"loop": "loop", "a": "b", "b": "a"})
    for path in ("loop", "a", "a/x.py"):
        for result in (
            job.edit(command="view", path=path),
            job.edit(command="create", path=path, file_text="x"),
        ):
            assert refused(result, "loop of symbolic links"), (path, result.text)


@pytest.mark.timeout(60)
def test_editor_refuses_fifos_and_other_special_files(open_job) -> None:
    """A FIFO the agent made in bash would block the worker forever on open()."""
    job = open_job()
    job.bash("mkfifo pipe && python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"sock\")'")
    assert (job.root / "pipe").exists() and (job.root / "sock").exists()
    for path in ("pipe", "sock"):
        for result in (
            job.edit(command="view", path=path),
            job.edit(command="create", path=path, file_text="x"),
            job.edit(command="str_replace", path=path, old_str="a", new_str="b"),
            job.edit(command="insert", path=path, insert_line=0, insert_text="x"),
        ):
            assert refused(result, "not a regular file"), (path, result.text)
    # Staging does not open them either: git has no FIFOs or sockets, so they are left out.
    assert job.worktree.changed_files() == []
