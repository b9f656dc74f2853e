"""One row of ``make bench``'s table, and the arithmetic every benchmark shares.

A benchmark module exposes ``figures(quick: bool) -> list[Figure]``; :mod:`bench.__main__` runs
them all and writes the table to ``bench/RESULTS.md``. Every figure is a ratio to a baseline
measured in the same run, from repetitions interleaved with the baseline's (these machines are
shared and noisy: medians, with the interquartile range as the spread).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One measured figure against its baseline and its target."""

    name: str
    """What was measured, e.g. "checkout, 5,000 files"."""
    value: float
    """The median of codeworker's repetitions, in ``unit``."""
    unit: str
    baseline: str
    """What the value is compared with, e.g. "git worktree add"."""
    baseline_value: float | None
    """The baseline's median in the same unit, or None when the target is absolute."""
    target: str
    """The goal in words, e.g. "<= 1.1x"."""
    met: bool | None
    """Whether the target is met; None when the figure has no target (informative)."""
    spread: float = 0.0
    """Interquartile range of the value's repetitions, in ``unit``."""
    repeat: int = 1
    note: str = ""
    """Why a target is not met, or what the figure leaves out."""

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def spread(samples: list[float]) -> float:
    """Interquartile range (0 for fewer than two samples)."""
    if len(samples) < 2:
        return 0.0
    quartiles = statistics.quantiles(samples, n=4)
    return quartiles[2] - quartiles[0]


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` took."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def interleaved(
    baseline: Callable[[], object], candidate: Callable[[], object], repeat: int
) -> tuple[list[float], list[float]]:
    """Seconds of each repetition of both, alternating, so drifting load hits both alike."""
    base: list[float] = []
    ours: list[float] = []
    for _ in range(repeat):
        base.append(timed(baseline))
        ours.append(timed(candidate))
    return base, ours


COLUMNS = ("figure", "value", "baseline", "ratio", "target", "met", "spread (IQR)", "n")


def _number(value: float, unit: str) -> str:
    if unit == "s" and value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.3g} {unit}".strip()


def row(figure: Figure) -> tuple[str, ...]:
    baseline = figure.baseline
    if figure.baseline_value is not None:
        baseline = f"{baseline}: {_number(figure.baseline_value, figure.unit)}"
    ratio = f"{figure.ratio:.2f}x" if figure.ratio is not None else ""
    met = {True: "yes", False: "NO", None: ""}[figure.met]
    return (
        figure.name,
        _number(figure.value, figure.unit),
        baseline,
        ratio,
        figure.target,
        met,
        _number(figure.spread, figure.unit),
        str(figure.repeat),
    )


def markdown(figures: list[Figure]) -> str:
    """The table as GitHub-flavoured Markdown, with each figure's note under it."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row(figure)) + " |" for figure in figures]
    notes = [f"- **{figure.name}**: {figure.note}" for figure in figures if figure.note]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def print_figures(figures: list[Figure]) -> None:
    """The table on a terminal: one aligned line per figure, then the figures' notes."""
    rows = [COLUMNS, *map(row, figures)]
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(COLUMNS))]
    for cells in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
    for figure in figures:
        if figure.note:
            print(f"- {figure.name}: {figure.note}")


def main(figures: Callable[[bool], list[Figure]], doc: str | None) -> None:
    """A benchmark module run alone (``python -m bench.<name> [--quick]``): its table."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    print_figures(figures(parser.parse_args().quick))
