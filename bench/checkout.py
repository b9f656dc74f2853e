"""Checkout cost per job: a fetch of the warm mirror plus a worktree, against its floor.

    .venv/bin/python -m bench.checkout [--quick]

On generated repositories of about 5,000 and 50,000 files served by the loopback smart-HTTP
server. The floor is ``git worktree add`` from the same mirror: writing the files, which no
checkout avoids. The other baseline is what a worker without mirrors does, a fresh clone over the
same server with the same token (pygit2.clone_repository). Every repetition runs all three in turn.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pygit2
from pydantic import SecretStr

from bench import report
from bench.report import Figure, median, spread, timed
from bench.stands import TOKEN
from codeworker.config import Settings
from codeworker.git.auth import GitAuth
from codeworker.git.mirrors import Mirrors
from codeworker.loopback.gitserver import GitServer

TARGET = 1.1
"""The checkout's time over the floor's."""


def generate_repo(server: GitServer, name: str, files: int, scratch: Path) -> str:
    """A repository of ``files`` small Python files in directories of 100, served as acme/``name``;
    its clone URL. Built with git in a scratch tree (one commit), then cloned bare into place."""
    tree = scratch / name
    body = "".join(f"def function_{n}(value):\n    return value * {n}\n\n" for n in range(20))
    for i in range(files):
        path = tree / "pkg" / f"d{i // 100:03d}" / f"module_{i:05d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# module {i}\n{body}")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(tree)], check=True)
    subprocess.run([*git, "-C", str(tree), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(tree), "commit", "-q", "-m", "generated"], check=True)
    bare = server.repo_path("acme", name)
    bare.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(tree), str(bare)], check=True)
    subprocess.run(["git", "-C", str(bare), "config", "http.receivepack", "true"], check=True)
    shutil.rmtree(tree)
    return server.url("acme", name)


def worktree_floor(mirror: Path, target: Path) -> float:
    """Seconds ``git worktree add`` of the mirror's main takes at ``target`` (removed after)."""
    git = ["git", "-C", str(mirror), "worktree"]
    seconds = timed(
        lambda: subprocess.run([*git, "add", "-q", "--detach", str(target), "origin/main"], check=True)
    )
    subprocess.run([*git, "remove", "--force", str(target)], check=True)
    return seconds


def measure(files: int, repeat: int, clones: int, root: Path, server: GitServer) -> list[Figure]:
    name = f"gen{files}"
    url = generate_repo(server, name, files, root / "scratch")
    # The worker's default size limit, so the checkout's size check is timed too.
    limit = Settings.model_fields["max_repo_bytes"].default
    mirrors = Mirrors(root / "ws", SecretStr(TOKEN), max_repo_bytes=limit)
    mirrors.checkout(url, "main", "bench/warm", "bench-warm", "a1").remove()  # the mirror is warm
    mirror = mirrors.mirror_path(url)
    ours: list[float] = []
    floor: list[float] = []
    fresh: list[float] = []
    for n in range(repeat):
        ours.append(timed(lambda n=n: mirrors.checkout(url, "main", f"bench/{n}", f"bench-{n}", "a1")))
        mirrors.discard(url, f"bench-{n}", f"bench/{n}", "a1")
        floor.append(worktree_floor(mirror, root / "floor" / str(n)))
        if n < clones:
            clone = root / "clones" / str(n)
            fresh.append(
                timed(lambda clone=clone: pygit2.clone_repository(url, str(clone), callbacks=GitAuth(TOKEN)))
            )
            shutil.rmtree(clone)
    what = f"checkout, {files:,} files"
    ratio = median(ours) / median(floor)
    return [
        Figure(
            name=what,
            value=median(ours),
            unit="s",
            baseline="git worktree add (the floor)",
            baseline_value=median(floor),
            target=f"<= {TARGET}x",
            met=ratio <= TARGET,
            spread=spread(ours),
            repeat=repeat,
            note="mirror fetch (nothing new), size check and git worktree add, per job",
        ),
        Figure(
            name=f"{what}, fresh clone per job",
            value=median(ours),
            unit="s",
            baseline="fresh clone over loopback smart-HTTP",
            baseline_value=median(fresh),
            target="informative",
            met=None,
            spread=spread(fresh),
            repeat=len(fresh),
        ),
    ]


def figures(quick: bool = False) -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="cw-bench-checkout-"))
    server = GitServer(root / "remote", TOKEN)
    server.start()
    try:
        results = measure(5_000, 3 if quick else 7, 2 if quick else 3, root, server)
        results += measure(50_000, 2 if quick else 5, 1 if quick else 2, root, server)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return results


if __name__ == "__main__":
    report.main(figures, __doc__)
