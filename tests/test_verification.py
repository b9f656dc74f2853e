"""Verification on small real pytest projects, in real worktrees, with the real sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from codeworker.loopback.gitserver import GitServer
from codeworker.models import TestRun
from codeworker.verification.junit import parse_junit
from codeworker.verification.verifier import Verifier, feedback
from tests.support.verification_jobs import Open, job_opener, verify, write

CALC = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a + b  # bug\n"
CALC_FIXED = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
ADD_ONLY_TESTS = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
TESTS = (
    "from calc import add, sub\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
    "def test_sub():\n    assert sub(5, 3) == 2\n"
)
PROJECT = {"calc.py": CALC, "tests/test_calc.py": TESTS, "pytest.ini": "[pytest]\npythonpath = .\n"}


@pytest.fixture()
def open_job(tmp_path: Path, git_server: GitServer, redis_client: redis.Redis) -> Iterator[Open]:
    """Creates a repository with ``files``, checks it out and returns the job and its workspace."""
    with job_opener(tmp_path, git_server, redis_client) as open_:
        yield lambda operation_type, files=PROJECT, **fields: open_(operation_type, files, **fields)


# -- per-test results ---------------------------------------------------------------------------


def test_baseline_reports_each_test(open_job: Open) -> None:
    job, box = open_job("error_fix")
    before = Verifier(job, box).baseline()

    assert before is not None and not before.passed
    assert before.tests == {
        "tests/test_calc.py::test_add": "passed",
        "tests/test_calc.py::test_sub": "failed",
    }
    assert before.counts == {"passed": 1, "failed": 1}
    assert "assert 8 == 2" in before.failures["tests/test_calc.py::test_sub"]
    assert list(box.scratch.iterdir()) == []  # reports are read and removed
    assert box.changed_files() == []  # and never land in the checkout


def test_classes_and_parameters_keep_pytest_node_ids(open_job: Open) -> None:
    tests = (
        "import pytest\n\n\nclass TestMath:\n    @pytest.mark.parametrize('n', [1, 2])\n"
        "    def test_pos(self, n):\n        assert n > 0\n\n    def test_skip(self):\n"
        "        pytest.skip('later')\n"
    )
    job, box = open_job("refactor", {"tests/test_math.py": tests})
    run = Verifier(job, box).baseline()

    assert run is not None and run.passed
    assert run.tests == {
        "tests/test_math.py::TestMath::test_pos[1]": "passed",
        "tests/test_math.py::TestMath::test_pos[2]": "passed",
        "tests/test_math.py::TestMath::test_skip": "skipped",
    }


def test_a_broken_junit_file_means_no_per_test_results(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text("<testsuite><testcase")
    assert parse_junit(tmp_path / "junit.xml") == ({}, {})


# -- error_fix ----------------------------------------------------------------------------------

ERROR = {"error_message": "AssertionError: assert 8 == 2", "stack_trace": "tests/test_calc.py:9: in test_sub"}


def test_error_fix_passes_when_the_named_test_is_fixed(open_job: Open) -> None:
    job, box = open_job("error_fix", error_context=ERROR)
    verdict = verify(job, box, {"calc.py": CALC_FIXED})

    assert verdict.verified, verdict.reasons
    assert verdict.before is not None and verdict.after is not None
    assert verdict.after.tests["tests/test_calc.py::test_sub"] == "passed"


def test_error_fix_fails_while_the_named_test_still_fails(open_job: Open) -> None:
    job, box = open_job("error_fix", error_context=ERROR)
    verdict = verify(job, box, {"calc.py": CALC + "\n# touched\n"})

    assert not verdict.verified
    assert verdict.reasons == ["tests/test_calc.py::test_sub still fails"]
    text = feedback(verdict, limit=2_000)
    assert text.startswith("Verification failed:\n- tests/test_calc.py::test_sub still fails")
    assert "assert 8 == 2" in text and len(text) <= 2_000 + 100


def test_error_fix_fails_when_it_breaks_a_passing_test(open_job: Open) -> None:
    job, box = open_job("error_fix", error_context=ERROR)
    broken = CALC_FIXED.replace("return a + b", "return a * b")
    verdict = verify(job, box, {"calc.py": broken})

    assert not verdict.verified
    assert verdict.reasons == ["tests/test_calc.py::test_add passed before and now fails"]


def test_error_fix_only_requires_the_tests_the_error_names(open_job: Open) -> None:
    also_failing = TESTS + "\n\ndef test_unrelated():\n    assert False\n"
    files = {**PROJECT, "tests/test_calc.py": also_failing}
    job, box = open_job("error_fix", files, error_context={"error_message": "test_sub fails"})
    verdict = verify(job, box, {"calc.py": CALC_FIXED})

    assert verdict.verified, verdict.reasons  # test_unrelated failed before and was not the job


def test_error_fix_without_a_match_requires_every_baseline_failure_fixed(open_job: Open) -> None:
    also_failing = TESTS + "\n\ndef test_unrelated():\n    assert False\n"
    files = {**PROJECT, "tests/test_calc.py": also_failing}
    job, box = open_job("error_fix", files, error_context={"error_message": "something is off"})
    verdict = verify(job, box, {"calc.py": CALC_FIXED})

    assert verdict.reasons == ["tests/test_calc.py::test_unrelated still fails"]


def test_deleting_the_failing_test_is_not_a_fix(open_job: Open) -> None:
    job, box = open_job("error_fix", error_context=ERROR)
    only_add = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    verdict = verify(job, box, {"tests/test_calc.py": only_add})

    assert verdict.reasons == ["tests/test_calc.py::test_sub still does not run"]


REPRO = "from calc import sub\n\n\ndef test_sub_small():\n    assert sub(1, 1) == 0\n"
PASSING_PROJECT = {**PROJECT, "tests/test_calc.py": ADD_ONLY_TESTS}
NO_REPRO = (
    "no test reproduces the reported error: no test failed before the fix, and no new or changed "
    "test fails on the base code and passes with it"
)


def test_error_fix_with_a_reproduction_test_when_no_test_failed(open_job: Open) -> None:
    job, box = open_job("error_fix", PASSING_PROJECT, error_context=ERROR)
    verdict = verify(job, box, {"calc.py": CALC_FIXED, "tests/test_repro.py": REPRO})
    assert verdict.verified, verdict.reasons
    assert verdict.reproduced == ["tests/test_repro.py::test_sub_small"]


def test_error_fix_without_a_reproduction_test_is_not_verified(open_job: Open) -> None:
    job, box = open_job("error_fix", PASSING_PROJECT, error_context=ERROR)
    verdict = verify(job, box, {"calc.py": CALC_FIXED})
    assert verdict.reasons == [NO_REPRO]


FLAKY = (
    "import pathlib\n\n\ndef test_flaky():\n"
    "    marker = pathlib.Path(__file__).parent / '.state' / 'seen'\n"
    "    if marker.exists():\n        marker.unlink()\n        return\n"
    "    marker.parent.mkdir(exist_ok=True)\n    marker.write_text('x')\n    assert False\n"
)
"""Fails, then passes, then fails...: its outcome flips on the same code."""


def test_a_flaky_test_at_baseline_is_reported_and_is_no_evidence(open_job: Open) -> None:
    files = {**PASSING_PROJECT, "tests/test_flaky.py": FLAKY, ".gitignore": ".state/\n"}
    job, box = open_job("error_fix", files, error_context=ERROR)
    verdict = verify(job, box, {"calc.py": CALC_FIXED})
    assert verdict.flaky == ["tests/test_flaky.py::test_flaky"]
    assert verdict.reasons == [NO_REPRO]  # the flaky failure is not the error to fix


# -- feature_implementation ---------------------------------------------------------------------

MUL = CALC_FIXED + "\n\ndef mul(a, b):\n    return a * b\n"
MUL_TEST = "from calc import mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n"
FIXED_PROJECT = {**PROJECT, "calc.py": CALC_FIXED}


NO_FEATURE_EVIDENCE = (
    "no test shows the feature: none failed before the change and passes with it, and no new or "
    "changed test fails on the base code and passes with the change"
)


def test_feature_with_a_new_test_that_fails_on_the_base_code(open_job: Open) -> None:
    job, box = open_job("feature_implementation", FIXED_PROJECT)
    verdict = verify(job, box, {"calc.py": MUL, "tests/test_mul.py": MUL_TEST})
    assert verdict.verified, verdict.reasons
    assert verdict.reproduced == ["tests/test_mul.py::test_mul"] and verdict.fixed == []
    assert box.changed_files() == ["calc.py", "tests/test_mul.py"]  # the base copy left no trace
    assert list(box.scratch.iterdir()) == []


def test_feature_whose_acceptance_tests_existed_and_now_pass(open_job: Open) -> None:
    """The "I wrote the failing tests, please implement" workflow: no new test is needed."""
    job, box = open_job("feature_implementation", {**FIXED_PROJECT, "tests/test_mul.py": MUL_TEST})
    verdict = verify(job, box, {"calc.py": MUL})
    assert verdict.verified, verdict.reasons
    # At baseline the module failed to import: pytest reports the file, not its tests.
    assert verdict.fixed == ["tests/test_mul.py"] and verdict.reproduced == []


def test_feature_whose_new_test_passes_on_the_base_code_proves_nothing(open_job: Open) -> None:
    add_again = "from calc import add\n\n\ndef test_add_again():\n    assert add(1, 1) == 2\n"
    job, box = open_job("feature_implementation", FIXED_PROJECT)
    verdict = verify(job, box, {"calc.py": MUL, "tests/test_more.py": add_again})
    assert verdict.reasons == [
        NO_FEATURE_EVIDENCE,
        "tests/test_more.py::test_add_again passes on the base code too, so it does not exercise the change",
    ]
    assert verdict.pass_on_base == ["tests/test_more.py::test_add_again"]


def test_feature_without_tests_is_not_verified(open_job: Open) -> None:
    job, box = open_job("feature_implementation", FIXED_PROJECT)
    verdict = verify(job, box, {"calc.py": MUL})
    assert verdict.reasons == [NO_FEATURE_EVIDENCE]


def test_feature_whose_new_test_fails(open_job: Open) -> None:
    job, box = open_job("feature_implementation", FIXED_PROJECT)
    verdict = verify(job, box, {"calc.py": MUL.replace("a * b", "a ** b"), "tests/test_mul.py": MUL_TEST})
    assert verdict.reasons == [NO_FEATURE_EVIDENCE, "tests/test_mul.py::test_mul fails"]


def test_a_new_test_file_that_cannot_be_imported(open_job: Open) -> None:
    job, box = open_job("feature_implementation", FIXED_PROJECT)
    verdict = verify(job, box, {"tests/test_mul.py": MUL_TEST})  # calc has no mul yet

    # pytest stops at a collection error, so nothing else runs either.
    assert verdict.reasons[:2] == [NO_FEATURE_EVIDENCE, "tests/test_mul.py errors"]
    assert "tests/test_calc.py::test_add passed before and no longer runs" in verdict.reasons
    assert "ImportError" in feedback(verdict)


# -- refactor -----------------------------------------------------------------------------------


def test_refactor_with_identical_outcomes(open_job: Open) -> None:
    job, box = open_job("refactor")  # test_sub fails before and after: still "identical"
    renamed = CALC.replace("def add(a, b):\n    return a + b", "def add(x, y):\n    return x + y")
    verdict = verify(job, box, {"calc.py": renamed})
    assert verdict.verified, verdict.reasons


def test_refactor_that_changes_an_outcome(open_job: Open) -> None:
    job, box = open_job("refactor")
    verdict = verify(job, box, {"calc.py": CALC_FIXED})  # "fixing" is a behaviour change too
    assert verdict.reasons == ["tests/test_calc.py::test_sub was failed and is now passed"]


def test_refactor_without_a_diff(open_job: Open) -> None:
    job, box = open_job("refactor")
    verdict = verify(job, box, {})
    assert verdict.reasons == ["the refactor changed nothing"]


# -- test ---------------------------------------------------------------------------------------

ADD_ONLY = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
SUB_TEST = "from calc import sub\n\n\ndef test_sub():\n    assert sub(5, 3) == 2\n"
TEST_PROJECT = {**FIXED_PROJECT, "tests/test_calc.py": ADD_ONLY}


def test_test_job_that_raises_coverage(open_job: Open) -> None:
    job, box = open_job("test", TEST_PROJECT, target_files=["calc.py"])
    verdict = verify(job, box, {"tests/test_sub.py": SUB_TEST})

    assert verdict.verified, verdict.reasons
    assert verdict.before is not None and verdict.after is not None
    assert verdict.before.coverage == pytest.approx(75.0)
    assert verdict.after.coverage == pytest.approx(100.0)


def test_test_job_that_does_not_raise_coverage(open_job: Open) -> None:
    job, box = open_job("test", TEST_PROJECT, target_files=["calc.py"])
    again = ADD_ONLY.replace("test_add", "test_add_again")
    verdict = verify(job, box, {"tests/test_again.py": again})
    assert verdict.reasons == ["line coverage of the target files did not rise (75.0% -> 75.0%)"]


def test_test_job_whose_new_test_fails(open_job: Open) -> None:
    job, box = open_job("test", TEST_PROJECT, target_files=["calc.py"])
    verdict = verify(job, box, {"tests/test_sub.py": SUB_TEST.replace("== 2", "== 3")})
    assert "tests/test_sub.py::test_sub fails" in verdict.reasons


def test_test_job_without_test_files(open_job: Open) -> None:
    job, box = open_job("test", TEST_PROJECT, target_files=["calc.py"])
    verdict = verify(job, box, {"calc.py": CALC_FIXED + "\n"})
    assert verdict.reasons == ["no test file was added or changed"]


# -- commands that are not pytest ---------------------------------------------------------------

CHECK = "python -c 'from calc import sub; assert sub(5, 3) == 2'"


def test_a_non_pytest_command_is_judged_by_exit_status(open_job: Open) -> None:
    job, box = open_job("error_fix", {"calc.py": CALC}, test_command=CHECK)
    verifier = Verifier(job, box)
    before = verifier.baseline()
    assert before is not None and before.tests == {} and not before.passed

    still = verifier.verify()
    write(box, {"calc.py": CALC_FIXED})
    fixed = verifier.verify()

    assert still.reasons == [f"`{CHECK}` failed (exit 1)"]
    assert "AssertionError" in feedback(still)
    assert fixed.verified, fixed.reasons


def test_no_test_command_cannot_verify(open_job: Open) -> None:
    job, box = open_job("error_fix", {"calc.py": CALC})
    verdict = verify(job, box, {"calc.py": CALC_FIXED})
    assert verdict.reasons == ["the repository has no test command, so nothing can verify the change"]


def test_results_round_trip_through_json() -> None:
    run = TestRun(command="pytest", exit_code=1, passed=False, tests={"a::b": "failed"}, coverage=50.0)
    assert TestRun.model_validate_json(run.model_dump_json()) == run
