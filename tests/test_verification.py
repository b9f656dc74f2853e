"""Verification on small real pytest projects, in real worktrees, with the real sandbox."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from codeworker.config import Settings
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.locks import FileLocks
from codeworker.git.mirrors import Mirrors
from codeworker.loopback.gitserver import GitServer
from codeworker.models import Job, TestRun, parse_job
from codeworker.sandbox.checkout import Checkout
from codeworker.verification.junit import parse_junit
from codeworker.verification.verifier import Verdict, Verifier
from tests.conftest import GITHUB_TOKEN

CALC = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a + b  # bug\n"
CALC_FIXED = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
TESTS = (
    "from calc import add, sub\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
    "def test_sub():\n    assert sub(5, 3) == 2\n"
)
PROJECT = {"calc.py": CALC, "tests/test_calc.py": TESTS, "pytest.ini": "[pytest]\npythonpath = .\n"}

Open = Callable[..., tuple[Job, Checkout]]


@pytest.fixture()
def open_job(tmp_path: Path, git_server: GitServer, redis_client: redis.Redis) -> Iterator[Open]:
    """Creates a repository with ``files``, checks it out and returns the job and its workspace."""
    settings = Settings(
        workspace_root=tmp_path / "ws", cache_root=tmp_path / "cache", github_token=SecretStr(GITHUB_TOKEN)
    )
    mirrors = Mirrors(settings.workspace_root, settings.github_token, 5_000, 30_000)
    opened: list[tuple[Checkout, object]] = []

    def open_(operation_type: str, files: dict[str, str] = PROJECT, **fields: object) -> tuple[Job, Checkout]:
        name = f"v{uuid.uuid4().hex[:8]}"
        url = git_server.create_repo("acme", name, files)
        job = parse_job(
            {"description": "verify me", "repository": {"url": url}, **fields},
            operation_type=operation_type,
            allowed_repos=[git_server.base_url],
            max_iterations_cap=10,
        )
        worktree = mirrors.checkout(url, "main", f"codeworker/{job.operation_id}", job.operation_id, "a1")
        locks = FileLocks(redis_client, Keys(), repo_id(url), job.operation_id, 30)
        box = Checkout(worktree, locks, settings, job.test_command)
        opened.append((box, worktree))
        return job, box

    yield open_
    for box, worktree in opened:
        box.close()
        worktree.remove()  # type: ignore[attr-defined]


def _write(box: Checkout, files: dict[str, str]) -> None:
    for path, content in files.items():
        target = box.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def _verify(job: Job, box: Checkout, change: dict[str, str]) -> Verdict:
    verifier = Verifier(job, box)
    before = verifier.baseline()
    _write(box, change)
    return verifier.verify(before)


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
    verdict = _verify(job, box, {"calc.py": CALC_FIXED})

    assert verdict.ok, verdict.reasons
    assert verdict.before is not None and verdict.after is not None
    assert verdict.after.tests["tests/test_calc.py::test_sub"] == "passed"


def test_error_fix_fails_while_the_named_test_still_fails(open_job: Open) -> None:
    job, box = open_job("error_fix", error_context=ERROR)
    verdict = _verify(job, box, {"calc.py": CALC + "\n# touched\n"})

    assert not verdict.ok
    assert verdict.reasons == ["tests/test_calc.py::test_sub still fails"]
    feedback = verdict.feedback(limit=2_000)
    assert feedback.startswith("Verification failed:\n- tests/test_calc.py::test_sub still fails")
    assert "assert 8 == 2" in feedback and len(feedback) <= 2_000 + 100


def test_error_fix_fails_when_it_breaks_a_passing_test(open_job: Open) -> None:
    job, box = open_job("error_fix", error_context=ERROR)
    broken = CALC_FIXED.replace("return a + b", "return a * b")
    verdict = _verify(job, box, {"calc.py": broken})

    assert not verdict.ok
    assert verdict.reasons == ["tests/test_calc.py::test_add passed before and now fails"]


def test_error_fix_only_requires_the_tests_the_error_names(open_job: Open) -> None:
    also_failing = TESTS + "\n\ndef test_unrelated():\n    assert False\n"
    files = {**PROJECT, "tests/test_calc.py": also_failing}
    job, box = open_job("error_fix", files, error_context={"error_message": "test_sub fails"})
    verdict = _verify(job, box, {"calc.py": CALC_FIXED})

    assert verdict.ok, verdict.reasons  # test_unrelated failed before and was not the job


def test_error_fix_without_a_match_requires_every_baseline_failure_fixed(open_job: Open) -> None:
    also_failing = TESTS + "\n\ndef test_unrelated():\n    assert False\n"
    files = {**PROJECT, "tests/test_calc.py": also_failing}
    job, box = open_job("error_fix", files, error_context={"error_message": "something is off"})
    verdict = _verify(job, box, {"calc.py": CALC_FIXED})

    assert verdict.reasons == ["tests/test_calc.py::test_unrelated still fails"]


def test_deleting_the_failing_test_is_not_a_fix(open_job: Open) -> None:
    job, box = open_job("error_fix", error_context=ERROR)
    only_add = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    verdict = _verify(job, box, {"tests/test_calc.py": only_add})

    assert verdict.reasons == ["tests/test_calc.py::test_sub still does not run"]


# -- feature_implementation ---------------------------------------------------------------------

MUL = CALC_FIXED + "\n\ndef mul(a, b):\n    return a * b\n"
MUL_TEST = "from calc import mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n"
FIXED_PROJECT = {**PROJECT, "calc.py": CALC_FIXED}


def test_feature_with_new_passing_tests(open_job: Open) -> None:
    job, box = open_job("feature_implementation", FIXED_PROJECT)
    verdict = _verify(job, box, {"calc.py": MUL, "tests/test_mul.py": MUL_TEST})
    assert verdict.ok, verdict.reasons


def test_feature_without_tests_is_not_verified(open_job: Open) -> None:
    job, box = open_job("feature_implementation", FIXED_PROJECT)
    verdict = _verify(job, box, {"calc.py": MUL})
    assert verdict.reasons == ["no new or changed test covers the feature"]


def test_feature_whose_new_test_fails(open_job: Open) -> None:
    job, box = open_job("feature_implementation", FIXED_PROJECT)
    verdict = _verify(job, box, {"calc.py": MUL.replace("a * b", "a ** b"), "tests/test_mul.py": MUL_TEST})
    assert verdict.reasons == ["tests/test_mul.py::test_mul fails"]


def test_a_new_test_file_that_cannot_be_imported(open_job: Open) -> None:
    job, box = open_job("feature_implementation", FIXED_PROJECT)
    verdict = _verify(job, box, {"tests/test_mul.py": MUL_TEST})  # calc has no mul yet

    # pytest stops at a collection error, so nothing else runs either.
    assert verdict.reasons[0] == "tests/test_mul.py errors"
    assert "tests/test_calc.py::test_add passed before and no longer runs" in verdict.reasons
    assert "ImportError" in verdict.feedback()


# -- refactor -----------------------------------------------------------------------------------


def test_refactor_with_identical_outcomes(open_job: Open) -> None:
    job, box = open_job("refactor")  # test_sub fails before and after: still "identical"
    renamed = CALC.replace("def add(a, b):\n    return a + b", "def add(x, y):\n    return x + y")
    verdict = _verify(job, box, {"calc.py": renamed})
    assert verdict.ok, verdict.reasons


def test_refactor_that_changes_an_outcome(open_job: Open) -> None:
    job, box = open_job("refactor")
    verdict = _verify(job, box, {"calc.py": CALC_FIXED})  # "fixing" is a behaviour change too
    assert verdict.reasons == ["tests/test_calc.py::test_sub was failed and is now passed"]


def test_refactor_without_a_diff(open_job: Open) -> None:
    job, box = open_job("refactor")
    verdict = _verify(job, box, {})
    assert verdict.reasons == ["the refactor changed nothing"]


# -- test ---------------------------------------------------------------------------------------

ADD_ONLY = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
SUB_TEST = "from calc import sub\n\n\ndef test_sub():\n    assert sub(5, 3) == 2\n"
TEST_PROJECT = {**FIXED_PROJECT, "tests/test_calc.py": ADD_ONLY}


def test_test_job_that_raises_coverage(open_job: Open) -> None:
    job, box = open_job("test", TEST_PROJECT, target_files=["calc.py"])
    verdict = _verify(job, box, {"tests/test_sub.py": SUB_TEST})

    assert verdict.ok, verdict.reasons
    assert verdict.before is not None and verdict.after is not None
    assert verdict.before.coverage == pytest.approx(75.0)
    assert verdict.after.coverage == pytest.approx(100.0)


def test_test_job_that_does_not_raise_coverage(open_job: Open) -> None:
    job, box = open_job("test", TEST_PROJECT, target_files=["calc.py"])
    again = ADD_ONLY.replace("test_add", "test_add_again")
    verdict = _verify(job, box, {"tests/test_again.py": again})
    assert verdict.reasons == ["line coverage of the target files did not rise (75.0% -> 75.0%)"]


def test_test_job_whose_new_test_fails(open_job: Open) -> None:
    job, box = open_job("test", TEST_PROJECT, target_files=["calc.py"])
    verdict = _verify(job, box, {"tests/test_sub.py": SUB_TEST.replace("== 2", "== 3")})
    assert "tests/test_sub.py::test_sub fails" in verdict.reasons


def test_test_job_without_test_files(open_job: Open) -> None:
    job, box = open_job("test", TEST_PROJECT, target_files=["calc.py"])
    verdict = _verify(job, box, {"calc.py": CALC_FIXED + "\n"})
    assert verdict.reasons == ["no test file was added or changed"]


# -- commands that are not pytest ---------------------------------------------------------------

CHECK = "python -c 'from calc import sub; assert sub(5, 3) == 2'"


def test_a_non_pytest_command_is_judged_by_exit_status(open_job: Open) -> None:
    job, box = open_job("error_fix", {"calc.py": CALC}, test_command=CHECK)
    verifier = Verifier(job, box)
    before = verifier.baseline()
    assert before is not None and before.tests == {} and not before.passed

    still = verifier.verify(before)
    _write(box, {"calc.py": CALC_FIXED})
    fixed = verifier.verify(before)

    assert still.reasons == [f"`{CHECK}` failed (exit 1)"]
    assert "AssertionError" in still.feedback()
    assert fixed.ok, fixed.reasons


def test_no_test_command_cannot_verify(open_job: Open) -> None:
    job, box = open_job("error_fix", {"calc.py": CALC})
    verdict = _verify(job, box, {"calc.py": CALC_FIXED})
    assert verdict.reasons == ["the repository has no test command, so nothing can verify the change"]


def test_results_round_trip_through_json() -> None:
    run = TestRun(command="pytest", exit_code=1, passed=False, tests={"a::b": "failed"}, coverage=50.0)
    assert TestRun.model_validate_json(run.model_dump_json()) == run
