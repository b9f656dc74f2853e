"""The functions the pipeline calls, recorded by separate real processes and read as one worker's
/metrics would read them (prometheus_client multiprocess mode)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from codeworker.worker import metrics

RECORD = textwrap.dedent(
    """
    import sys
    from codeworker.worker import metrics
    from codeworker.models import Usage
    from codeworker.secrets.findings import SecretFinding

    finding = dict(path="a.py", line=1, rule="aws", redacted="AKIA****")
    metrics.job_started("refactor", redelivered=True)
    metrics.stage_duration("checkout", 0.2)
    metrics.stage_duration("execute", 3.0)
    metrics.lock_wait("refactor", 0.01, "acquired")
    metrics.lock_wait("refactor", 1.5, "conflict")
    metrics.secret_scan(
        [SecretFinding(severity="HIGH", **finding), SecretFinding(severity="MEDIUM", **finding)],
        [SecretFinding(severity="HIGH", **finding)],
    )
    usage = Usage(input_tokens=100, output_tokens=20, cache_read_tokens=5, cost_usd=0.25)
    metrics.model_usage("claude-sonnet-4-5", usage)
    metrics.agent_iterations("refactor", 2)
    metrics.push_failed("refactor")
    metrics.pull_request_failed("refactor")
    if sys.argv[1] == "finish":
        metrics.job_finished("refactor", "pr_open", 4.0)
    else:
        print("running", flush=True)
        sys.stdin.read()  # killed while the job "runs"
    """
)


def record(directory: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RECORD, mode],
        env={**os.environ, metrics.MULTIPROC_ENV: str(directory)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_every_process_counts_and_a_killed_one_stops_counting_as_active(tmp_path, monkeypatch):
    directory = tmp_path / "metrics"
    directory.mkdir()
    finished = [record(directory, "finish") for _ in range(2)]
    for process in finished:
        assert process.wait(timeout=60) == 0
    killed = record(directory, "kill")
    assert killed.stdout.readline() == "running\n"

    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(directory))
    while_running = _samples()
    assert while_running[("codeworker_jobs_active", (("operation_type", "refactor"),))] == 1
    killed.kill()
    killed.wait(timeout=30)
    values = _samples()

    # Live gauges of exited processes (finished or killed) no longer count.
    assert values.get(("codeworker_jobs_active", (("operation_type", "refactor"),)), 0) == 0
    assert values[("codeworker_jobs_started_total", (("operation_type", "refactor"),))] == 3
    assert values[("codeworker_jobs_redelivered_total", (("operation_type", "refactor"),))] == 3
    assert (
        values[("codeworker_jobs_finished_total", (("operation_type", "refactor"), ("status", "pr_open")))]
        == 2
    )
    assert values[("codeworker_job_duration_seconds_sum", (("operation_type", "refactor"),))] == 8.0
    assert values[("codeworker_stage_duration_seconds_count", (("stage", "execute"),))] == 3
    assert values[("codeworker_lock_wait_seconds_count", (("outcome", "conflict"),))] == 3
    assert values[("codeworker_lock_conflicts_total", (("operation_type", "refactor"),))] == 3
    assert values[("codeworker_secret_findings_total", (("severity", "HIGH"),))] == 3
    assert values[("codeworker_secret_findings_total", (("severity", "MEDIUM"),))] == 3
    assert values[("codeworker_secret_blocks_total", (("severity", "HIGH"),))] == 3
    assert values[("codeworker_model_tokens_total", (("kind", "input"),))] == 300
    assert values[("codeworker_model_tokens_total", (("kind", "output"),))] == 60
    assert values[("codeworker_model_tokens_total", (("kind", "cache_read"),))] == 15
    assert ("codeworker_model_tokens_total", (("kind", "cache_write"),)) not in values
    assert values[("codeworker_model_cost_usd_total", (("model", "claude-sonnet-4-5"),))] == pytest.approx(
        0.75
    )
    assert values[("codeworker_agent_iterations_sum", (("operation_type", "refactor"),))] == 6
    assert values[("codeworker_push_failures_total", (("operation_type", "refactor"),))] == 3
    assert values[("codeworker_pull_request_failures_total", (("operation_type", "refactor"),))] == 3
    assert metrics.totals() == {"started": 3, "finished": {"pr_open": 2}}


def test_use_directory_starts_empty(tmp_path, monkeypatch):
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"left over by an earlier worker with our pid")
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "unused")
    original = metrics.values.ValueClass
    try:
        assert metrics.use_directory(directory) == directory
        assert list(directory.iterdir()) == []
    finally:
        metrics.values.ValueClass = original


def _samples() -> dict:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_worker_gauges_report_the_pool_size_and_the_oldest_running_job():
    def gauges(started_at: list[float]) -> dict[str, float]:
        body, _ = metrics.render(metrics.WorkerGauges(3, started_at))
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name.startswith(("codeworker_worker_", "codeworker_job_oldest"))
        }

    now = time.time()
    busy = gauges([now - 5, now - 100])
    assert busy["codeworker_worker_concurrency"] == 3
    assert 100 <= busy["codeworker_job_oldest_running_seconds"] < 200
    assert gauges([])["codeworker_job_oldest_running_seconds"] == 0
