"""What a job costs besides the model and the tests, against its floor.

    .venv/bin/python -m bench.pipeline [--quick]

One job after another through the whole pipeline in this process (claim, checkout, register,
lock, setup, baseline, execute, verify, scan, commit, push, pull request against the GitHub
stand-in, cleanup) with an executor that changes one line and a repository without tests, so
nothing but codeworker's own work is timed. The floor is the checkout floor, ``git worktree add``
of the same repository (about 5,000 files) from the same mirror. Prints the figure and the median
of each stage.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import defaultdict

from bench import report
from bench.checkout import generate_repo, worktree_floor
from bench.report import Figure, median, spread, timed
from bench.stands import stands
from codeworker.executors.base import Outcome, Workspace
from codeworker.models import Job
from codeworker.pipeline.run import Progress
from codeworker.pipeline.service import Pipeline

TARGET = 1.5
FILES = 5_000
CHANGED = "pkg/d000/module_00000.py"


class OneLine:
    """The no-op executor: one line appended to one file."""

    name = "one-line"

    def run(self, job: Job, workspace: Workspace) -> Outcome:
        path = workspace.root / CHANGED
        workspace.write_file(CHANGED, path.read_text() + f"# {job.operation_id}\n")
        return Outcome(summary="one line")


class StageClock:
    """Seconds from each stage's start to the next one's (the last stage ends with the job)."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self._current: tuple[str, float] | None = None

    def __call__(self, progress: Progress) -> None:
        now = time.perf_counter()
        self._close(now)
        self._current = (progress.stage, now)

    def _close(self, now: float) -> None:
        if self._current is not None:
            stage, started = self._current
            self.seconds[stage].append(now - started)
            self._current = None

    def end(self) -> None:
        self._close(time.perf_counter())


def figures(quick: bool = False) -> list[Figure]:
    repeat = 3 if quick else 7
    with stands("pipeline") as services:
        url = generate_repo(services.git, "overhead", FILES, services.root / "scratch")
        pipeline = dataclasses.replace(
            Pipeline.from_settings(services.settings()),
            resolve_executor=lambda name, operation_type: OneLine(),
        )
        mirror = pipeline.mirrors.mirror_path(url)
        clock = StageClock()

        def job() -> None:
            raw = {
                "description": "one line",
                "repository": {"url": url, "owner": "acme", "name": "overhead", "branch": "main"},
                "operation_id": f"op-{uuid.uuid4().hex[:12]}",
            }
            result = pipeline.run(raw, "refactor", clock)
            clock.end()
            assert result["status"] == "pr_open", result["error"]

        job()  # warms the mirror, the scanner and the sandbox probe
        clock.seconds.clear()
        ours: list[float] = []
        base: list[float] = []
        for n in range(repeat):
            base.append(worktree_floor(mirror, services.root / "floor" / str(n)))
            ours.append(timed(job))
    stages = ", ".join(f"{stage} {median(times) * 1000:.0f} ms" for stage, times in clock.seconds.items())
    ratio = median(ours) / median(base)
    return [
        Figure(
            name=f"pipeline overhead, {FILES:,} files, one-line change",
            value=median(ours),
            unit="s",
            baseline="git worktree add (the floor)",
            baseline_value=median(base),
            target=f"<= {TARGET}x",
            met=ratio <= TARGET,
            spread=spread(ours),
            repeat=repeat,
            note=f"stage medians: {stages}",
        )
    ]


if __name__ == "__main__":
    report.main(figures, __doc__)
