"""The fixtures of the GitHub client's test modules: a stand-in and a client of it, with no pause
between writes. A module binds them by name (``stub = github_client.stub``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from codeworker.github import PullRequests
from codeworker.loopback.github_stub import GitHubStub

TOKEN = "ghs_stubToken0123456789abcdefghijklmnopqr"
OWNER, NAME = "acme", "widgets"


@pytest.fixture()
def stub() -> Iterator[GitHubStub]:
    with GitHubStub(TOKEN) as server:
        yield server


@pytest.fixture()
def prs(stub: GitHubStub) -> Iterator[PullRequests]:
    with PullRequests(stub.url, SecretStr(TOKEN), seconds_between_writes=0.0, timeout=5) as client:
        yield client
