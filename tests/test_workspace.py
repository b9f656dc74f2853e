"""The pygit2 workspace against a real smart-HTTP git server with token auth."""

from __future__ import annotations

import multiprocessing
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pygit2
import pytest
from pydantic import SecretStr

from codeworker.git.auth import GitAuth
from codeworker.git.errors import (
    AuthenticationFailed,
    BaseBranchMissing,
    GitError,
    InvalidRepository,
    MergeConflict,
    PushRejected,
)
from codeworker.git.mirrors import FETCHED, Mirrors
from codeworker.git.worktree import Worktree
from codeworker.loopback.gitserver import GitServer
from tests.conftest import GITHUB_TOKEN
from tests.support.mirror_processes import checkout_in_process

TOKEN = GITHUB_TOKEN
AUTHOR = ("codeworker", "codeworker@example.invalid")


@dataclass
class Repo:
    owner: str
    name: str
    url: str


@pytest.fixture()
def repo(git_server: GitServer) -> Repo:
    name = f"r{uuid.uuid4().hex[:8]}"
    files = {"README.md": "hello\n", "src/app.py": "def f():\n    return 1\n", "old.txt": "old\n"}
    return Repo("acme", name, git_server.create_repo("acme", name, files))


@pytest.fixture()
def mirrors(tmp_path: Path) -> Mirrors:
    return Mirrors(tmp_path / "ws", SecretStr(TOKEN), connect_timeout_ms=5_000, read_timeout_ms=30_000)


@pytest.fixture()
def worktree(mirrors: Mirrors, repo: Repo) -> Iterator[Worktree]:
    wt = mirrors.checkout(repo.url, "main", "codeworker/op-1", "op-1", "a1")
    yield wt
    wt.remove()


def _requests_for(server: GitServer, repo: Repo, start: int) -> list[tuple[str, str]]:
    prefix = f"/{repo.owner}/{repo.name}.git/"
    return [(r.method, r.path) for r in server.requests[start:] if r.path.startswith(prefix)]


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


# -- checkout ----------------------------------------------------------------------------------------


def test_checkout_creates_branch_at_base(git_server: GitServer, repo: Repo, worktree: Worktree) -> None:
    assert worktree.path.is_dir()
    assert (worktree.path / "src" / "app.py").read_text() == "def f():\n    return 1\n"
    assert worktree.base_commit == git_server.ref_sha(repo.owner, repo.name, "main")
    head = worktree.repository().head
    assert head.name == "refs/heads/codeworker/op-1.a1"  # the attempt's own branch
    assert str(head.target) == worktree.base_commit
    assert worktree.commits() == []
    assert worktree.changed_files() == []


def test_missing_base_branch(mirrors: Mirrors, repo: Repo) -> None:
    with pytest.raises(BaseBranchMissing) as info:
        mirrors.checkout(repo.url, "develop", "codeworker/x", "op-x", "a1")
    assert info.value.base == "develop"
    assert not mirrors.worktree_path("op-x", "a1").exists()


@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_wrong_or_missing_token_is_a_clear_error(tmp_path: Path, repo: Repo, token: str) -> None:
    mirrors = Mirrors(tmp_path / "ws", SecretStr(token))
    with pytest.raises(AuthenticationFailed) as info:
        mirrors.checkout(repo.url, "main", "codeworker/x", "op-x", "a1")
    assert isinstance(info.value, GitError)
    assert "refused the token" in str(info.value)
    assert TOKEN not in str(info.value)
    if token:
        assert token not in str(info.value)


def test_second_checkout_fetches_instead_of_cloning(
    git_server: GitServer, mirrors: Mirrors, repo: Repo
) -> None:
    first = mirrors.checkout(repo.url, "main", "codeworker/a", "op-a", "a1")
    mirror = mirrors.mirror_path(repo.url)
    inode = mirror.stat().st_ino
    packs = set((mirror / "objects" / "pack").glob("*.pack"))
    assert packs

    # Nothing moved on the server: only the ref advertisement, no pack negotiation at all.
    start = len(git_server.requests)
    second = mirrors.checkout(repo.url, "main", "codeworker/b", "op-b", "a1")
    assert _requests_for(git_server, repo, start) == [
        ("GET", f"/{repo.owner}/{repo.name}.git/info/refs?service=git-upload-pack")
    ]

    # The base moved: an incremental fetch into the same mirror, earlier packs kept.
    moved = git_server.commit_on(repo.owner, repo.name, "main", {"new.txt": "n\n"}, "move base")
    third = mirrors.checkout(repo.url, "main", "codeworker/c", "op-c", "a1")
    assert third.base_commit == moved
    assert (third.path / "new.txt").read_text() == "n\n"
    assert mirror.stat().st_ino == inode
    assert packs < set((mirror / "objects" / "pack").glob("*.pack"))
    for wt in (first, second, third):
        wt.remove()


def test_a_fetch_begun_after_a_job_asked_serves_it_too(
    git_server: GitServer, mirrors: Mirrors, repo: Repo
) -> None:
    """Jobs queued on the mirror lock share the fetch that ran while they waited."""
    asked = time.time()
    mirrors.fetch(repo.url)
    start = len(git_server.requests)
    mirrors.fetch(repo.url, unless_fetched_since=asked)
    assert _requests_for(git_server, repo, start) == []

    moved = git_server.commit_on(repo.owner, repo.name, "main", {"new.txt": "n\n"}, "move base")
    worktree = mirrors.checkout(repo.url, "main", "codeworker/late", "op-late", "a1")
    assert worktree.base_commit == moved  # asked after the last fetch began: fetched again
    worktree.remove()

    # A recorded start later than now (the clock was set back) is not trusted.
    stamp = mirrors.mirror_path(repo.url) / FETCHED
    stamp.write_text(repr(time.time() + 3600))
    start = len(git_server.requests)
    mirrors.fetch(repo.url, unless_fetched_since=asked)
    assert _requests_for(git_server, repo, start) != []


def test_each_attempt_has_its_own_worktree_and_local_branch(mirrors: Mirrors, repo: Repo) -> None:
    crashed = mirrors.checkout(repo.url, "main", "codeworker/retry", "op-retry", "a1")
    (crashed.path / "junk.txt").write_text("half-done work\n")
    half_done = crashed.commit("half-done", *AUTHOR)

    retry = mirrors.checkout(repo.url, "main", "codeworker/retry", "op-retry", "a2")
    assert retry.path != crashed.path and retry.local_branch != crashed.local_branch
    assert not (retry.path / "junk.txt").exists()
    assert str(retry.repository().head.target) == retry.base_commit
    assert retry.commits() == []
    retry.remove()
    # The retry's cleanup leaves the other attempt's worktree and branch alone.
    assert (crashed.path / "junk.txt").exists()
    assert crashed.commits() == [half_done]
    mirrors.discard(repo.url, "op-retry", "codeworker/retry", "a1")
    assert not crashed.path.exists()
    mirror = pygit2.Repository(str(mirrors.mirror_path(repo.url)))
    assert [ref for ref in mirror.references if ref.startswith("refs/heads/codeworker/retry")] == []


def test_git_lock_files_left_by_a_killed_worker_are_cleared(mirrors: Mirrors, repo: Repo) -> None:
    mirrors.checkout(repo.url, "main", "codeworker/killed", "op-killed", "a1")
    mirror = mirrors.mirror_path(repo.url)
    leftovers = [mirror / "packed-refs.lock", mirror / "refs" / "remotes" / "origin" / "main.lock"]
    for path in leftovers:
        path.write_text("")

    retry = mirrors.checkout(repo.url, "main", "codeworker/killed", "op-killed", "a2")
    assert not any(path.exists() for path in leftovers)
    retry.remove()


@pytest.mark.parametrize(
    ("url", "branch", "operation_id"),
    [
        ("file:///etc/repo.git", "b", "op"),
        ("https://github.com/../../etc.git", "b", "op"),
        ("https://github.com/acme", "b", "op"),
        ("https://github.com/acme/repo.git", "bad..branch", "op"),
        ("https://github.com/acme/repo.git", "b", "../escape"),
        ("https://github.com/acme/repo.git", "b", "op/../../x"),
    ],
)
def test_unusable_inputs_are_refused_before_touching_disk(
    mirrors: Mirrors, url: str, branch: str, operation_id: str
) -> None:
    with pytest.raises(InvalidRepository):
        mirrors.checkout(url, "main", branch, operation_id, "a1")
    assert not (mirrors.root / "mirrors").exists()


# -- reading changes -----------------------------------------------------------------------------------


def test_changed_files_and_added_lines(worktree: Worktree) -> None:
    root = worktree.path
    (root / "src" / "app.py").write_text("def f():\n    return 2\n\nKEY = 'x'\n")
    (root / "old.txt").unlink()
    (root / "docs").mkdir()
    (root / "docs" / "new.md").write_text("one\ntwo")
    (root / "blob.bin").write_bytes(b"\x00\xff\xfeAKIA\nsecond\n")
    (root / ".gitignore").write_text("*.log\n")
    (root / "debug.log").write_text("ignored\n")

    assert worktree.changed_files() == [".gitignore", "blob.bin", "docs/new.md", "old.txt", "src/app.py"]
    added = worktree.added_lines()
    assert added["src/app.py"] == [(2, "    return 2"), (3, ""), (4, "KEY = 'x'")]
    assert added["docs/new.md"] == [(1, "one"), (2, "two")]
    assert added["blob.bin"] == [(1, "\x00\ufffd\ufffdAKIA"), (2, "second")]
    assert "old.txt" not in added
    assert "debug.log" not in added


def test_commit_stages_deletions_and_returns_none_when_clean(worktree: Worktree) -> None:
    assert worktree.commit("nothing", *AUTHOR) is None
    (worktree.path / "old.txt").unlink()
    (worktree.path / "added.txt").write_text("a\n")
    sha = worktree.commit("change", *AUTHOR)
    assert sha is not None
    assert worktree.commits() == [sha]
    assert worktree.changed_files() == []
    commit = worktree.repository()[sha]
    assert sorted(e.name for e in commit.tree) == ["README.md", "added.txt", "src"]
    assert commit.author.name == AUTHOR[0]
    assert commit.message == "change"
    assert worktree.commit("again", *AUTHOR) is None


# -- push ------------------------------------------------------------------------------------------


def test_pushed_branch_appears_on_server(git_server: GitServer, repo: Repo, worktree: Worktree) -> None:
    (worktree.path / "src" / "app.py").write_text("def f():\n    return 3\n")
    first = worktree.commit("first", *AUTHOR)
    (worktree.path / "later.txt").write_text("later\n")
    second = worktree.commit("second", *AUTHOR)
    start = len(git_server.requests)
    worktree.push()

    assert worktree.commits() == [first, second]
    assert git_server.ref_sha(repo.owner, repo.name, "codeworker/op-1") == second
    assert git_server.read_file(repo.owner, repo.name, "codeworker/op-1", "src/app.py") == (
        "def f():\n    return 3\n"
    )
    assert git_server.ref_sha(repo.owner, repo.name, "main") == worktree.base_commit
    push_posts = [
        r for r in git_server.requests[start:] if r.method == "POST" and r.path.endswith("/git-receive-pack")
    ]
    # libgit2 streams the pack chunked: the server's de-chunking is what made this push work.
    assert push_posts and push_posts[0].headers.get("Transfer-Encoding") == "chunked"


def test_the_mirror_keeps_no_reflog_that_jobs_would_race_on(
    git_server: GitServer, repo: Repo, worktree: Worktree
) -> None:
    (worktree.path / "new.txt").write_text("x\n")
    worktree.commit("add", "codeworker", "cw@example.com")
    worktree.push()
    mirror = worktree.git_dir.parent.parent
    assert not (mirror / "logs" / "refs" / "heads").exists()


def test_rejected_ref_raises_push_rejected(git_server: GitServer, repo: Repo, worktree: Worktree) -> None:
    git_server.reject_refs(repo.owner, repo.name, "refs/heads/codeworker/*")
    (worktree.path / "x.txt").write_text("x\n")
    worktree.commit("x", *AUTHOR)
    with pytest.raises(PushRejected) as info:
        worktree.push()
    assert info.value.ref == "refs/heads/codeworker/op-1"
    assert "not allowed" in info.value.message
    assert git_server.branches(repo.owner, repo.name) == ["main"]


def test_rerun_after_crash_pushes_over_its_own_earlier_branch(
    git_server: GitServer, mirrors: Mirrors, repo: Repo
) -> None:
    crashed = mirrors.checkout(repo.url, "main", "codeworker/rerun", "op-rerun", "a1")
    (crashed.path / "a.txt").write_text("attempt 1\n")
    crashed.commit("attempt 1", *AUTHOR)
    crashed.push()

    retry = mirrors.checkout(repo.url, "main", "codeworker/rerun", "op-rerun", "a2")
    assert retry.seen == crashed.commits()[-1]
    (retry.path / "a.txt").write_text("attempt 2\n")
    sha = retry.commit("attempt 2", *AUTHOR)
    retry.push()
    assert git_server.ref_sha(repo.owner, repo.name, "codeworker/rerun") == sha
    retry.remove()


def test_two_attempts_never_both_push(git_server: GitServer, mirrors: Mirrors, repo: Repo) -> None:
    """Each push expects the remote branch where its attempt saw it: the one that comes second
    finds it moved, and nothing of it reaches the remote."""
    first = mirrors.checkout(repo.url, "main", "codeworker/race", "op-race", "a1")
    second = mirrors.checkout(repo.url, "main", "codeworker/race", "op-race", "a2")
    assert first.seen is None and second.seen is None
    for attempt in (first, second):
        (attempt.path / "a.txt").write_text(f"{attempt.name}\n")
        attempt.commit(attempt.name, *AUTHOR)
    first.push()
    with pytest.raises(PushRejected) as info:
        second.push()
    assert "another attempt pushed it meanwhile" in info.value.message
    assert git_server.ref_sha(repo.owner, repo.name, "codeworker/race") == first.commits()[-1]

    third = mirrors.checkout(repo.url, "main", "codeworker/race", "op-race", "a3")
    (third.path / "a.txt").write_text("third\n")
    third.commit("third", *AUTHOR)
    git_server.commit_on(repo.owner, repo.name, "codeworker/race", {"b.txt": "b\n"}, "someone else")
    with pytest.raises(PushRejected):
        third.push()
    for attempt in (first, second, third):
        attempt.remove()


# -- merge -------------------------------------------------------------------------------------------


def test_merge_fast_forwards_when_base_did_not_move(
    git_server: GitServer, repo: Repo, worktree: Worktree
) -> None:
    (worktree.path / "feature.txt").write_text("feature\n")
    tip = worktree.commit("feature", *AUTHOR)
    worktree.push()
    new_base = worktree.merge_into_base("Merge", *AUTHOR)
    assert new_base == tip
    assert git_server.ref_sha(repo.owner, repo.name, "main") == tip
    assert git_server.parents(repo.owner, repo.name, "main") == [worktree.base_commit]


def test_merge_commit_when_base_moved(git_server: GitServer, repo: Repo, worktree: Worktree) -> None:
    (worktree.path / "feature.txt").write_text("feature\n")
    tip = worktree.commit("feature", *AUTHOR)
    moved = git_server.commit_on(repo.owner, repo.name, "main", {"other.txt": "other\n"}, "someone else")

    new_base = worktree.merge_into_base("Merge codeworker/op-1", *AUTHOR)
    assert git_server.ref_sha(repo.owner, repo.name, "main") == new_base
    assert git_server.parents(repo.owner, repo.name, new_base) == [moved, tip]
    assert git_server.read_file(repo.owner, repo.name, "main", "feature.txt") == "feature\n"
    assert git_server.read_file(repo.owner, repo.name, "main", "other.txt") == "other\n"


def test_merge_conflict_pushes_nothing(git_server: GitServer, repo: Repo, worktree: Worktree) -> None:
    (worktree.path / "README.md").write_text("ours\n")
    (worktree.path / "fine.txt").write_text("no conflict here\n")
    worktree.commit("ours", *AUTHOR)
    moved = git_server.commit_on(repo.owner, repo.name, "main", {"README.md": "theirs\n"}, "theirs")
    start = len(git_server.requests)

    with pytest.raises(MergeConflict) as info:
        worktree.merge_into_base("Merge", *AUTHOR)
    assert info.value.paths == ["README.md"]
    assert git_server.ref_sha(repo.owner, repo.name, "main") == moved
    assert git_server.branches(repo.owner, repo.name) == ["main"]
    assert not any("receive-pack" in path for _, path in _requests_for(git_server, repo, start))


# -- secrecy and cleanup -----------------------------------------------------------------------------


def test_token_is_never_in_urls_or_on_disk(git_server: GitServer, mirrors: Mirrors, repo: Repo) -> None:
    start = len(git_server.requests)
    wt = mirrors.checkout(repo.url, "main", "codeworker/secret", "op-secret", "a1")
    (wt.path / "f.txt").write_text("f\n")
    wt.commit("f", *AUTHOR)
    wt.push()
    wt.merge_into_base("Merge", *AUTHOR)

    mine = git_server.requests[start:]
    assert mine
    assert all(TOKEN not in r.path for r in mine)
    assert all("Authorization" in r.headers for r in mine)
    assert _files_containing(mirrors.root, TOKEN.encode()) == []
    assert TOKEN not in repr(mirrors)
    assert TOKEN not in repr(GitAuth(SecretStr(TOKEN)))
    assert TOKEN not in repr(GitAuth(TOKEN))
    wt.remove()


def test_credentials_in_a_url_are_not_stored(tmp_path: Path, git_server: GitServer, repo: Repo) -> None:
    mirrors = Mirrors(tmp_path / "ws", TOKEN)
    url_with_userinfo = repo.url.replace("http://", "http://someone:hunter2@")
    wt = mirrors.checkout(url_with_userinfo, "main", "codeworker/u", "op-u", "a1")
    assert _files_containing(mirrors.root, b"hunter2") == []
    assert mirrors.mirror_path(url_with_userinfo) == mirrors.mirror_path(repo.url)
    wt.remove()


def test_remove_leaves_nothing_behind(mirrors: Mirrors, repo: Repo) -> None:
    wt = mirrors.checkout(repo.url, "main", "codeworker/gone", "op-gone", "a1")
    (wt.path / "dirty.txt").write_text("uncommitted\n")
    wt.remove()
    wt.remove()  # idempotent

    assert not wt.path.exists()
    mirror = mirrors.mirror_path(repo.url)
    listing = subprocess.run(
        ["git", "worktree", "list", "--porcelain"], cwd=mirror, capture_output=True, text=True, check=True
    ).stdout
    assert listing.split("\n\n")[0].splitlines() == [f"worktree {mirror}", "bare"]
    assert listing.count("worktree ") == 1
    branches = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/heads/"],
        cwd=mirror,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "codeworker/gone" not in branches


# -- concurrency -------------------------------------------------------------------------------------


def test_concurrent_checkouts_from_threads(mirrors: Mirrors, repo: Repo) -> None:
    barrier = threading.Barrier(4)

    def checkout(i: int) -> Worktree:
        barrier.wait()
        return mirrors.checkout(repo.url, "main", f"codeworker/t{i}", f"op-t{i}", "a1")

    with ThreadPoolExecutor(4) as pool:
        worktrees = list(pool.map(checkout, range(4)))
    assert len({wt.path for wt in worktrees}) == 4
    assert all((wt.path / "README.md").read_text() == "hello\n" for wt in worktrees)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(Worktree.remove, worktrees))
    assert list((mirrors.root / "worktrees").iterdir()) == []


def test_concurrent_checkouts_from_processes(mirrors: Mirrors, repo: Repo) -> None:
    """Two worker processes sharing WORKSPACE_ROOT: the flock serialises mirror creation and fetch."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(2, mp_context=context) as pool:
        barrier = manager.Barrier(2)
        futures = [
            pool.submit(checkout_in_process, str(mirrors.root), repo.url, i, barrier) for i in range(2)
        ]
        results = [f.result(timeout=60) for f in futures]
    assert [text for _, text in results] == ["hello\n", "hello\n"]
    assert len({path for path, _ in results}) == 2
    mirror_repos = list((mirrors.root / "mirrors").rglob("*.git"))
    assert mirror_repos == [mirrors.mirror_path(repo.url)]
