"""The worker's HTTP server, asked over HTTP while a real prefork worker runs real jobs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from codeworker.loopback.redis_server import RedisServer, free_port
from codeworker.loopback.waiting import wait_until
from codeworker.loopback.worker import get
from tests.support.jobs import QUEUE, RESULT_TIMEOUT, new_repo, parked, run_job, scripted_job
from tests.support.worker import WorkerProcess


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
            assert family.name.endswith("_seconds"), family.name


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
