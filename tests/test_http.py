"""The worker's HTTP server, asked over HTTP while a real prefork worker runs real jobs, and under a
burst of concurrent scrapes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from codeworker.config import Settings
from codeworker.coordination.keys import Keys
from codeworker.coordination.registry import BranchRegistry
from codeworker.loopback.redis_server import RedisServer, free_port
from codeworker.loopback.waiting import wait_until
from codeworker.loopback.worker import get
from codeworker.models import OperationType
from codeworker.worker import metrics
from codeworker.worker.health import ConsumerHeartbeat, RedisPing
from codeworker.worker.http import HttpServer, WorkerState, create_app
from tests.support.jobs import QUEUE, RESULT_TIMEOUT, new_repo, parked, run_job, scripted_job
from tests.support.worker import WorkerProcess
from tests.test_metrics import worker_main


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and sorted labels."""
    status, text = get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(values: dict, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in values.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )


@pytest.fixture(scope="module")
def http_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def worker(
    worker_env: dict, http_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    env = {
        **worker_env,
        "PORT": str(http_port),
        "CODEWORKER_METRICS_DIR": str(tmp_path_factory.mktemp("metrics")),
        "CODEWORKER_HEALTH_PROBE_INTERVAL": "0.2",
    }
    process = WorkerProcess(env, name="http", concurrency=2).start()
    yield process
    assert process.stop() == 0


def active_in(port: int, stage: str, count: int) -> list[dict] | None:
    status, body = get(port, "/status")
    assert status == 200
    jobs = [job for job in body["active"] if job["stage"] == stage]
    return jobs if len(jobs) == count else None


def test_status_and_metrics_of_jobs_on_two_pool_processes(
    client: Celery, worker, http_port, git_server, tmp_path
):
    assert wait_until(lambda: get(http_port, "/health")[0] == 200, what="/health 200")
    # Before any job, every operation type and status is there at zero (rate() needs a series).
    idle = samples(http_port)
    for operation_type in OperationType:
        for status in metrics.JOB_STATUSES:
            labels = (("operation_type", operation_type.value), ("status", status))
            assert idle[("codeworker_jobs_finished_total", labels)] == 0, labels
    jobs = []
    for index in range(2):
        name, url = new_repo(git_server)
        gate = tmp_path / f"gate{index}"
        os.mkfifo(gate)
        jobs.append((gate, scripted_job(url, name, {"gate": str(gate), "write": {"NOTES.md": f"{index}\n"}})))
    pending = [client.send_task("codeworker.refactor", args=[job], queue=QUEUE) for _, job in jobs]

    with parked(jobs[0][0]), parked(jobs[1][0]):
        # Both jobs wait at their gate inside the executor: one in each pool child.
        running = wait_until(lambda: active_in(http_port, "execute", 2), what="two jobs in execute")
        assert {job["operation_id"] for job in running} == {job["operation_id"] for _, job in jobs}
        assert len({job["pid"] for job in running}) == 2
        for job in running:
            assert job["operation_type"] == "refactor"
            assert job["repository"].startswith(git_server.base_url)
            assert job["branch"].startswith("codeworker/refactor/")
            assert job["iteration"] == 0 and job["elapsed"] >= 0 and job["started_at"] > 0
        status = get(http_port, "/status")[1]
        # The worker's log says where any third start came from (seen once in a full run).
        assert status["concurrency"] == 2, status
        assert status["totals"]["started"] == 2, (status, "\n".join(worker.lines[-60:]))
        during = samples(http_port)
        assert total(during, "codeworker_jobs_active", operation_type="refactor") == 2
        assert total(during, "codeworker_worker_concurrency") == 2
        oldest = max(job["elapsed"] for job in running)
        assert total(during, "codeworker_job_oldest_running_seconds") >= oldest > 0
        # A full pool takes no message, probes included, and still counts as healthy.
        assert get(http_port, "/health")[0] == 200

    results = [result.get(timeout=RESULT_TIMEOUT) for result in pending]
    assert [result["status"] for result in results] == ["pr_open", "pr_open"], results
    invalid = run_job(client, {"description": "no repository"}, task="codeworker.error_fix")
    assert invalid["status"] == "invalid"

    after = samples(http_port)
    assert total(after, "codeworker_jobs_started_total") == 3
    assert total(after, "codeworker_jobs_started_total", operation_type="refactor") == 2
    assert total(after, "codeworker_jobs_finished_total", operation_type="refactor", status="pr_open") == 2
    assert total(after, "codeworker_jobs_finished_total", operation_type="error_fix", status="invalid") == 1
    assert total(after, "codeworker_job_duration_seconds_count") == 3
    assert total(after, "codeworker_jobs_active") == 0
    assert wait_until(lambda: active_in(http_port, "execute", 0) == [], what="no active jobs") is True
    assert total(samples(http_port), "codeworker_job_oldest_running_seconds") == 0
    assert total(after, "codeworker_jobs_redelivered_total") == 0
    totals = get(http_port, "/status")[1]["totals"]
    assert totals == {"started": 3, "finished": {"invalid": 1, "pr_open": 2}}


def test_metric_names_follow_prometheus_conventions(worker, http_port):
    status, text = get(http_port, "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("codeworker_"):
            continue
        assert family.type in ("counter", "gauge", "histogram"), family.name
        for sample in family.samples:
            assert "operation_id" not in sample.labels and "path" not in sample.labels
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
        if family.type == "histogram" and "iterations" not in family.name:
            assert family.name.endswith(("_seconds", "_ratio")), family.name


def test_the_server_answers_a_burst_of_concurrent_scrapes(redis_server, tmp_path):
    """50 scrapes of /metrics and 5 of /health sent at the same moment: every one is answered, the
    scrapes with complete Prometheus text, /health with a real Redis PING's verdict."""
    ping = RedisPing(redis_server.url, "mymaster")
    # A full pool counts as consuming, so /health's verdict is the PING's alone.
    heartbeat = ConsumerHeartbeat(lambda: None, saturated=lambda: True, interval=1, stale_after=5)
    state = WorkerState(
        hostname="burst",
        concurrency=2,
        health=lambda: heartbeat.check(ping()),
        active_jobs=list,
        registry=BranchRegistry(redis.Redis.from_url(redis_server.url), Keys()),
        started_at=time.time(),
    )
    paths = ["/metrics"] * 50 + ["/health"] * 5
    start = threading.Barrier(len(paths))

    def ask(path: str) -> tuple[str, int, Any]:
        start.wait(timeout=30)  # all at once, not as fast as one thread can send them
        return (path, *get(server.port, path))

    with worker_main(tmp_path / "metrics"):
        server = HttpServer(create_app(Settings(), state), "127.0.0.1", 0).start()
        try:
            with ThreadPoolExecutor(len(paths)) as pool:
                answers = list(pool.map(ask, paths))
        finally:
            server.stop()
            ping.close()

    assert [status for _, status, _ in answers] == [200] * len(paths)
    for path, _, body in answers:
        if path == "/health":
            assert body["ready"] is True and body["checks"]["redis"] == "ok", body
            continue
        exported = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
        }
        labels = (("operation_type", "refactor"), ("status", "pr_open"))
        assert exported[("codeworker_jobs_finished_total", labels)] == 0
        assert exported[("codeworker_worker_concurrency", ())] == 2


@pytest.fixture()
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, so stopping it disturbs no other test."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


def test_health_follows_redis_down_and_back(worker_env, private_redis, tmp_path):
    port = free_port()
    env = {
        **worker_env,
        "REDIS_URL": private_redis.url,
        "PORT": str(port),
        "CODEWORKER_METRICS_DIR": str(tmp_path / "metrics"),
        "CODEWORKER_HEALTH_PROBE_INTERVAL": "0.2",
        "CODEWORKER_HEALTH_STALE_AFTER": "5",
    }
    process = WorkerProcess(env, name="health", concurrency=1).start()
    try:
        _, body = wait_until(
            lambda: (answer := get(port, "/health"))[0] == 200 and answer, what="/health 200 at start"
        )
        assert body["checks"]["consumer"] == "consuming" and body["checks"]["redis"] == "ok"

        private_redis.stop()
        _, body = wait_until(
            lambda: (answer := get(port, "/health"))[0] == 503 and answer, what="/health 503"
        )
        assert body["ready"] is False and any("redis" in reason for reason in body["reasons"])
        # Restarting the worker would not bring Redis back: it stays live.
        assert get(port, "/health/live")[0] == 200

        private_redis.start()
        _, body = wait_until(
            lambda: (answer := get(port, "/health"))[0] == 200 and answer, what="/health 200 again"
        )
        # 200 again only once a probe went through Redis and back into the reconnected consumer.
        assert body["checks"]["consumer"] == "consuming"
        assert body["checks"]["last_probe_age"] <= 5
    finally:
        assert process.stop() == 0
