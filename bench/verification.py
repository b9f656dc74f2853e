"""What verification costs a job on the demo repository (demo/sample_bug), against its floor.

    .venv/bin/python -m bench.verification [--repeat 5]

The floor is what a worker that trusted one run before and one after would pay: two sandboxed runs
of the test command. codeworker's verification adds the rerun of the tests failing at baseline
(flaky detection) and, for a feature or an error fix without a failing test, the new tests' run on
the base code (a scratch copy of the checkout). Measured for the demo's error fix (the failing
test gets fixed) and for a feature on the same repository (a new function and its new test).
Prints the medians (seconds), the spread and the ratio to the floor.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from pydantic import SecretStr

from codeworker.config import Settings
from codeworker.coordination.keys import Keys
from codeworker.coordination.locks import FileLocks
from codeworker.git.mirrors import Mirrors
from codeworker.loopback.gitserver import GitServer
from codeworker.models import Job, parse_job
from codeworker.sandbox.checkout import Checkout
from codeworker.verification.verifier import Verifier

TOKEN = "bench-token-0123456789"
SAMPLE = Path(__file__).resolve().parent.parent / "demo" / "sample_bug"
CART = "pricing/cart.py"
FIX = ("return round(total - total * percent, 2)", "return round(total - total * percent / 100, 2)")
FEATURE_CODE = "\n\ndef double(value):\n    return value * 2\n"
FEATURE_TEST = "from pricing.cart import double\n\n\ndef test_double():\n    assert double(2) == 4\n"


def seconds(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class Bench:
    def __init__(self, root: Path) -> None:
        self.server = GitServer(root / "remote", TOKEN)
        self.server.start()
        files = {str(p.relative_to(SAMPLE)): p.read_text() for p in SAMPLE.rglob("*") if p.is_file()}
        self.url = self.server.create_repo("acme", "pricing", files)
        self.settings = Settings(
            workspace_root=root / "ws", cache_root=root / "cache", github_token=SecretStr(TOKEN)
        )
        self.mirrors = Mirrors(self.settings.workspace_root, self.settings.github_token)
        # The bench writes the checkout directly: no lock is ever taken, so no Redis is reached.
        self.unused = redis.Redis(port=1)
        self.count = 0

    def open(self, operation_type: str) -> tuple[Job, Checkout, Callable[[], None]]:
        self.count += 1
        job = parse_job(
            {"description": "bench", "repository": {"url": self.url}},
            operation_type=operation_type,
            allowed_repos=[self.server.base_url],
            max_iterations_cap=10,
        )
        worktree = self.mirrors.checkout(self.url, "main", f"bench/{self.count}", f"bench-{self.count}", "a1")
        locks = FileLocks(self.unused, Keys(), "bench", job.operation_id, 30)
        box = Checkout(worktree, locks, self.settings, job.test_command)

        def close() -> None:
            box.close()
            worktree.remove()

        return job, box, close

    def floor(self) -> float:
        job, box, close = self.open("error_fix")
        try:
            verifier = Verifier(job, box)
            return seconds(verifier.run_tests) + seconds(verifier.run_tests)
        finally:
            close()

    def error_fix(self) -> float:
        job, box, close = self.open("error_fix")
        try:
            verifier = Verifier(job, box)
            spent = seconds(verifier.baseline)
            cart = box.root / CART
            cart.write_text(cart.read_text().replace(*FIX))
            spent += seconds(lambda: _verified(verifier))
            return spent
        finally:
            close()

    def feature(self) -> float:
        job, box, close = self.open("feature_implementation")
        try:
            cart = box.root / CART
            cart.write_text(cart.read_text().replace(*FIX))  # a green suite before the feature
            verifier = Verifier(job, box)
            spent = seconds(verifier.baseline)
            cart.write_text(cart.read_text() + FEATURE_CODE)
            (box.root / "tests" / "test_double.py").write_text(FEATURE_TEST)
            spent += seconds(lambda: _verified(verifier))
            return spent
        finally:
            close()


def _verified(verifier: Verifier) -> None:
    verdict = verifier.verify()
    if not verdict.verified:
        raise SystemExit(f"the bench's change was not verified: {verdict.reasons}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bench = Bench(Path(tempfile.mkdtemp(prefix="cw-bench-")))
    try:
        runs: dict[str, list[float]] = {"floor (2 runs)": [], "error fix": [], "feature": []}
        for _ in range(args.repeat):  # interleaved, so a busy moment hits every figure alike
            runs["floor (2 runs)"].append(bench.floor())
            runs["error fix"].append(bench.error_fix())
            runs["feature"].append(bench.feature())
        floor = statistics.median(runs["floor (2 runs)"])
        for name, values in runs.items():
            median = statistics.median(values)
            print(
                f"{name:<16} median {median:6.2f} s  spread {min(values):.2f}-{max(values):.2f} s  "
                f"{median / floor:.2f}x the floor"
            )
    finally:
        bench.server.stop()


if __name__ == "__main__":
    main()
