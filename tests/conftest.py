"""Shared fixtures: real redis-server, real git smart-HTTP server, GitHub stand-in, a pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from codeworker.config import Settings
from codeworker.pipeline import Pipeline
from tests.support.github_stub import GitHubStub
from tests.support.gitserver import GitServer
from tests.support.redis_server import RedisServer


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
