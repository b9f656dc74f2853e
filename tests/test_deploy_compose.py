"""deploy/docker-compose.yml, handed to a compose client where one can be had here; what no tool
checks (a stop grace period longer than the worker's, a health check on a path the worker serves,
replicas that can coexist, Redis that keeps its jobs) is asserted here against the code itself.
"""

from __future__ import annotations

import shutil

import pytest

from codeworker.coordination.connection import SentinelUrl
from tests.support.deploy import DEPLOY, GRACE, QUEUE_NAME, load, run, seconds, served_paths

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


def test_the_sentinel_variant_layers_over_the_main_file():
    done = run(
        *compose_client(), "-f", "docker-compose.yml", "-f", "docker-compose.sentinel.yml", "config", "-q"
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_sentinel_variant_names_one_group_everywhere():
    services = load(DEPLOY / "docker-compose.sentinel.yml")["services"]
    worker = services["worker"]["environment"]
    parsed = SentinelUrl.parse(worker["REDIS_URL"])
    assert [host for host, _ in parsed.sentinels] == ["sentinel-1", "sentinel-2", "sentinel-3"]
    assert all(host in services and port == 26379 for host, port in parsed.sentinels)
    group = worker["CODEWORKER_REDIS_MASTER_NAME"]
    conf = (DEPLOY / "sentinel" / "sentinel.conf").read_text()
    assert f"sentinel monitor {group} redis 6379 2" in conf
    flower = services["flower"]["command"]
    assert f"--broker={worker['REDIS_URL']}" in flower
    assert f'"master_name": "{group}"' in (DEPLOY / "sentinel" / "celeryconfig.py").read_text()
    replica = " ".join(services["redis-replica"]["command"])
    assert "--replicaof redis 6379" in replica and "--maxmemory-policy noeviction" in replica
