"""Every benchmark, one table: ``make bench`` (``.venv/bin/python -m bench [--quick] [--only NAME]``).

Each module measures codeworker against a baseline run in the same process and answers
:class:`~bench.report.Figure` rows; the table goes to the terminal and to ``bench/RESULTS.md``
(the README links it). Run after ``make test``'s set-up, one benchmark at a time, on an otherwise
idle machine: these are 2-core machines, and a figure taken beside another load says little.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.report import Figure, markdown, print_figures

BENCHMARKS = ("checkout", "pipeline", "queue", "locks", "secrets_scan", "sandbox", "tokens", "memory", "http")
"""The modules of ``bench/`` that answer ``figures(quick)``, in the order of the table."""

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def header(quick: bool, seconds: float) -> str:
    cpus = len(os.sched_getaffinity(0))
    return (
        "# Benchmark results\n\n"
        f"Written by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{cpus} CPUs, Python {platform.python_version()}, in {seconds / 60:.1f} minutes"
        f"{' (--quick: fewer repetitions)' if quick else ''}. Each value is the median of n repetitions "
        "interleaved with its baseline's, in the same run; the spread is their interquartile range. "
        "How each figure is measured: the docstring of its module in `bench/`.\n\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=BENCHMARKS, action="append", help="run only these")
    args = parser.parse_args()
    started = time.monotonic()
    rows: list[Figure] = []
    for name in args.only or BENCHMARKS:
        print(f"== {name}", flush=True)
        figures = importlib.import_module(f"bench.{name}").figures(args.quick)
        print_figures(figures)
        rows += figures
    print("\n== all")
    print_figures(rows)
    if not args.only:
        RESULTS.write_text(header(args.quick, time.monotonic() - started) + markdown(rows))
        print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
