"""What starting one sandboxed command costs, against a bare ``subprocess.run`` of the same command.

    .venv/bin/python -m bench.sandbox [--repeat 50]

The command is ``/bin/true`` (nothing of its own to measure). The baseline is ``subprocess.run``;
codeworker runs it as every repository command runs: the allowlisted root, a minimal ``/etc`` with
generated passwd and group, the checkout bound, prlimit, the namespaces, the bounded output reader.
Prints the medians (milliseconds), the spread (interquartile range) and the difference.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from codeworker.config import Settings
from codeworker.sandbox.bubblewrap import Mounts, Sandbox, check_sandbox

COMMAND = ["/bin/true"]


def milliseconds(action: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def spread(times: list[float]) -> float:
    quartiles = statistics.quantiles(times, n=4)
    return quartiles[2] - quartiles[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    repeat = parser.parse_args().repeat
    settings = Settings()
    check_sandbox(settings)
    with tempfile.TemporaryDirectory(prefix="cw-bench-sandbox-") as where:
        checkout = Path(where)
        sandbox = Sandbox(settings, checkout, Mounts(writable=(checkout,)))

        def sandboxed() -> None:
            assert sandbox.run(COMMAND).ok

        def bare() -> None:
            subprocess.run(COMMAND, cwd=checkout, check=True, capture_output=True)

        sandboxed()  # warm the page cache and the start-up probe
        bare()
        base, ours = [], []
        for _ in range(repeat):  # interleaved, so drifting load hits both alike
            base += milliseconds(bare, 1)
            ours += milliseconds(sandboxed, 1)
    b, o = statistics.median(base), statistics.median(ours)
    print(f"subprocess.run {COMMAND[0]}: median {b:.1f} ms (IQR {spread(base):.1f})")
    print(f"sandboxed      {COMMAND[0]}: median {o:.1f} ms (IQR {spread(ours):.1f})")
    print(f"added per command: {o - b:.1f} ms ({o / b:.1f}x)")


if __name__ == "__main__":
    main()
