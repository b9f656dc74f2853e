"""Shared fixtures: real redis-server, real git smart-HTTP server, GitHub stand-in, a pipeline."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from pydantic import SecretStr

from codeworker.config import Settings
from codeworker.coordination.keys import Keys
from codeworker.coordination.registry import BranchRegistry
from codeworker.loopback.github_stub import GitHubStub
from codeworker.loopback.gitserver import GitServer
from codeworker.loopback.redis_server import RedisServer
from codeworker.pipeline.service import Pipeline
from tests.support.anthropic_stub import AnthropicStub
from tests.support.worker import WorkerProcess, worker_environment


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture()
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


GITHUB_TOKEN = "cwcanary-github-token-5e1f9a77c3"
"""A recognisable fake token: the canary tests search every output for it."""

ANTHROPIC_KEY = "cwcanary-anthropic-key-0b7d44e2a1"
"""A recognisable fake API key, searched for like the token."""


@pytest.fixture(scope="session")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    server = GitServer(tmp_path_factory.mktemp("remote"), GITHUB_TOKEN)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def github_stub() -> Iterator[GitHubStub]:
    stub = GitHubStub(GITHUB_TOKEN)
    stub.start()
    yield stub
    stub.stop()


@pytest.fixture()
def pipe(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    git_server: GitServer,
    github_stub: GitHubStub,
    tmp_path: Path,
) -> Iterator[Pipeline]:
    settings = Settings(
        redis_url=redis_server.url,
        workspace_root=tmp_path / "ws",
        github_token=SecretStr(GITHUB_TOKEN),
        github_api_url=github_stub.url,
        allowed_repos=[git_server.base_url],
        lock_wait=0,
        lock_ttl=5,
    )
    yield Pipeline.from_settings(settings)


KOMBU_UNACKED = ("unacked", "unacked_index", "unacked_mutex")
"""kombu's record of delivered, unacknowledged messages, which a later worker would restore."""


@pytest.fixture(scope="module")
def broker_url(redis_server: RedisServer) -> Iterator[str]:
    # Database 1: unit tests flush database 0, which would drop Celery's queue bindings.
    url = redis_server.url.rsplit("/", 1)[0] + "/1"
    yield url
    # A message a module's killed worker left unacknowledged would come back, after the visibility
    # timeout, to the next module's worker: each module starts with none.
    client = redis.Redis.from_url(url)
    client.delete(*KOMBU_UNACKED, "code-operation")
    client.close()


@pytest.fixture()
def broker(broker_url: str) -> Iterator[redis.Redis]:
    """A client of the broker's database, to look at queues, unacked messages and keys."""
    client = redis.Redis.from_url(broker_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture()
def celery_client(broker_url: str) -> Iterator[Celery]:
    """A sender with Celery's default settings, as a backend that knows only the task names."""
    app = Celery(broker=broker_url, backend=broker_url)
    yield app
    app.close()


@pytest.fixture(scope="module")
def workspace_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="module")
def worker_env(broker_url: str, git_server: GitServer, github_stub: GitHubStub, workspace_root: Path) -> dict:
    """The environment of an end-to-end worker; a module may extend it before ``worker`` starts."""
    env = worker_environment(broker_url, workspace_root, git_server, github_stub, GITHUB_TOKEN, ANTHROPIC_KEY)
    # A short heartbeat so a duplicate delivery's retry comes round quickly.
    return {**env, "CODEWORKER_CLAIM_TTL": "2"}


@pytest.fixture(scope="module")
def worker(worker_env: dict) -> Iterator[WorkerProcess]:
    """A real ``codeworker worker`` process (prefork, 2 children) for one test module."""
    process = WorkerProcess(worker_env, name="e2e").start()
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def client(broker_url: str, worker: WorkerProcess) -> Iterator[Celery]:
    """A plain Celery client, as a backend that knows only the task names would have."""
    app = Celery(broker=broker_url, backend=broker_url)
    yield app
    app.close()


@pytest.fixture(scope="module")
def registry(broker_url: str) -> BranchRegistry:
    return BranchRegistry(redis.Redis.from_url(broker_url, decode_responses=True), Keys())


@pytest.fixture()
def listener() -> Iterator[int]:
    """A TCP server on loopback that the host can reach; returns its port (sandboxes must not)."""
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()[1]
    server.close()


@pytest.fixture(scope="module")
def model() -> Iterator[AnthropicStub]:
    """The Messages API stand-in for a module's worker (its ANTHROPIC_BASE_URL); tests play scripts."""
    server = AnthropicStub(ANTHROPIC_KEY).start()
    yield server
    server.stop()
