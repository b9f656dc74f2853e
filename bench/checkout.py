"""Checkout cost per job: a shared bare mirror plus a worktree, against a fresh clone per job.

    .venv/bin/python -m bench.checkout [--jobs 10] [--files 400]

Both sides fetch over the same smart-HTTP server on loopback with the same token; the baseline is
what a worker without mirrors does (pygit2.clone_repository for every job). Prints the medians
and their ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pygit2
from pydantic import SecretStr

from codeworker.git.auth import GitAuth
from codeworker.git.mirrors import Mirrors
from codeworker.loopback.gitserver import GitServer

TOKEN = "bench-token-0123456789"


def sample_files(count: int) -> dict[str, str]:
    body = "".join(f"def function_{n}(value):\n    return value * {n}\n\n" for n in range(60))
    return {f"pkg/module_{i:04d}.py": f"# module {i}\n{body}" for i in range(count)}


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--files", type=int, default=400)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="cw-bench-"))
    server = GitServer(root / "remote", TOKEN)
    server.start()
    try:
        url = server.create_repo("acme", "big", sample_files(args.files))
        mirrors = Mirrors(root / "ws", SecretStr(TOKEN))

        def clone(n: int) -> None:
            target = root / "clones" / str(n)
            pygit2.clone_repository(url, str(target), callbacks=GitAuth(TOKEN))
            shutil.rmtree(target)

        def worktree(n: int) -> None:
            mirrors.checkout(url, "main", f"bench/{n}", f"bench-{n}", "a1").remove()

        worktree(-1)  # the first job of a machine clones the mirror; every later one only fetches
        baseline = [timed(lambda n=n: clone(n)) for n in range(args.jobs)]
        candidate = [timed(lambda n=n: worktree(n)) for n in range(args.jobs)]
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    base, cand = statistics.median(baseline), statistics.median(candidate)
    print(f"{args.files} files, {args.jobs} jobs each")
    print(f"fresh clone per job (baseline): median {base * 1000:.1f} ms")
    print(f"mirror fetch + worktree:        median {cand * 1000:.1f} ms")
    print(f"ratio baseline/mirror: {base / cand:.1f}x")


if __name__ == "__main__":
    main()
