"""``python -m demo --repo typescript``: its recorded session still replays, through a real worker,
to a verified error fix of the sample TypeScript project (demo/sample_ts), Vitest installed by
setup offline from the npm cache ``make tools`` fills."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from codeworker.replay import ReplayServer
from demo import typescript as demo
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support import npm_fixtures
from tests.support.jobs import QUEUE, RESULT_TIMEOUT


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    with ReplayServer(demo.SESSION) as server:
        yield server


@pytest.fixture(scope="module")
def worker_env(worker_env: dict, replay: ReplayServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    cache_root: Path = tmp_path_factory.mktemp("demo-ts-cache")
    return {**worker_env, "ANTHROPIC_BASE_URL": replay.url, **demo.sandbox_env(cache_root)}


def test_the_typescript_demo_session_replays_to_a_verified_fix(client, replay, git_server, github_stub):
    npm_fixtures.require_npm_cache()
    assert demo.npm_cache_problem() is None
    name = f"cart-ts-{uuid.uuid4().hex[:8]}"
    url = git_server.create_repo("acme", name, demo.project_files())
    github_stub.add_repo("acme", name, clone_url=url)
    job = {**demo.error_fix_job(url), "repository": {"url": url, "owner": "acme", "name": name}}

    result = client.send_task("codeworker.error_fix", args=[job], queue=QUEUE).get(timeout=RESULT_TIMEOUT)

    assert replay.diverged is None and replay.finished, replay.diverged
    assert result["status"] == "pr_open" and result["success"] is True, result["error"]
    verification = result["verification"]
    assert verification["fixed"] == [demo.FIXED_TEST] and verification["regressions"] == []
    assert verification["before"]["tests"][demo.FIXED_TEST] == "failed"
    assert set(verification["after"]["tests"].values()) == {"passed"}
    assert result["files_modified"] == [demo.CART]
    # What the demo checks and prints, on this repository.
    assert demo.show(git_server, github_stub, result, name) == 0
    text = demo.SESSION.read_text()
    assert GITHUB_TOKEN not in text and ANTHROPIC_KEY not in text
