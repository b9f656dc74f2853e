"""deploy/k8s, checked by the tools that will read it: the Kubernetes schemas (kubernetes-validate,
offline) for the manifests; KEDA's ScaledObject, whose CRD no tool here checks, field by field. What
no tool checks (a grace period longer than the worker's, probes on paths the worker serves, the
kustomizations and the autoscalers) is asserted here against the code itself.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from codeworker.config import Settings
from codeworker.coordination.connection import SentinelUrl
from tests.support.deploy import GRACE, K8S, PORT, QUEUE_NAME, load, served_paths

NOT_KUBERNETES_OBJECTS = {"kustomization.yaml", "prometheus-adapter-values.yaml"}
"""YAML under deploy/k8s that kubectl does not apply as objects (kustomize's, helm values)."""

KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
"""The oldest version deploy/README.md supports (pod user namespaces, procMount) and the newest
whose schemas kubernetes-validate ships."""


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


def test_the_sentinel_overlay_replaces_redis_and_names_one_group_everywhere():
    overlay = K8S / "overlays" / "sentinel"
    kustomization = load(overlay / "kustomization.yaml")
    assert kustomization["resources"] == ["../../base", "redis-sentinel.yaml"]
    patches = [yaml.safe_load(p["patch"]) for p in kustomization["patches"]]
    config = next(p for p in patches if isinstance(p, list) and p[0]["path"] == "/data/REDIS_URL")
    url, group = config[0]["value"], config[1]["value"]
    redis = by_kind("StatefulSet", "codeworker-redis-ha")
    service = redis["spec"]["serviceName"]
    pods = [f"{redis['metadata']['name']}-{n}.{service}" for n in range(redis["spec"]["replicas"])]
    assert SentinelUrl.parse(url).sentinels == tuple((pod, 26379) for pod in pods)
    data = by_kind("ConfigMap", "codeworker-redis-ha")["data"]
    assert f"sentinel monitor {group} {pods[0]} 6379 2" in data["sentinel.conf"]
    assert f'"master_name": "{group}"' in data["celeryconfig.py"]
    assert "appendonly yes" in data["redis.conf"] and "maxmemory-policy noeviction" in data["redis.conf"]
    deleted = {(p["kind"], p["metadata"]["name"]) for p in patches if isinstance(p, dict) and p.get("$patch")}
    base = {
        (d["kind"], d["metadata"]["name"])
        for d in yaml.safe_load_all((K8S / "base" / "redis.yaml").read_text())
    }
    assert deleted == base
