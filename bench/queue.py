"""The queue: codeworker's tasks against a bare Celery task on the same broker and pool.

    .venv/bin/python -m bench.queue [--quick]

One real ``codeworker worker`` (prefork, 2 processes) that also imports this module, whose
``bench.noop`` task is the baseline: Celery alone, with codeworker's app settings (late acks,
prefetch of one, events). The no-op codeworker job is an operation that has already finished, sent
again by name from a plain Celery client: the task validates it, claims it in Redis, finds the
recorded result and answers it, as for a redelivery. Both are sent in batches to the same queue
and timed from the first send to the last result.

Then, for what a fleet of small jobs gets out of the machine: distinct jobs on one small
repository, each on a file of its own (``autofix``: ruff in the sandbox, pushed, a PR each), their rate
and how busy the CPUs were meanwhile (``/proc/stat``). Informative: no baseline does that work.
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path

from celery import Celery

from bench import report
from bench.report import Figure, median, spread
from bench.stands import QUEUE, stands
from codeworker.celery import app

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.8


@app.task(name="bench.noop")
def noop(job: dict) -> dict:
    """The baseline: a task that answers at once."""
    return {"operation_id": job["operation_id"], "status": "noop"}


def batch_rate(client: Celery, name: str, job: dict, jobs: int) -> float:
    """Jobs per second of ``jobs`` messages of task ``name``, first send to last result."""
    started = time.perf_counter()
    pending = [client.send_task(name, args=[job], queue=QUEUE) for _ in range(jobs)]
    for result in pending:
        result.get(timeout=120)
    return jobs / (time.perf_counter() - started)


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU since boot."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def small_jobs(client: Celery, url: str, jobs: int) -> tuple[float, float]:
    """Jobs per second of ``jobs`` distinct small jobs, and the CPUs' busy share meanwhile."""
    sent = [
        {
            "description": f"format app{n}.py",
            "repository": {"url": url, "owner": "acme", "name": "small", "branch": "main"},
            "executor": "autofix",
            "target_files": [f"app{n}.py"],
        }
        for n in range(jobs)
    ]
    busy, total = cpu_ticks()
    started = time.perf_counter()
    results = [
        result.get(timeout=600)
        for result in [client.send_task("codeworker.refactor", args=[job], queue=QUEUE) for job in sent]
    ]
    rate = jobs / (time.perf_counter() - started)
    busy_after, total_after = cpu_ticks()
    assert all(result["status"] == "pr_open" for result in results), results
    return rate, (busy_after - busy) / (total_after - total)


def figures(quick: bool = False) -> list[Figure]:
    jobs, repeat = (50, 3) if quick else (200, 5)
    with (
        stands("queue") as services,
        services.worker("bench-queue", pythonpath=[ROOT], celery_args=["--include", "bench.queue"]),
        closing(Celery(broker=services.redis.url, backend=services.redis.url)) as client,
    ):
        url = services.git.create_repo("acme", "queue", {"app.py": "X = 1\n"})
        job = {
            "description": "format",
            "repository": {"url": url, "owner": "acme", "name": "queue", "branch": "main"},
            "executor": "autofix",
            "operation_id": "op-bench-queue",
        }
        first = client.send_task("codeworker.refactor", args=[job], queue=QUEUE).get(timeout=120)
        assert first["operation_id"] == job["operation_id"], first
        batch_rate(client, "bench.noop", job, 10)  # warm both paths
        batch_rate(client, "codeworker.refactor", job, 10)
        base: list[float] = []
        ours: list[float] = []
        for _ in range(repeat):
            base.append(batch_rate(client, "bench.noop", job, jobs))
            ours.append(batch_rate(client, "codeworker.refactor", job, jobs))
        count = 10 if quick else 40
        files = {f"app{n}.py": "x = {  'a':1 }\n" for n in range(count)}
        small_rate, cpu = small_jobs(client, services.git.create_repo("acme", "small", files), count)
    ratio = median(ours) / median(base)
    return [
        Figure(
            name=f"queue, no-op jobs ({jobs} a batch, 2 processes)",
            value=median(ours),
            unit="jobs/s",
            baseline="bare Celery no-op task",
            baseline_value=median(base),
            target=f">= {TARGET}x",
            met=ratio >= TARGET,
            spread=spread(ours),
            repeat=repeat,
            note="an operation already finished, sent again: validate, claim, recorded result",
        ),
        Figure(
            name="small jobs on one repository, 2 processes",
            value=small_rate,
            unit="jobs/s",
            baseline="none (informative)",
            baseline_value=None,
            target="informative",
            met=None,
            note=f"autofix, each job its own file of one repository, a PR each; CPUs {cpu:.0%} busy",
        ),
    ]


if __name__ == "__main__":
    report.main(figures, __doc__)
