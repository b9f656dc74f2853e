"""Prometheus metrics of a worker, correct across its prefork pool.

Jobs run in pool children, but Prometheus scrapes the main process; prometheus_client's
multiprocess mode has every process write its samples to memory-mapped files in one directory and
the main process adds them up at scrape time. :func:`use_directory` picks that directory (fresh,
per worker) in the main process before the pool forks; children inherit it.

Every metric here has at least one label on purpose: a labelled metric creates its sample storage
on first ``.labels()``, which happens after :func:`use_directory` and in the process that records,
so importing this module early (the CLI imports the pipeline) never binds a sample to the wrong
storage. No label carries an operation id or a path: label values must stay few.

A series appears only once some process created it, so the main process creates, at zero, every
series whose label values are known before any job (:func:`export_zeros`): a scrape of an idle
worker already shows them, and ``rate()`` and the alerts see 0 rather than no data.

The pipeline and the task signals call the small functions at the bottom; nothing else touches the
metric objects.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from codeworker.models import OperationType, Status
from codeworker.secrets.findings import BLOCKING_SEVERITIES, Severity
from codeworker.worker.journal import alive

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

JOB_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 2400)
"""Jobs take seconds (invalid, no changes) to the half-hour soft limit."""

STAGE_SECONDS_BUCKETS = (0.05, 0.25, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
LOCK_SECONDS_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60)
ITERATION_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10)
CACHE_RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
"""A ratio in [0, 1]: finer near the top, where a job whose turns re-read the conversation lands."""

JOB_STATUSES = (*(status.value for status in Status), "requeued", "retry", "failure")
"""Every ``status`` of ``codeworker_jobs_finished_total``: a result's, "requeued" (a shutdown
interrupted the job, ``signals.REQUEUED``), and the task states "retry" and "failure" (the task
raised rather than returned a result)."""

LOCK_OUTCOMES = ("acquired", "deferred", "conflict")
"""Every ``outcome`` of ``codeworker_lock_wait_seconds`` (see :func:`lock_wait`)."""

VERDICTS = ("true", "false")
"""Every ``verified`` of ``codeworker_verifications_total``."""

FOLLOW_UP = "follow_up"
"""The ``operation_type`` of the job metrics for ``codeworker.follow_up`` tasks, whose operation's
type is known only once the job is read; the pipeline's own metrics use the operation's type."""

GITHUB_TRIGGERS = ("comment", "review", "checks", "issue")
"""Every ``trigger`` of ``codeworker_github_triggers_total``."""

JOBS_STARTED = Counter("codeworker_jobs_started", "Jobs a pool process started running.", ["operation_type"])
JOBS_FINISHED = Counter(
    "codeworker_jobs_finished",
    "Jobs that ended, by the result's status (pr_open, merged, failed, ...) or the task state (retry).",
    ["operation_type", "status"],
)
JOB_DURATION = Histogram(
    "codeworker_job_duration_seconds",
    "Wall-clock seconds from a job's start in a pool process to its end.",
    ["operation_type"],
    buckets=JOB_SECONDS_BUCKETS,
)
JOBS_ACTIVE = Gauge(
    "codeworker_jobs_active",
    "Jobs running now; a process that dies stops counting.",
    ["operation_type"],
    multiprocess_mode="livesum",
)
JOBS_REDELIVERED = Counter(
    "codeworker_jobs_redelivered",
    "Jobs Redis delivered again after a worker died or shut down holding them.",
    ["operation_type"],
)
GITHUB_TRIGGERS_QUEUED = Counter(
    "codeworker_github_triggers",
    "Jobs that GitHub events queued: follow-ups (comment, review, checks) and operations (issue).",
    ["trigger"],
)
STAGE_DURATION = Histogram(
    "codeworker_stage_duration_seconds",
    "Seconds a job spent in one pipeline stage.",
    ["stage"],
    buckets=STAGE_SECONDS_BUCKETS,
)
LOCK_WAIT = Histogram(
    "codeworker_lock_wait_seconds",
    "Seconds a job waited in its slot for its file locks, by outcome (acquired, deferred, conflict).",
    ["outcome"],
    buckets=LOCK_SECONDS_BUCKETS,
)
LOCK_CONFLICTS = Counter(
    "codeworker_lock_conflicts",
    "Jobs that failed because another operation held a file they needed for longer than "
    "CODEWORKER_LOCK_WAIT_TOTAL.",
    ["operation_type"],
)
SECRET_FINDINGS = Counter(
    "codeworker_secret_findings", "Secrets the scan found in added lines.", ["severity"]
)
SECRETS_SCRUBBED = Counter(
    "codeworker_secrets_scrubbed",
    "Worker secrets found in a tool's output and scrubbed before the model saw them.",
    ["tool"],
)
SECRET_BLOCKS = Counter(
    "codeworker_secret_blocks",
    "Commits the scan blocked, once per severity among the blocking findings.",
    ["severity"],
)
MODEL_TOKENS = Counter(
    "codeworker_model_tokens",
    "Model tokens billed, by kind (input, output, cache_read, cache_write).",
    ["kind"],
)
MODEL_COST = Counter("codeworker_model_cost_usd", "US dollars spent on the model API.", ["model"])
MODEL_CACHE_HIT_RATIO = Histogram(
    "codeworker_model_cache_hit_ratio",
    "Share of a job's model input tokens read from the prompt cache: cache reads over input tokens, "
    "cache reads and cache writes; once per job that called the model.",
    ["model"],
    buckets=CACHE_RATIO_BUCKETS,
)
AGENT_ITERATIONS = Histogram(
    "codeworker_agent_iterations",
    "Edit-test iterations an executor needed per job.",
    ["operation_type"],
    buckets=ITERATION_BUCKETS,
)
VERIFICATIONS = Counter(
    "codeworker_verifications",
    "The worker's verdicts on changes, verified or not.",
    ["operation_type", "verified"],
)
PUSH_FAILURES = Counter(
    "codeworker_push_failures", "Pushes the remote refused or that failed.", ["operation_type"]
)
EXTERNAL_ERRORS = Counter(
    "codeworker_external_errors",
    "Failures of the services a job talks to, by service (git, github) and kind (timeout, reset...).",
    ["service", "kind"],
)
PULL_REQUEST_FAILURES = Counter(
    "codeworker_pull_request_failures",
    "Pull requests that could not be opened after the branch was pushed.",
    ["operation_type"],
)

TOKEN_KINDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write": "cache_write_tokens",
}
"""Label value of ``codeworker_model_tokens_total`` -> field of the result's usage."""


# -- the worker's multiprocess directory ---------------------------------------------------------


def use_directory(directory: Path) -> Path:
    """Make ``directory`` (emptied) the multiprocess directory of this process and its children.

    Called in the worker's main process before the pool forks. Files of an earlier worker with the
    same pid would be added to ours, hence the wipe.
    """
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    # prometheus_client chooses its storage when first imported; choose again now that the
    # directory is known (labelled samples are created later, see the module docstring).
    values.ValueClass = values.get_value_class()
    return directory


def directory() -> Path | None:
    """The multiprocess directory, or None in a process that records only in memory."""
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path else None


def mark_process_dead(pid: int) -> None:
    """Stop counting the live gauges of a pool process that exited."""
    path = directory()
    if path is not None:
        multiprocess.mark_process_dead(pid, str(path))


_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def _sweep_dead_processes(path: Path) -> None:
    """Children killed outright (SIGKILL, OOM) never run their exit hook; their pids are gone."""
    for file in path.glob("gauge_live*.db"):
        match = _LIVE_FILE.match(file.name)
        if match and not alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), str(path))


def registry() -> CollectorRegistry:
    """A registry that reads every process's samples (or this process's, outside a worker)."""
    path = directory()
    if path is None:
        from prometheus_client import REGISTRY

        return REGISTRY
    _sweep_dead_processes(path)
    return registry_of(path)


def registry_of(path: Path) -> CollectorRegistry:
    """A registry that reads the multiprocess files in ``path`` (a stopped worker's too), minus
    files never sized (a process killed while creating its file leaves one empty for good)."""
    collector_registry = CollectorRegistry()
    _StartedFiles(collector_registry, path=str(path))
    return collector_registry


class _StartedFiles(multiprocess.MultiProcessCollector):
    """prometheus_client's collector, minus the files of processes that are creating theirs at this
    very moment: such a file is empty until its writer sizes it (it opens, then truncates), holds no
    sample yet, and would fail the whole scrape."""

    def collect(self) -> Iterable[Metric]:
        files = [str(file) for file in Path(self._path).glob("*.db") if _size(file) >= MMAP_HEADER]
        return self.merge(files, accumulate=True)


MMAP_HEADER = 8
"""Bytes of a metrics file's header (how much of it is used); a shorter file is not ready."""


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except FileNotFoundError:  # its process died and was swept meanwhile
        return 0


class WorkerGauges(Collector):
    """Gauges only the main process can tell, computed at scrape time: its pool size, and how long
    its oldest running job has run (a stuck child shows here while its sibling keeps finishing jobs,
    which a job counter would hide)."""

    def __init__(self, concurrency: int, started_at: Iterable[float]) -> None:
        self.concurrency = concurrency
        self.started_at = list(started_at)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        oldest = time.time() - min(self.started_at) if self.started_at else 0.0
        yield GaugeMetricFamily(
            "codeworker_worker_concurrency",
            "Jobs this worker runs at once (its pool size).",
            self.concurrency,
        )
        yield GaugeMetricFamily(
            "codeworker_job_oldest_running_seconds",
            "Seconds the longest-running job of this worker has been running; 0 when it is idle.",
            max(oldest, 0.0),
        )


def render(*extra: Collector) -> tuple[bytes, str]:
    """The exposition text of every process of this worker (and of ``extra``), and its content type."""
    scraped = CollectorRegistry()
    for collector in extra:
        scraped.register(collector)
    return generate_latest(registry()) + generate_latest(scraped), CONTENT_TYPE_LATEST


def totals() -> dict[str, object]:
    """Jobs started and finished (by status) since the worker started, for ``/status``."""
    started = 0.0
    finished: dict[str, float] = {}
    for family in registry().collect():
        for sample in family.samples:
            if sample.name == "codeworker_jobs_started_total":
                started += sample.value
            elif sample.name == "codeworker_jobs_finished_total":
                status = sample.labels["status"]
                finished[status] = finished.get(status, 0.0) + sample.value
    # The statuses no job ended with yet are exported at zero; /status lists only what happened.
    return {"started": int(started), "finished": {k: int(v) for k, v in sorted(finished.items()) if v}}


def export_zeros(model: str, stages: Iterable[str]) -> None:
    """Create every series whose label values are known before the first job, at zero.

    Called in the worker's main process once :func:`use_directory` chose the directory, so the
    zeros are in its file and every scrape shows them; the pool children write their own files
    (prometheus_client starts new ones after a fork). ``model`` is the configured model (the one
    open label that has a known value), ``stages`` the pipeline's stage names. Left out: the tool
    of ``codeworker_secrets_scrubbed_total`` (any executor's tool names) and the kind of
    ``codeworker_external_errors_total`` (git's falls back to the exception's class name).
    """
    types = [kind.value for kind in OperationType]
    for metric in (JOBS_STARTED, JOB_DURATION, JOBS_ACTIVE, JOBS_REDELIVERED):
        _at_zero(metric, [*types, FOLLOW_UP])
    _at_zero(JOBS_FINISHED, [*types, FOLLOW_UP], JOB_STATUSES)
    _at_zero(GITHUB_TRIGGERS_QUEUED, GITHUB_TRIGGERS)
    for metric in (
        LOCK_CONFLICTS,
        AGENT_ITERATIONS,
        PUSH_FAILURES,
        PULL_REQUEST_FAILURES,
    ):
        _at_zero(metric, types)
    _at_zero(VERIFICATIONS, types, VERDICTS)
    _at_zero(STAGE_DURATION, stages)
    _at_zero(LOCK_WAIT, LOCK_OUTCOMES)
    _at_zero(SECRET_FINDINGS, get_args(Severity))
    _at_zero(SECRET_BLOCKS, sorted(BLOCKING_SEVERITIES))
    _at_zero(MODEL_TOKENS, TOKEN_KINDS)
    _at_zero(MODEL_COST, [model])
    _at_zero(MODEL_CACHE_HIT_RATIO, [model])


def _at_zero(metric: MetricWrapperBase, *label_values: Iterable[str]) -> None:
    """``metric``'s series for every combination of ``label_values`` (one iterable per label)."""
    for combination in itertools.product(*label_values):
        metric.labels(*combination)


# -- what the task signals and the pipeline record -----------------------------------------------


def job_started(operation_type: str, redelivered: bool = False) -> None:
    JOBS_STARTED.labels(operation_type).inc()
    JOBS_ACTIVE.labels(operation_type).inc()
    if redelivered:
        JOBS_REDELIVERED.labels(operation_type).inc()


def job_finished(operation_type: str, status: str, seconds: float) -> None:
    JOBS_FINISHED.labels(operation_type, status).inc()
    JOBS_ACTIVE.labels(operation_type).dec()
    JOB_DURATION.labels(operation_type).observe(seconds)


def github_trigger(trigger: str) -> None:
    GITHUB_TRIGGERS_QUEUED.labels(trigger).inc()


def stage_duration(stage: str, seconds: float) -> None:
    STAGE_DURATION.labels(stage).observe(seconds)


def lock_wait(operation_type: str, seconds: float, outcome: str) -> None:
    """One wait for a job's locks in its worker slot: how long, and whether it got them
    (``acquired``), gave its slot back to come again (``deferred``) or gave up (``conflict``)."""
    LOCK_WAIT.labels(outcome).observe(seconds)
    if outcome == "conflict":
        LOCK_CONFLICTS.labels(operation_type).inc()


class _Finding(Protocol):
    severity: str


def secrets_scrubbed(tool: str, count: int) -> None:
    SECRETS_SCRUBBED.labels(tool).inc(count)


def secret_scan(findings: Iterable[_Finding], blocking: Iterable[_Finding]) -> None:
    for finding in findings:
        SECRET_FINDINGS.labels(str(finding.severity)).inc()
    for severity in sorted({str(finding.severity) for finding in blocking}):
        SECRET_BLOCKS.labels(severity).inc()


class _Usage(Protocol):
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float


def cache_hit_ratio(usage: _Usage) -> float | None:
    """Share of the input tokens ``usage`` billed that were read from the prompt cache; None when
    it billed no input (the job never called the model)."""
    prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    return usage.cache_read_tokens / prompt if prompt else None


def model_usage(model: str, usage: _Usage) -> None:
    """A job's model usage (the result's ``usage``), once per job."""
    for kind, field in TOKEN_KINDS.items():
        count = getattr(usage, field)
        if count:
            MODEL_TOKENS.labels(kind).inc(count)
    if usage.cost_usd:
        MODEL_COST.labels(model).inc(usage.cost_usd)
    ratio = cache_hit_ratio(usage)
    if ratio is not None:
        MODEL_CACHE_HIT_RATIO.labels(model).observe(ratio)


def agent_iterations(operation_type: str, iterations: int) -> None:
    AGENT_ITERATIONS.labels(operation_type).observe(iterations)


def verification(operation_type: str, verified: bool) -> None:
    VERIFICATIONS.labels(operation_type, str(verified).lower()).inc()


def push_failed(operation_type: str) -> None:
    PUSH_FAILURES.labels(operation_type).inc()


def external_error(service: str, kind: str) -> None:
    EXTERNAL_ERRORS.labels(service, kind).inc()


def pull_request_failed(operation_type: str) -> None:
    PULL_REQUEST_FAILURES.labels(operation_type).inc()
