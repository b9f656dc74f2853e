"""The worker's HTTP server under a burst of Prometheus scrapes: 50 GET /metrics at the same moment.

    .venv/bin/python -m bench.http [--quick]

The server runs in a process of its own, set up as a worker's main process is after a few jobs
(``use_directory``, every known series at zero, one job of each type counted) and serving
``codeworker.worker.http``'s app with :class:`~codeworker.worker.http.HttpServer`. Each round sends
10 scrapes one after another (the baseline: a scrape on an idle server), then 50 at once (released
together by a barrier). Figures: the latency of a scrape (median and 95th percentile, from the
request to the last byte of the answer), and how far the server's peak resident memory rose above
what it held before (the kernel's high-water mark, reset before each phase). The targets are
informative: "all 200" is met when every scrape was answered with 200.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import report
from bench.report import Figure, median, spread
from codeworker.config import Settings
from codeworker.coordination.keys import Keys
from codeworker.coordination.registry import BranchRegistry
from codeworker.models import OperationType
from codeworker.worker import metrics
from codeworker.worker.bootsteps import STAGES
from codeworker.worker.health import Health
from codeworker.worker.http import HttpServer, WorkerState, create_app

ROOT = Path(__file__).resolve().parent.parent
CONCURRENT = 50
SEQUENTIAL = 10
"""Scrapes one at a time in each round, before its burst."""

MIB = 1024 * 1024


# -- the server's process -------------------------------------------------------------------------


def serve(directory: Path) -> None:
    """Serve until standard input closes; the port goes to standard output."""
    # waitress warns of every request that waits for a thread; here they wait by design.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    settings = Settings()
    metrics.use_directory(directory)
    metrics.export_zeros(settings.model, [stage.__name__ for stage in STAGES])
    for kind in OperationType:
        metrics.job_started(kind)
        for stage in STAGES:
            metrics.stage_duration(stage.__name__, 1.5)
        metrics.job_finished(kind, "pr_open", 95.0)
    state = WorkerState(
        hostname="bench",
        concurrency=2,
        health=lambda: Health(live=True, ready=True),
        active_jobs=list,
        # Only the webhook reads the registry, and nothing posts to it: no Redis is reached.
        registry=BranchRegistry(redis.Redis(port=1), Keys()),
        started_at=time.time(),
    )
    server = HttpServer(create_app(settings, state), "127.0.0.1", 0).start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()


@dataclass(frozen=True)
class Server:
    pid: int
    port: int

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise RuntimeError(f"{field} is not in /proc/{self.pid}/status")

    def rss(self) -> float:
        return self._status_kib("VmRSS") * 1024 / MIB

    def peak(self) -> float:
        return self._status_kib("VmHWM") * 1024 / MIB

    def reset_peak(self) -> None:
        """The high-water mark starts again from the present resident size (Linux ``clear_refs``)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")


@contextmanager
def server_process(directory: Path) -> Iterator[Server]:
    with subprocess.Popen(
        [sys.executable, "-m", "bench.http", "--serve", str(directory)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        try:
            yield Server(process.pid, int(process.stdout.readline()))
        finally:
            process.stdin.close()
            process.wait(timeout=30)


# -- the scrapes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    seconds: float
    status: int
    size: int


def scrape(port: int) -> Scrape:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    return Scrape(time.perf_counter() - started, response.status, len(body))


def burst(port: int, size: int) -> list[Scrape]:
    """``size`` scrapes sent together: each thread waits at the barrier until all are ready."""
    together = threading.Barrier(size)

    def one(_: int) -> Scrape:
        together.wait()
        return scrape(port)

    with ThreadPoolExecutor(size) as pool:
        return list(pool.map(one, range(size)))


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[18]


def figures(quick: bool) -> list[Figure]:
    rounds = 3 if quick else 10
    with (
        tempfile.TemporaryDirectory(prefix="cw-bench-http-") as scratch,
        server_process(Path(scratch) / "metrics") as server,
    ):
        for _ in range(SEQUENTIAL):  # the first answers load what every later one uses
            scrape(server.port)
        before = server.rss()
        server.reset_peak()
        sequential = [scrape(server.port) for _ in range(SEQUENTIAL)]
        sequential_growth = server.peak() - before
        server.reset_peak()
        concurrent = burst(server.port, CONCURRENT)
        for _ in range(rounds - 1):  # interleaved, so drifting load hits both alike
            sequential += [scrape(server.port) for _ in range(SEQUENTIAL)]
            concurrent += burst(server.port, CONCURRENT)
        concurrent_growth = server.peak() - before

    answered = all(s.status == 200 for s in sequential + concurrent)
    alone = [s.seconds for s in sequential]
    together = [s.seconds for s in concurrent]
    return [
        Figure(
            name=f"/metrics, {CONCURRENT} scrapes at once: median latency",
            value=median(together),
            unit="s",
            baseline="one scrape at a time",
            baseline_value=median(alone),
            target="all 200",
            met=answered,
            spread=spread(together),
            repeat=len(together),
            note=(
                f"{len(together)} scrapes in {rounds} bursts of {CONCURRENT}, {len(alone)} one at a "
                f"time; {concurrent[0].size / 1024:.0f} KiB each"
            ),
        ),
        Figure(
            name=f"/metrics, {CONCURRENT} scrapes at once: 95th percentile latency",
            value=p95(together),
            unit="s",
            baseline="one scrape at a time",
            baseline_value=p95(alone),
            target="all 200",
            met=answered,
            repeat=len(together),
        ),
        Figure(
            name=f"/metrics, {CONCURRENT} scrapes at once: server's peak memory growth",
            value=concurrent_growth,
            unit="MiB",
            baseline="one scrape at a time",
            baseline_value=sequential_growth,
            target="all 200",
            met=answered,
            repeat=rounds,
            note=f"resident before: {before:.1f} MiB; growth = peak resident size - that",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--serve", type=Path, metavar="METRICS_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
    else:
        report.print_figures(figures(args.quick))


if __name__ == "__main__":
    main()
