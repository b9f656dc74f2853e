"""A worker's memory: its peak resident set while it runs two jobs at once.

    .venv/bin/python -m bench.memory [--quick]

One real ``codeworker worker`` (prefork, 2 processes) runs two jobs at the same time, each the
``autofix`` executor (ruff, run in the sandbox) on a repository of 2,000 Python files, through the
whole pipeline against the loopback git server and the GitHub stand-in. The figure is the sum, over
the main process and its pool children, of the kernel's high-water mark of each (``VmHWM``), an
upper bound of the peak the worker held at any one moment; the baseline is the same sum on the
idle worker, read before the jobs after the counters are reset. Sandboxed commands are separate
processes (bubblewrap's children) and are not counted: their memory is the repository's own.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from celery import Celery

from bench import report
from bench.checkout import generate_repo
from bench.report import Figure
from bench.stands import QUEUE, stands

FILES = 2_000
MIB = 1024 * 1024


def worker_pids(leader: int) -> list[int]:
    """The worker's main process and its pool children."""
    children = Path(f"/proc/{leader}/task/{leader}/children").read_text().split()
    return [leader, *map(int, children)]


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def reset_peaks(pids: list[int]) -> None:
    """Set each process's VmHWM back to its current resident set (``clear_refs`` 5)."""
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def figures(quick: bool = False) -> list[Figure]:
    with (
        stands("memory") as services,
        services.worker("bench-memory") as worker,
        closing(Celery(broker=services.redis.url, backend=services.redis.url)) as client,
    ):
        assert worker.process is not None
        urls = [generate_repo(services.git, f"mem{n}", FILES, services.root / "scratch") for n in range(2)]
        pids = worker_pids(worker.process.pid)
        reset_peaks(pids)
        idle = sum(status_kib(pid, "VmRSS") for pid in pids)
        jobs = [
            client.send_task(
                "codeworker.refactor",
                args=[
                    {
                        "description": "format",
                        "repository": {"url": url, "owner": "acme", "name": f"mem{n}", "branch": "main"},
                        "executor": "autofix",
                        "target_files": ["pkg/d000/module_00000.py"],
                    }
                ],
                queue=QUEUE,
            )
            for n, url in enumerate(urls)
        ]
        results = [job.get(timeout=300) for job in jobs]
        peak = sum(status_kib(pid, "VmHWM") for pid in worker_pids(worker.process.pid))
    statuses = ", ".join(sorted(result["status"] for result in results))
    return [
        Figure(
            name=f"worker peak memory, 2 jobs at once ({FILES:,} files each)",
            value=peak * 1024 / MIB,
            unit="MiB",
            baseline="the idle worker",
            baseline_value=idle * 1024 / MIB,
            target="informative",
            met=None,
            note=f"main process and 2 pool children, sum of VmHWM; the jobs ended {statuses}",
        )
    ]


if __name__ == "__main__":
    report.main(figures, __doc__)
