"""Every way out of a job's checkout through the agent's bash tool (``Checkout.run`` in bubblewrap),
tried for real, and what the worker makes of what a command leaves behind: the links it stages, the
secret scan's added lines, and scratch, the one place outside the checkout that both commands and
the worker write. Repositories live on the real smart-HTTP git server; committed symlinks are made
with git plumbing, as a hostile repository would ship them.
"""

from __future__ import annotations

import pygit2
import pytest

from codeworker.git.errors import UnsafeSymlink
from codeworker.models import parse_job
from codeworker.verification.verifier import Verifier
from tests.support import confinement
from tests.support.checkouts import needs_bwrap
from tests.support.confinement import AUTHOR, AWS_KEY, SECRET, commit_and_push, server_name

pytestmark = needs_bwrap

# The confinement fixtures, bound here rather than in conftest (see tests.support.confinement).
env = confinement.env
open_job = confinement.open_job


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
    refusals = ("Invalid cross-device link", "Operation not permitted", "No such file or directory")
    assert sum(output.count(refusal) for refusal in refusals) >= len(sources), output
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
