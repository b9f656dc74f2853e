"""Shared fixtures: real redis-server, real git smart-HTTP server, GitHub stand-in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

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
