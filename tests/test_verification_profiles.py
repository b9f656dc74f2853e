"""Verification per test beyond pytest, on real worktrees with the real sandbox: a JavaScript
repository whose tests run with ``node --test`` (no install needed), and a repository whose own
runner writes JUnit XML where ``junit:`` in ``.codeworker.yml`` says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from codeworker.loopback.gitserver import GitServer
from codeworker.verification.verifier import Verifier
from tests.support.projects import (
    CALC_JS_FIXED,
    CALC_PY,
    CALC_TEST_JS,
    CHECK_ADD,
    CHECK_MUL,
    JUNIT_PROJECT,
    NODE_PROJECT,
)
from tests.support.verification_jobs import Open, job_opener, verify, write


@pytest.fixture()
def open_job(tmp_path: Path, git_server: GitServer, redis_client: redis.Redis) -> Iterator[Open]:
    with job_opener(tmp_path, git_server, redis_client) as open_:
        yield open_


def test_node_test_reports_per_test_in_the_sandbox(open_job: Open) -> None:
    job, box = open_job("error_fix", NODE_PROJECT, error_context={"error_message": "sub(5, 3) returned 8"})
    assert box.profile.name == "javascript" and box.test_command() == "node --test"

    verdict = verify(job, box, {"calc.js": CALC_JS_FIXED})

    assert verdict.before is not None and verdict.before.tests == {
        "test/calc.test.js::adds": "passed",
        "test/calc.test.js::sub > subtracts": "failed",
    }
    assert "8 !== 2" in verdict.before.failures["test/calc.test.js::sub > subtracts"]
    assert verdict.verified, verdict.reasons
    assert verdict.fixed == ["test/calc.test.js::sub > subtracts"]
    assert list(box.scratch.iterdir()) == []  # the reporter and the report are gone
    assert box.changed_files() == ["calc.js"]


def test_a_new_node_test_is_run_on_the_base_code(open_job: Open) -> None:
    files = {**NODE_PROJECT, "calc.js": CALC_JS_FIXED, "test/calc.test.js": CALC_TEST_JS}
    job, box = open_job("feature_implementation", files)
    mul_test = (
        "const test = require('node:test');\nconst assert = require('node:assert');\n"
        "const { mul } = require('../calc');\n\n"
        "test('multiplies', () => { assert.strictEqual(mul(2, 3), 6); });\n"
    )
    change = {"calc.js": CALC_JS_FIXED + "exports.mul = (a, b) => a * b;\n", "test/mul.test.js": mul_test}

    verdict = verify(job, box, change)

    assert verdict.verified, verdict.reasons
    assert verdict.reproduced == ["test/mul.test.js::multiplies"]


def test_junit_files_named_in_the_config_give_per_test_results(open_job: Open) -> None:
    job, box = open_job("feature_implementation", JUNIT_PROJECT)
    # A report the agent's own run left behind is never read as the worker's.
    write(box, {"build/old.xml": '<testsuite><testcase classname="stale" name="x"/></testsuite>'})
    verifier = Verifier(job, box)
    before = verifier.baseline()
    assert before is not None and before.tests == {"tests/test_add.py::check_add": "passed"}

    write(
        box, {"calc.py": CALC_PY + "\n\ndef mul(a, b):\n    return a * b\n", "tests/test_mul.py": CHECK_MUL}
    )
    verdict = verifier.verify()

    assert verdict.verified, verdict.reasons
    # On the base code the module does not import: the whole command ran there, and its report
    # was read from the base copy.
    assert verdict.reproduced == ["tests/test_mul.py::check_mul"]
    assert not (box.root / "build").exists() or list((box.root / "build").iterdir()) == []
    assert box.changed_files() == ["calc.py", "tests/test_mul.py"]


def test_junit_results_show_a_test_still_failing(open_job: Open) -> None:
    failing = {**JUNIT_PROJECT, "tests/test_add.py": CHECK_ADD.replace("== 5", "== 6")}
    job, box = open_job("error_fix", failing, error_context={"error_message": "check_add fails"})
    verdict = verify(job, box, {"calc.py": CALC_PY + "# touched\n"})
    assert verdict.reasons == ["tests/test_add.py::check_add still fails"]
    assert (
        verdict.after is not None
        and "AssertionError" in verdict.after.failures["tests/test_add.py::check_add"]
    )
