""" "Verified" means proven, through a real worker: the agent (driven by the scripted model stand-in)
or an executor plugin changes a small pytest project, and the worker's own verification decides
the result, the pull request's draft flag and body, and the ``codeworker/verification`` check run
on the pushed head commit. One test per rule of the README's Verification section, and the same
rules on repositories that are not pytest projects: a JavaScript one tested with ``node --test``,
and one whose own runner writes JUnit XML where ``.codeworker.yml``'s ``junit:`` says."""

from __future__ import annotations

import uuid

import pytest

from tests.support import anthropic_stub as s
from tests.support.jobs import QUEUE, RESULT_TIMEOUT, scripted_job
from tests.support.projects import CALC_JS_FIXED, CALC_PY, CHECK_MUL, JUNIT_PROJECT, NODE_PROJECT

CALC = "def add(a, b):\n    return a + b\n"
CALC_MUL = CALC + "\n\ndef mul(a, b):\n    return a * b\n"
ADD_TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
MUL_TEST = "from calc import mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n"
PROJECT = {"calc.py": CALC, "tests/test_calc.py": ADD_TEST, "pytest.ini": "[pytest]\npythonpath = .\n"}

SUB_BUG = CALC + "\n\ndef sub(a, b):\n    return a + b\n"
SUB_FIXED = CALC + "\n\ndef sub(a, b):\n    return a - b\n"
SUB_REPRO = "from calc import sub\n\n\ndef test_sub():\n    assert sub(5, 3) == 2\n"
ERROR = {"error_message": "sub(5, 3) returned 8", "affected_files": ["calc.py"]}

FLAKY = (
    "import pathlib\n\n\ndef test_flaky():\n"
    "    marker = pathlib.Path(__file__).parent / '.state' / 'seen'\n"
    "    if marker.exists():\n        marker.unlink()\n        return\n"
    "    marker.parent.mkdir(exist_ok=True)\n    marker.write_text('x')\n    assert False\n"
)


@pytest.fixture(scope="module")
def worker_env(worker_env: dict, model: s.AnthropicStub) -> dict:
    return {**worker_env, "ANTHROPIC_BASE_URL": model.url, "CODEWORKER_SETUP_NETWORK": "none"}


def repo(git_server, files: dict[str, str]) -> tuple[str, str]:
    name = f"v-{uuid.uuid4().hex[:8]}"
    return name, git_server.create_repo("acme", name, files)


def agent_job(operation_type: str, url: str, name: str, **extra: object) -> dict:
    return {
        "operation_type": operation_type,
        "description": "calc needs work",
        "repository": {"url": url, "owner": "acme", "name": name, "branch": "main"},
        "operation_id": f"op-{uuid.uuid4().hex[:12]}",
        "max_iterations": 1,
        **extra,
    }


def run(client, job: dict) -> dict:
    task = f"codeworker.{job['operation_type']}"
    return client.send_task(task, args=[job], queue=QUEUE).get(timeout=RESULT_TIMEOUT)


def check_run(github_stub, name: str, result: dict) -> dict:
    [check] = github_stub.check_runs("acme", name)
    assert check["name"] == "codeworker/verification" and check["head_sha"] == result["commits"][-1]
    return check


def test_acceptance_tests_that_existed_and_now_pass_verify_a_feature(client, model, git_server, github_stub):
    name, url = repo(git_server, {**PROJECT, "tests/test_mul.py": MUL_TEST})
    model.play(s.say(s.create("calc.py", CALC_MUL)), s.done("mul added"))

    result = run(client, agent_job("feature_implementation", url, name))

    assert result["success"] is True and result["pr"]["draft"] is False, result["error"]
    verification = result["verification"]
    assert verification["verified"] is True and verification["fixed"] == ["tests/test_mul.py"]
    check = check_run(github_stub, name, result)
    assert check["conclusion"] == "success" and check["status"] == "completed"
    [pull] = github_stub.pull_requests("acme", name)
    assert "| failed before, pass now | `tests/test_mul.py` |" in pull["body"]


def test_a_new_test_that_passes_on_the_base_code_proves_nothing(client, model, git_server, github_stub):
    name, url = repo(git_server, PROJECT)
    add_again = ADD_TEST.replace("test_add", "test_add_again")
    model.play(s.say(s.create("calc.py", CALC_MUL), s.create("tests/test_more.py", add_again)), s.done())

    result = run(client, agent_job("feature_implementation", url, name))

    assert result["success"] is False and result["status"] == "pr_open" and result["pr"]["draft"] is True
    assert "tests/test_more.py::test_add_again passes on the base code too" in result["error"]
    assert result["verification"]["pass_on_base"] == ["tests/test_more.py::test_add_again"]
    check = check_run(github_stub, name, result)
    assert check["conclusion"] == "neutral" and "not verified" in check["output"]["title"]


def test_an_error_fix_with_a_reproduction_test_is_verified(client, model, git_server, github_stub):
    name, url = repo(git_server, {**PROJECT, "calc.py": SUB_BUG})
    model.play(s.say(s.create("tests/test_sub.py", SUB_REPRO), s.create("calc.py", SUB_FIXED)), s.done())

    result = run(client, agent_job("error_fix", url, name, error_context=ERROR))

    assert result["success"] is True, result["error"]
    assert result["verification"]["reproduced"] == ["tests/test_sub.py::test_sub"]
    # The agent was told what evidence the worker looks for.
    system = model.messages_requests[-2]["system"][0]["text"]
    assert "a test you write first that reproduces the error" in system


def test_an_error_fix_without_a_reproduction_test_is_not_verified(client, model, git_server, github_stub):
    name, url = repo(git_server, {**PROJECT, "calc.py": SUB_BUG})
    model.play(s.say(s.create("calc.py", SUB_FIXED)), s.done())

    result = run(client, agent_job("error_fix", url, name, error_context=ERROR))

    assert result["success"] is False and result["pr"]["draft"] is True
    assert result["error"].startswith("not verified: no test reproduces the reported error")


def test_a_flaky_test_at_baseline_is_reported_and_is_no_evidence(client, model, git_server, github_stub):
    files = {**PROJECT, "calc.py": SUB_BUG, "tests/test_flaky.py": FLAKY, ".gitignore": ".state/\n"}
    name, url = repo(git_server, files)
    model.play(s.say(s.create("calc.py", SUB_FIXED)), s.done())

    result = run(client, agent_job("error_fix", url, name, error_context=ERROR))

    assert result["verification"]["flaky"] == ["tests/test_flaky.py::test_flaky"]
    assert result["success"] is False
    assert "no test reproduces the reported error" in result["error"]


def test_an_executor_that_claims_success_is_not_trusted(client, git_server, github_stub):
    name, url = repo(git_server, PROJECT)
    job = scripted_job(url, name, {"write": {"NOTES.md": "done\n"}, "claim_verified": True})
    job["operation_type"] = "feature_implementation"

    result = run(client, job)

    assert result["success"] is False and result["pr"]["draft"] is True
    assert result["error"].startswith("not verified: no test shows the feature")


def test_a_refused_check_run_does_not_fail_the_job(client, model, git_server, github_stub, worker):
    name, url = repo(git_server, {**PROJECT, "tests/test_mul.py": MUL_TEST})
    github_stub.fail_next("POST", r"/check-runs$", status=403, after_processing=False, times=2)
    model.play(s.say(s.create("calc.py", CALC_MUL)), s.done())

    result = run(client, agent_job("feature_implementation", url, name))

    assert result["success"] is True and result["status"] == "pr_open", result["error"]
    assert github_stub.check_runs("acme", name) == []
    assert "check runs are refused (a GitHub App token is needed)" in worker.output


def test_a_javascript_error_fix_is_verified_per_test(client, model, git_server, github_stub):
    name, url = repo(git_server, NODE_PROJECT)
    model.play(s.say(s.create("calc.js", CALC_JS_FIXED)), s.done("sub fixed"))

    error = {"error_message": "sub(5, 3) returned 8", "affected_files": ["calc.js"]}
    result = run(client, agent_job("error_fix", url, name, error_context=error))

    assert result["success"] is True and result["status"] == "pr_open", result["error"]
    verification = result["verification"]
    assert verification["fixed"] == ["test/calc.test.js::sub > subtracts"]
    assert verification["after"]["tests"] == {
        "test/calc.test.js::adds": "passed",
        "test/calc.test.js::sub > subtracts": "passed",
    }
    assert result["files_modified"] == ["calc.js"]  # neither node_modules nor a report
    [pull] = github_stub.pull_requests("acme", name)
    assert "`test/calc.test.js::sub > subtracts`" in pull["body"]
    # The agent was told what it works on and how the worker runs its tests.
    system = model.messages_requests[-2]["system"][0]["text"]
    assert "The repository: a JavaScript/TypeScript project. The worker runs its tests with " in system
    assert "`node --test` (node:test)" in system


def test_a_runner_writing_junit_verifies_a_feature_per_test(client, model, git_server, github_stub):
    name, url = repo(git_server, JUNIT_PROJECT)
    mul = CALC_PY + "\n\ndef mul(a, b):\n    return a * b\n"
    model.play(s.say(s.create("calc.py", mul), s.create("tests/test_mul.py", CHECK_MUL)), s.done("mul"))

    result = run(client, agent_job("feature_implementation", url, name))

    assert result["success"] is True, result["error"]
    assert result["verification"]["reproduced"] == ["tests/test_mul.py::check_mul"]
    assert sorted(result["files_modified"]) == ["calc.py", "tests/test_mul.py"]


def test_a_package_json_without_a_test_script_fails_the_job_clearly(client, git_server):
    files = {"package.json": '{"name": "calc", "scripts": {"build": "tsc"}}', "src/calc.ts": "export {};\n"}
    name, url = repo(git_server, files)

    result = run(client, agent_job("error_fix", url, name))

    assert result["success"] is False and result["status"] == "failed"
    assert result["error"].startswith('package.json has no "test" script, so the worker cannot run the tests')
    assert result["commits"] == [] and git_server.branches("acme", name) == ["main"]
