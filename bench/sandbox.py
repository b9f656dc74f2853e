"""What starting one sandboxed command costs, against a bare ``subprocess.run`` of the same command.

    .venv/bin/python -m bench.sandbox [--quick]

The command is ``/bin/true`` (nothing of its own to measure). The baseline is ``subprocess.run``;
codeworker runs it as every repository command runs (:meth:`Sandbox.run`): the allowlisted root,
``/etc`` (a copy with generated passwd and group, made at the sandbox's first command), the
checkout bound, prlimit, the namespaces, the bounded output reader. The figure is the difference of
the two medians, the time a sandbox adds to each command; its spread is the interquartile range of
the differences of interleaved pairs.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from bench import report
from bench.report import Figure, interleaved, median, spread
from codeworker.config import Settings
from codeworker.sandbox.bubblewrap import Mounts, Sandbox, check_sandbox

COMMAND = ["/bin/true"]

TARGET_MS = 5.0
"""Milliseconds a sandbox may add to a command (issue 16)."""


def figures(quick: bool) -> list[Figure]:
    repeat = 30 if quick else 200
    settings = Settings()
    check_sandbox(settings)
    with tempfile.TemporaryDirectory(prefix="cw-bench-sandbox-") as where:
        checkout = Path(where)
        sandbox = Sandbox(settings, checkout, Mounts(writable=(checkout,)))

        def sandboxed() -> None:
            assert sandbox.run(COMMAND).ok

        def bare() -> None:
            subprocess.run(COMMAND, cwd=checkout, check=True, capture_output=True)

        sandboxed()  # the sandbox's first command copies /etc; the page cache warms up
        bare()
        base, ours = interleaved(bare, sandboxed, repeat)
    base_ms = [seconds * 1000 for seconds in base]
    ours_ms = [seconds * 1000 for seconds in ours]
    added = median(ours_ms) - median(base_ms)
    return [
        Figure(
            name="sandboxed command, added ms",
            value=added,
            unit="ms",
            baseline=f"subprocess.run {COMMAND[0]}",
            baseline_value=median(base_ms),
            target=f"< {TARGET_MS:g} ms added",
            met=added < TARGET_MS,
            spread=spread([o - b for o, b in zip(ours_ms, base_ms, strict=True)]),
            repeat=repeat,
            note=(
                f"{COMMAND[0]} in the sandbox: median {median(ours_ms):.1f} ms (IQR {spread(ours_ms):.1f}), "
                f"bare: {median(base_ms):.1f} ms (IQR {spread(base_ms):.1f})"
            ),
        )
    ]


if __name__ == "__main__":
    report.main(figures, __doc__)
