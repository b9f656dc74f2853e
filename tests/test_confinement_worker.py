"""The worker's own later steps on whatever the agent left behind (staging, the secret scan's added
lines, commit, push), tried for real: .git, where the worker must trust nothing the agent can
write, and whole jobs through the pipeline. Repositories live on the real smart-HTTP git server.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from codeworker.coordination.keys import Keys
from codeworker.executors.base import Workspace
from codeworker.git.errors import GitError
from codeworker.loopback.gitserver import GitServer
from codeworker.pipeline.service import Pipeline
from tests.support import confinement
from tests.support.checkouts import FILES, needs_bwrap
from tests.support.confinement import AUTHOR, AWS_KEY, commit_and_push, server_name
from tests.support.pipeline_runs import run_in_new_repo

pytestmark = needs_bwrap

# The confinement fixtures, bound here rather than in conftest (see tests.support.confinement).
env = confinement.env
open_job = confinement.open_job


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
    assert repo.head.name == f"refs/heads/{job.worktree.local_branch}"
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


def run_pipeline(pipe: Pipeline, git_server: GitServer, command: str) -> tuple[dict, str]:
    """Runs a job whose whole work is one sandboxed shell command."""

    def shell(workspace: Workspace) -> None:
        workspace.run(command)

    return run_in_new_repo(pipe, git_server, FILES, shell)


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
