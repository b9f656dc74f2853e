"""deploy/'s queries checked against a live worker: every PromQL expression of the dashboard, the
alerts and the prometheus-adapter may use only metric names, labels and buckets the worker exports
(or that Prometheus and redis_exporter add), as /metrics shows them after jobs that touch every
metric.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from codeworker.loopback.redis_server import free_port
from codeworker.loopback.worker import get
from tests.conftest import GITHUB_TOKEN
from tests.support import anthropic_stub as model_stub
from tests.support.deploy import K8S, alert_rules, dashboard_queries, load
from tests.support.jobs import (
    APP_PY,
    QUEUE,
    RESULT_TIMEOUT,
    new_repo,
    open_gate,
    release,
    run_job,
    scripted_job,
)
from tests.support.worker import WorkerProcess

NOT_FROM_THE_WORKER = {
    "up": ({"job", "instance"}, "Prometheus's own series for every scrape target"),
    "redis_up": ({"job", "instance"}, "redis_exporter: whether it reaches Redis"),
    "redis_key_size": (
        {"job", "instance", "db", "key", "namespace"},
        "redis_exporter --check-single-keys: the queue's length lives in Redis, not in a worker",
    ),
}
"""Series the dashboard and alerts may use although /metrics does not export them, and why."""

TARGET_LABELS = {"job", "instance", "namespace", "pod"}
"""Labels Prometheus attaches to every scraped series (deploy/*/prometheus.yml)."""


# -- every query against a live worker ------------------------------------------------------------


def every_query() -> list[tuple[str, str]]:
    adapter = load(K8S / "overlays" / "hpa" / "prometheus-adapter-values.yaml")["rules"]["external"]
    return [
        *dashboard_queries(),
        *((f"rule {rule.get('alert') or rule['record']}", rule["expr"]) for rule in alert_rules()),
        *(
            (
                f"prometheus-adapter {rule['name']['as']}",
                rule["metricsQuery"].replace("<<.LabelMatchers>>", ""),
            )
            for rule in adapter
        ),
    ]


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: value of an equality matcher, or None}) of every selector in ``expr``."""
    found: list[tuple[str, dict[str, str]]] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {
                m.name: m.value if str(m.op) == "MatchOp.Equal" else None for m in node.matchers.matchers
            }
            found.append((node.name, matchers))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


@pytest.fixture(scope="module")
def http_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def worker(worker_env, http_port, model, broker_url, git_server, tmp_path_factory) -> Iterator[WorkerProcess]:
    """The module's worker, started only after another worker shut down holding a job: that job is
    redelivered to this one, so codeworker_jobs_redelivered_total exists too."""
    directory = tmp_path_factory.mktemp("redelivery")
    # No wait for locks in all: the scenario's lock conflict fails (and is counted) at once.
    env = {**worker_env, "ANTHROPIC_BASE_URL": model.url, "CODEWORKER_LOCK_WAIT_TOTAL": "0"}
    victim = WorkerProcess(
        {
            **env,
            "PORT": str(free_port()),
            "CODEWORKER_METRICS_DIR": str(directory / "victim-metrics"),
            "CODEWORKER_SHUTDOWN_GRACE": "1",
        },
        name="victim",
        concurrency=1,
    ).start()
    name, url = new_repo(git_server)
    gate = directory / "gate"
    os.mkfifo(gate)
    sender = Celery(broker=broker_url, backend=broker_url)
    job = scripted_job(url, name, {"gate": str(gate), "write": {"NOTES.md": "again\n"}})
    pending = sender.send_task("codeworker.refactor", args=[job], queue=QUEUE)
    parked = open_gate(gate, victim)
    try:
        assert victim.stop() == 0
    finally:
        os.close(parked)  # the victim's child, which read from it, is gone

    process = WorkerProcess(
        {**env, "PORT": str(http_port), "CODEWORKER_METRICS_DIR": str(directory / "metrics")}, name="deploy"
    ).start()
    try:
        release(open_gate(gate, process))
        assert pending.get(timeout=RESULT_TIMEOUT)["status"] == "pr_open"
    finally:
        sender.close()
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def exported(client: Celery, worker, http_port, model, git_server, github_stub, tmp_path_factory) -> dict:
    """Sample name -> label names (and ``le`` values) in /metrics after jobs that touch every metric:
    a redelivered one (the ``worker`` fixture), a lock conflict, a blocked secret, a refused push, a
    failed pull request and an agent job that bills the model and has a secret scrubbed from a
    tool result."""
    directory = tmp_path_factory.mktemp("jobs")
    name, url = new_repo(git_server)
    gate = directory / "gate"
    os.mkfifo(gate)
    holder = scripted_job(
        url, name, {"gate": str(gate), "write": {"app.py": APP_PY + "x = 1\n"}}, target_files=["app.py"]
    )
    pending = client.send_task("codeworker.refactor", args=[holder], queue=QUEUE)
    fd = open_gate(gate)
    try:
        blocked = run_job(
            client,
            scripted_job(url, name, {"write": {"app.py": APP_PY + "y = 2\n"}}, target_files=["app.py"]),
        )
    finally:
        release(fd)
    assert pending.get(timeout=RESULT_TIMEOUT)["status"] == "pr_open"
    assert blocked["status"] == "failed" and "app.py" in blocked["error"]

    name, url = new_repo(git_server)
    key = "AKIA" + "QYLPMN5HHHFPZAM2"
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "zq9Lm3Ab"
    config = f"aws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
    assert run_job(client, scripted_job(url, name, {"write": {"config.ini": config}}))["status"] == "blocked"

    name, url = new_repo(git_server)
    github_stub.fail_next("POST", r"/pulls$", status=403, after_processing=False)
    assert run_job(client, scripted_job(url, name, {"write": {"NOTES.md": "pr\n"}}))["status"] == "pushed"

    name, url = new_repo(git_server)
    hook = git_server.repo_path("acme", name) / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho refused by a test hook >&2\nexit 1\n")
    hook.chmod(0o755)
    assert run_job(client, scripted_job(url, name, {"write": {"NOTES.md": "push\n"}}))["status"] == "failed"

    # A repository that committed the worker's token: the tool result is scrubbed (and counted).
    name, url = new_repo(git_server, {"app.py": APP_PY, "leak.txt": GITHUB_TOKEN + "\n"})
    model.play(
        model_stub.say(model_stub.bash("cat leak.txt")), *[model_stub.done("Nothing needs changing.")] * 3
    )
    agent_job = {
        "operation_type": "refactor",
        "description": "Tidy app.py",
        "repository": {"url": url, "owner": "acme", "name": name, "branch": "main"},
        "max_iterations": 1,
    }
    assert run_job(client, agent_job)["status"] == "no_changes"

    status, text = get(http_port, "/metrics")
    assert status == 200
    labels: dict[str, set[str]] = {}
    buckets: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            if "le" in sample.labels:
                buckets.setdefault(sample.name, set()).add(sample.labels["le"])
    return {"labels": labels, "buckets": buckets}


def test_every_metric_of_the_worker_was_exported_by_the_scenario(exported):
    """Guards the next test: a metric the scenario never touched would be missing from /metrics
    (multiprocess mode shows only what some process recorded), and queries on it would be unchecked."""
    from prometheus_client.metrics import MetricWrapperBase

    from codeworker.worker import metrics

    declared = {value._name for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)}
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported["labels"]}
    assert declared <= families, declared - families


def test_every_query_uses_only_metrics_and_labels_that_exist(exported):
    records = {rule["record"] for rule in alert_rules() if "record" in rule}
    problems = []
    for where, expr in every_query():
        for name, matchers in selectors(expr):
            if name in records:
                known = TARGET_LABELS
            elif name in NOT_FROM_THE_WORKER:
                known = NOT_FROM_THE_WORKER[name][0]
            elif name in exported["labels"]:
                known = exported["labels"][name] | TARGET_LABELS
            else:
                problems.append(f"{where}: {name} is not exported by a worker")
                continue
            problems += [f"{where}: {name} has no label {label!r}" for label in set(matchers) - known]
            le = matchers.get("le")
            if le is not None and le not in exported["buckets"].get(name, set()):
                problems.append(f"{where}: {name} has no bucket le={le!r}")
    assert not problems, "\n".join(problems)
