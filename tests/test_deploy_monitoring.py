"""deploy/'s Prometheus rules and configurations and its Grafana dashboard, checked by the tools that
will read them where one can be had here: promtool for the rules, their unit tests and the Prometheus
configurations (the Kubernetes one with its service discovery swapped for a static target). What no
tool checks (the alerts' severities and summaries, the dashboard's data source, layout and what it
shows) is asserted here.
"""

from __future__ import annotations

import re

import yaml

from tests.support.deploy import (
    ALERTS,
    DEPLOY,
    K8S,
    PORT,
    ROOT,
    alert_rules,
    dashboard,
    dashboard_queries,
    load,
    run,
    tool,
)


def promtool() -> str:
    """Debian's promtool, on PATH or extracted by `make tools` without installing the server."""
    return tool("promtool", ROOT / ".work" / "tools" / "prometheus" / "usr" / "bin" / "promtool")


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
        "CodeworkerModelCacheHitRatioLow",
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
        "CodeworkerModelCacheHitRatioLow",
    } <= {rule["alert"] for rule in alerts}
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


# -- Grafana -----------------------------------------------------------------------------------------


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
