"""A load run: many small jobs over a fleet of workers that are killed and stopped at random moments,
and the figures an operator asks of it (tests/test_load.py, ``make soak``)."""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis
from celery import Celery
from celery.result import AsyncResult
from celery.states import READY_STATES

from codeworker.loopback.waiting import wait_until
from codeworker.loopback.worker import get
from codeworker.worker import metrics
from tests.support.jobs import QUEUE, scripted_job
from tests.support.stalls import Fleet
from tests.support.worker import WorkerProcess


@dataclass(frozen=True)
class Disruption:
    """What happens to a worker once ``after`` results are in: ``SIGKILL`` or ``SIGTERM``."""

    after: int
    signal: str


def plan(jobs: int, kills: int, terms: int, rng: random.Random) -> list[Disruption]:
    """Moments drawn from the middle of the run (10 % to 85 % of the results in), when every worker
    still has jobs queued behind the ones it runs, so each disruption hits a busy worker."""
    low, high = max(1, jobs // 10), jobs * 85 // 100
    if high - low < kills + terms:
        raise ValueError(f"{jobs} jobs leave too few moments for {kills + terms} disruptions")
    moments = sorted(rng.sample(range(low, high), kills + terms))
    signals = ["SIGKILL"] * kills + ["SIGTERM"] * terms
    rng.shuffle(signals)
    return [Disruption(after, sig) for after, sig in zip(moments, signals, strict=True)]


def file_job(url: str, name: str, index: int) -> dict:
    """A job that adds one file of its own. The repository has no tests: its test command is
    ``true``, the cheapest one whose unchanged outcome verifies the refactor."""
    path = f"notes/job-{index:04d}.txt"
    return scripted_job(
        url,
        name,
        {"write": {path: f"job {index}\n"}},
        target_files=[path],
        approval_required=True,
        test_command="true",
    )


@dataclass
class Results:
    """The sent jobs' results as they arrive: one MGET of the result backend's keys per look, rather
    than one request per job."""

    client: Celery
    sent: dict[str, AsyncResult] = field(default_factory=dict)
    """Operation id -> its task."""
    arrived: dict[str, float] = field(default_factory=dict)
    """Operation id -> monotonic time its result was first seen."""

    def send(self, job: dict) -> None:
        self.sent[job["operation_id"]] = self.client.send_task("codeworker.refactor", args=[job], queue=QUEUE)

    def poll(self) -> int:
        """How many results are in."""
        waiting = [op for op in self.sent if op not in self.arrived]
        if waiting:
            backend = self.client.backend
            keys = [backend.get_key_for_task(self.sent[op].id) for op in waiting]
            now = time.monotonic()
            for op, raw in zip(waiting, backend.client.mget(keys), strict=True):
                if raw is not None and backend.decode_result(raw)["status"] in READY_STATES:
                    self.arrived[op] = now
        return len(self.arrived)

    def wait_for(self, count: int, stalled_after: float, timeout: float) -> None:
        """Until ``count`` results are in. TimeoutError once none arrived for ``stalled_after``
        seconds while some are missing: an interrupted job runs again within seconds, so the
        missing ones are lost, and the test says so without waiting out ``timeout``."""
        last = [self.poll(), time.monotonic()]

        def done() -> bool:
            arrived = self.poll()
            if arrived >= count:
                return True
            if arrived != last[0]:
                last[:] = [arrived, time.monotonic()]
            elif time.monotonic() - last[1] > stalled_after:
                raise TimeoutError(f"no result for {stalled_after} s with {arrived} of {count} in")
            return False

        wait_until(done, timeout=timeout, what=f"{count} results", interval=0.1)

    def missing(self) -> list[str]:
        return [op for op in self.sent if op not in self.arrived]

    def trail(self, fleet: Fleet, store: redis.Redis) -> str:
        """Why the jobs without a result are lost: where their messages are in the broker, what the
        workers (killed ones included) logged about them, and which worker received the jobs sent
        just before and after each (the queue is FIFO: its neighbours tell who popped it, when)."""
        order = list(self.sent)
        workers = fleet.killed + fleet.stopped + fleet.workers
        lines = []
        for op in self.missing():
            task = self.sent[op].id
            unacked = [tag for tag, raw in store.hgetall("unacked").items() if task in raw]
            queued = sum(task in raw for raw in store.lrange(QUEUE, 0, -1))
            index = order.index(op)
            lines.append(f"---- job {index} {op} (task {task}): queued {queued}, unacked {unacked}")
            for worker in workers:
                lines += [f"{worker.name}: {line}" for line in worker.lines if op in line or task in line]
            for neighbour in order[max(0, index - 3) : index + 4]:
                received = f"Task codeworker.refactor[{self.sent[neighbour].id}] received"
                seen = [(w.name, line[:40]) for w in workers for line in w.lines if received in line]
                lines.append(f"  job {order.index(neighbour)} received by {seen}")
        return "\n".join(lines)


@dataclass
class Hit:
    """One disruption as it happened: the worker, and the jobs it was running then."""

    disruption: Disruption
    worker: str
    at: float
    running: list[str]
    exit_status: int | None = None

    def __str__(self) -> str:
        # Wall-clock time, as the workers' log lines have it.
        wall = time.strftime("%H:%M:%S", time.gmtime(self.wall)) + f"{self.wall % 1:.3f}"[1:]
        return f"{wall} {self.disruption.signal} {self.worker} (running {self.running})"

    @property
    def wall(self) -> float:
        return time.time() - (time.monotonic() - self.at)

    def recovery(self, results: Results) -> list[float]:
        """Seconds from the hit to the result of each job it interrupted (0 for one whose result
        was already in: it had finished between the look at /status and the signal)."""
        return [max(0.0, results.arrived[op] - self.at) for op in self.running if op in results.arrived]


def log_trail(workers: list[WorkerProcess], operation_id: str, branch: str) -> list[str]:
    """The lines the workers logged about one operation: who received, ran, pushed it and when."""
    events = (
        "received",
        "stalled",
        "redelivered",
        "retried",
        "stage push",
        "stage pull_request",
        "completed",
    )
    return [
        f"{worker.name}: {line[:300]}"
        for worker in workers
        for line in worker.lines
        if (operation_id in line or branch in line) and any(event in line for event in events)
    ]


def disrupt(fleet: Fleet, disruption: Disruption, rng: random.Random) -> Hit:
    """Kill or stop a worker drawn at random, then start its replacement (a new machine)."""
    victim = rng.choice(fleet.workers)
    _, status = get(int(victim.env["PORT"]), "/status")
    running = [job["operation_id"] for job in status["active"] if job.get("operation_id")]
    hit = Hit(disruption, victim.name, time.monotonic(), running)
    if disruption.signal == "SIGKILL":
        fleet.kill(victim)
    else:
        hit.exit_status = fleet.terminate(victim)
    fleet.start()
    return hit


def finished_counts(metrics_dir: Path) -> Counter[str]:
    """``codeworker_jobs_finished`` by status as one worker counted it, read from its prometheus
    multiprocess directory (``<CODEWORKER_METRICS_DIR>/<main pid>``). Every process of the worker
    counts in a memory-mapped file of its own, so what a worker counted outlives it, SIGKILL or not."""
    counts: Counter[str] = Counter()
    for directory in sorted(metrics_dir.iterdir()) if metrics_dir.is_dir() else []:
        for family in metrics.registry_of(directory).collect():
            for sample in family.samples:
                if sample.name == "codeworker_jobs_finished_total":
                    counts[sample.labels["status"]] += int(sample.value)
    return counts


def figures(seconds: float, hits: list[Hit], tracker: Results, **counts: object) -> str:
    """The run's figures, one per line, for the test's log and ``make soak``."""
    jobs = len(tracker.sent)
    recoveries = [r for hit in hits for r in hit.recovery(tracker)]
    signals = Counter(hit.disruption.signal for hit in hits)
    recovery = (
        f"median {statistics.median(recoveries):.1f} s, worst {max(recoveries):.1f} s "
        f"(signal to result, over {len(recoveries)} interrupted jobs)"
        if recoveries
        else "no job was interrupted"
    )
    rows = {
        "jobs": jobs,
        "duration": f"{seconds:.1f} s ({jobs / seconds:.2f} jobs/s)",
        "kills": f"{signals['SIGKILL']} SIGKILL + {signals['SIGTERM']} SIGTERM, each worker replaced",
        "recovery": recovery,
        **{name.replace("_", " "): value for name, value in counts.items()},
    }
    return "load run\n" + "\n".join(f"  {name:<14}{value}" for name, value in rows.items())
