"""A TypeScript repository whose Vitest is installed by its setup from its lock file, through a real
worker and without network: the JavaScript profile finds ``npm ci`` (package-lock.json) and
``vitest run`` (the test script) by itself; setup installs offline from the npm cache that ``make
tools`` made (tests/support/npm_fixtures.py) into the setup cache, and the verification reads
Vitest's JUnit report per test, with the fail-to-pass rule of a feature."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from codeworker.coordination.keys import repo_id
from tests.support import anthropic_stub as s
from tests.support import npm_fixtures
from tests.support.jobs import QUEUE, RESULT_TIMEOUT

CALC_MUL = (
    "export function add(a: number, b: number): number {\n  return a + b;\n}\n\n"
    "export function mul(a: number, b: number): number {\n  return a * b;\n}\n"
)
MUL_TEST = (
    'import { expect, test } from "vitest";\nimport { mul } from "./calc";\n\n'
    'test("mul", () => {\n  expect(mul(2, 3)).toBe(6);\n});\n'
)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("setup-cache")


@pytest.fixture(scope="module")
def worker_env(worker_env: dict, model: s.AnthropicStub, cache_root: Path) -> dict:
    return {**worker_env, "ANTHROPIC_BASE_URL": model.url, **npm_fixtures.worker_env(cache_root)}


def test_a_feature_on_a_typescript_repository_runs_vitest_installed_offline_by_setup(
    client, model, git_server, github_stub, cache_root
):
    npm_fixtures.require_npm_cache()
    name = f"ts-{uuid.uuid4().hex[:8]}"
    url = git_server.create_repo("acme", name, npm_fixtures.project_files())
    model.play(
        s.say(s.bash("npm test")),  # the agent runs the tests as the worker does
        s.say(s.create("src/calc.ts", CALC_MUL), s.create("src/mul.test.ts", MUL_TEST)),
        s.done("mul"),
    )
    job = {
        "operation_type": "feature_implementation",
        "description": "add mul(a, b) to src/calc.ts",
        "repository": {"url": url, "owner": "acme", "name": name, "branch": "main"},
        "operation_id": f"op-{uuid.uuid4().hex[:12]}",
        "max_iterations": 1,
    }

    result = client.send_task("codeworker.feature_implementation", args=[job], queue=QUEUE).get(
        timeout=RESULT_TIMEOUT
    )

    ran = str(model.messages_requests[-2]["messages"][-1]["content"])
    assert "1 passed" in ran and "Out of memory" not in ran, ran
    verification = result["verification"]
    assert result["success"] is True and result["pr"]["draft"] is False, result["error"]
    # Per test, from Vitest's JUnit report: the new test fails on the base code and passes now.
    assert verification["before"]["tests"] == {"src/calc.test.ts::add": "passed"}
    assert verification["after"]["tests"] == {
        "src/calc.test.ts::add": "passed",
        "src/mul.test.ts::mul": "passed",
    }
    assert verification["reproduced"] == ["src/mul.test.ts::mul"]
    assert verification["pass_on_base"] == [] and verification["regressions"] == []
    # Setup installed Vitest into the setup cache, once, from the offline npm cache.
    [entry] = [path for path in (cache_root / repo_id(url)).iterdir() if path.is_dir()]
    assert (entry / "node_modules" / "vitest" / "package.json").is_file()
    # node_modules is mounted, never committed: only the agent's files are.
    assert result["files_modified"] == ["src/calc.ts", "src/mul.test.ts"]
    branch = result["branch"]
    assert git_server.read_file("acme", name, branch, "src/mul.test.ts") == MUL_TEST
    assert git_server.read_file("acme", name, branch, "node_modules") is None
    [pull] = github_stub.pull_requests("acme", name)
    assert pull["head"]["ref"] == branch
