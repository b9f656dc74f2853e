"""The functions the pipeline calls, recorded by separate real processes and read as one worker's
/metrics would read them (prometheus_client multiprocess mode)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from codeworker.models import OperationType, Status, Usage
from codeworker.worker import metrics, signals

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
    # Once per job: 5 of the 105 input tokens came from the cache.
    ratio = (("model", "claude-sonnet-4-5"),)
    assert values[("codeworker_model_cache_hit_ratio_count", ratio)] == 3
    assert values[("codeworker_model_cache_hit_ratio_sum", ratio)] == pytest.approx(3 * 5 / 105)
    assert values[("codeworker_model_cache_hit_ratio_bucket", (("le", "0.1"), *ratio))] == 3
    assert values[("codeworker_agent_iterations_sum", (("operation_type", "refactor"),))] == 6
    assert values[("codeworker_push_failures_total", (("operation_type", "refactor"),))] == 3
    assert values[("codeworker_pull_request_failures_total", (("operation_type", "refactor"),))] == 3
    assert metrics.totals() == {"started": 3, "finished": {"pr_open": 2}}


def test_a_scrape_while_a_process_creates_its_metrics_file_answers(tmp_path, monkeypatch):
    directory = tmp_path / "metrics"
    directory.mkdir()
    assert record(directory, "finish").wait(timeout=60) == 0
    # What a process that has opened its file but not yet sized it leaves for an instant.
    (directory / "counter_4242.db").touch()
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(directory))

    assert _samples()[("codeworker_jobs_started_total", (("operation_type", "refactor"),))] == 1
    assert metrics.totals()["started"] == 1


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


WORKER_MAIN = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from codeworker.worker import bootsteps, metrics

    # What the worker's main process does at start; then, maybe, one pool child runs one job.
    metrics.use_directory(Path(sys.argv[1]))
    metrics.export_zeros("claude-sonnet-4-6", [stage.__name__ for stage in bootsteps.STAGES])
    if sys.argv[2] == "one job":
        child = os.fork()
        if child == 0:
            metrics.job_started("refactor")
            metrics.job_finished("refactor", "pr_open", 3.0)
            os._exit(0)
        assert os.waitpid(child, 0)[1] == 0
    print("started", flush=True)
    sys.stdin.read()  # alive, as a worker's main process is while it is scraped
    """
)


@contextmanager
def worker_main(directory: Path, jobs: str = "no job") -> Iterator[None]:
    """A process that starts its metrics as a worker's main process does, alive until the end of the
    ``with`` block; this process reads the directory as its /metrics would."""
    with subprocess.Popen(
        [sys.executable, "-c", WORKER_MAIN, str(directory), jobs],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline() == "started\n"
        try:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv(metrics.MULTIPROC_ENV, str(directory))
                yield
        finally:
            process.stdin.close()
            assert process.wait(timeout=30) == 0


def test_an_idle_worker_exports_every_known_series_at_zero(tmp_path):
    with worker_main(tmp_path / "metrics"):
        values = _samples()
        totals = metrics.totals()

    types = [kind.value for kind in OperationType]
    for operation_type in [*types, "follow_up"]:
        of_type = (("operation_type", operation_type),)
        for status in [*Status, signals.REQUEUED, "retry"]:
            key = ("codeworker_jobs_finished_total", (*of_type, ("status", status)))
            assert values[key] == 0, key
        for name in (
            "codeworker_jobs_started_total",
            "codeworker_jobs_active",
            "codeworker_jobs_redelivered_total",
            "codeworker_job_duration_seconds_count",
        ):
            assert values[(name, of_type)] == 0, (name, operation_type)
    for trigger in ("comment", "review", "checks", "issue"):
        assert values[("codeworker_github_triggers_total", (("trigger", trigger),))] == 0
    for operation_type in types:
        of_type = (("operation_type", operation_type),)
        for name in (
            "codeworker_lock_conflicts_total",
            "codeworker_push_failures_total",
            "codeworker_pull_request_failures_total",
            "codeworker_agent_iterations_count",
        ):
            assert values[(name, of_type)] == 0, (name, operation_type)
        for verified in ("true", "false"):
            assert values[("codeworker_verifications_total", (*of_type, ("verified", verified)))] == 0
    stages = ("checkout", "lock", "execute", "verify", "push", "resume", "pull_request", "merge", "revised")
    for stage in stages:
        assert values[("codeworker_stage_duration_seconds_count", (("stage", stage),))] == 0, stage
    for outcome in ("acquired", "deferred", "conflict"):
        assert values[("codeworker_lock_wait_seconds_count", (("outcome", outcome),))] == 0
    for severity in ("HIGH", "MEDIUM", "LOW"):
        assert values[("codeworker_secret_findings_total", (("severity", severity),))] == 0
    assert values[("codeworker_secret_blocks_total", (("severity", "HIGH"),))] == 0
    for kind in ("input", "output", "cache_read", "cache_write"):
        assert values[("codeworker_model_tokens_total", (("kind", kind),))] == 0
    model = (("model", "claude-sonnet-4-6"),)
    assert values[("codeworker_model_cost_usd_total", model)] == 0
    assert values[("codeworker_model_cache_hit_ratio_count", model)] == 0
    assert values[("codeworker_model_cache_hit_ratio_bucket", (("le", "0.5"), *model))] == 0
    assert totals == {"started": 0, "finished": {}}


def test_a_job_of_a_pool_child_adds_to_the_zeros(tmp_path):
    """The child inherits the main process's zero series and writes its own file: its job counts
    once, and every other series stays at zero."""
    with worker_main(tmp_path / "metrics", "one job"):
        values = _samples()
        totals = metrics.totals()

    refactor = (("operation_type", "refactor"),)
    assert values[("codeworker_jobs_finished_total", (*refactor, ("status", "pr_open")))] == 1
    assert values[("codeworker_jobs_finished_total", (*refactor, ("status", "failed")))] == 0
    assert values[("codeworker_jobs_started_total", refactor)] == 1
    assert values[("codeworker_job_duration_seconds_sum", refactor)] == 3.0
    assert values[("codeworker_jobs_started_total", (("operation_type", "test"),))] == 0
    assert values[("codeworker_jobs_active", refactor)] == 0
    assert totals == {"started": 1, "finished": {"pr_open": 1}}


def test_the_cache_hit_ratio_of_a_job():
    assert metrics.cache_hit_ratio(Usage()) is None
    usage = Usage(input_tokens=10, output_tokens=500, cache_read_tokens=80, cache_write_tokens=10)
    assert metrics.cache_hit_ratio(usage) == pytest.approx(0.8)
    assert metrics.cache_hit_ratio(Usage(input_tokens=40)) == 0


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
