"""``codeworker doctor`` as an operator runs it, against a real redis-server, bubblewrap, the scanner,
and the GitHub and Messages API stand-ins: healthy, then each dependency broken in turn."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import redis

from codeworker.loopback.redis_server import AOF_PERSISTENCE, RedisServer, free_port
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support import anthropic_stub as s
from tests.support.cli import codeworker


@pytest.fixture(scope="module")
def kept_redis() -> Iterator[RedisServer]:
    """A Redis configured as codeworker wants it: append-only file, no eviction."""
    server = RedisServer(AOF_PERSISTENCE)
    server.start()
    yield server
    server.close()


@pytest.fixture()
def healthy(kept_redis, github_stub, model: s.AnthropicStub, tmp_path) -> dict:
    github_stub.add_repo("acme", "doctor")
    return {
        "REDIS_URL": kept_redis.url,
        "GITHUB_TOKEN": GITHUB_TOKEN,
        "GITHUB_API_URL": github_stub.url,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": model.url,
        "WORKSPACE_ROOT": str(tmp_path / "ws"),
        "CODEWORKER_WEBHOOK_SECRET": "a-webhook-secret-of-enough-length",
    }


def doctor(env: dict) -> tuple[int, dict[str, tuple[str, str]]]:
    """Exit status, and check name -> (verdict, rest of the line)."""
    done = codeworker(env, "doctor", "--repo", "acme/doctor", check=False)
    assert "Traceback" not in done.stderr, done.stderr
    lines = {}
    for line in done.stdout.splitlines():
        verdict, check, rest = line.split(None, 2)
        lines[check] = (verdict, rest)
    return done.returncode, lines


def test_a_healthy_host_passes_every_check(healthy):
    status, lines = doctor(healthy)
    assert status == 0
    assert list(lines) == [
        "redis",
        "redis-memory",
        "redis-persist",
        "sandbox",
        "setup-network",
        "scanner",
        "git",
        "disk",
        "github",
        "github-push",
        "model",
        "webhook",
    ]
    assert {verdict for verdict, _ in lines.values()} == {"ok"}, lines


def test_redis_down_fails_with_the_password_masked(healthy):
    status, lines = doctor({**healthy, "REDIS_URL": f"redis://:s3cretpw@127.0.0.1:{free_port()}/0"})
    assert status == 1
    verdict, rest = lines["redis"]
    assert verdict == "failed" and rest.startswith("cannot reach redis://:**@127.0.0.1:")
    assert "s3cretpw" not in rest


def test_a_redis_that_may_evict_fails(healthy, kept_redis):
    client = redis.Redis.from_url(kept_redis.url)
    client.config_set("maxmemory", "1gb")
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        status, lines = doctor(healthy)
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "0")
        client.close()
    assert status == 1
    assert lines["redis-memory"][0] == "failed" and "allkeys-lru" in lines["redis-memory"][1]


def test_bubblewrap_missing_from_path_fails(healthy):
    status, lines = doctor({**healthy, "PATH": str(sys.executable.rsplit("/", 1)[0])})
    assert status == 1
    assert lines["sandbox"] == (
        "failed",
        "bubblewrap ('bwrap') is not installed or not on PATH; fix: install bubblewrap; allow unprivileged "
        "user namespaces (sysctl kernel.unprivileged_userns_clone=1)",
    )


def test_a_bad_token_on_the_github_stand_in_fails(healthy):
    status, lines = doctor({**healthy, "GITHUB_TOKEN": "ghp_not-the-right-one"})
    assert status == 1
    assert lines["github"][0] == "failed" and "rejected GITHUB_TOKEN (401)" in lines["github"][1]
    assert "ghp_not-the-right-one" not in str(lines)


def test_a_bad_model_key_fails(healthy):
    status, lines = doctor({**healthy, "ANTHROPIC_API_KEY": "sk-wrong"})
    assert status == 1
    assert lines["model"][0] == "failed" and "rejected ANTHROPIC_API_KEY (401)" in lines["model"][1]


def test_a_worker_started_with_doctor_refuses_to_start_when_a_check_fails(healthy):
    done = codeworker({**healthy, "GITHUB_TOKEN": "ghp_not-the-right-one"}, "worker", "--doctor", check=False)
    assert done.returncode == 1
    assert "failed   github" in done.stdout
    assert done.stderr.strip() == "Error: codeworker worker refuses to start: a doctor check failed (above)"
