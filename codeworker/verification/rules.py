"""The rule of each operation type: whether the tests after the work show it is done.

- error_fix: the tests the error is about (failing at baseline and named by the error context;
  every test failing at baseline when none is named) now pass, and nothing that passed fails;
- feature_implementation: new or changed tests exist and pass, and nothing that passed fails;
- refactor: the diff is not empty and every test's outcome is exactly what it was;
- test: new or changed test files exist and pass, and line coverage of the target files rises.

A test that passed at baseline and is now skipped or gone counts as broken: deleting a failing test
is not a fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from codeworker.models import Job, OperationType, TestRun, for_every_type
from codeworker.verification.junit import ERROR, FAILED, PASSED, SKIPPED

TEST_FILE = re.compile(r"(^|/)(test_[^/]*\.py|[^/]*_test\.py|conftest\.py)$|(^|/)tests?/")
"""Paths that hold tests (pytest's default discovery, plus anything under test/ or tests/)."""


@dataclass
class Context:
    """What a rule looks at."""

    job: Job
    before: TestRun
    after: TestRun
    changed: list[str] = field(default_factory=list)
    """Paths the executor changed (the diff)."""


Rule = Callable[[Context], list[str]]
"""Returns the reasons the work fails; empty means it passes."""


def _per_test(context: Context) -> bool:
    return bool(context.before.tests or context.after.tests)


def regressions(before: TestRun, after: TestRun) -> list[str]:
    """Tests that passed at baseline and now fail, error, are skipped or are gone."""
    reasons = []
    for test_id, outcome in sorted(before.tests.items()):
        if outcome != PASSED:
            continue
        now = after.tests.get(test_id)
        if now is None:
            reasons.append(f"{test_id} passed before and no longer runs")
        elif now != PASSED:
            reasons.append(f"{test_id} passed before and now {_verb(now)}")
    return reasons


def _verb(outcome: str) -> str:
    return {FAILED: "fails", ERROR: "errors", SKIPPED: "is skipped"}.get(outcome, outcome)


def _not_passing(tests: dict[str, str]) -> list[str]:
    return sorted(test_id for test_id, outcome in tests.items() if outcome in (FAILED, ERROR))


def _suite_reasons(context: Context) -> list[str]:
    """Without per-test results, the command's exit status is the verdict."""
    after = context.after
    return [] if after.passed else [f"`{after.command}` failed (exit {after.exit_code})"]


def error_targets(job: Job, failing: Iterable[str]) -> list[str]:
    """Failing tests the error context names by id, function name or file; all when none is named."""
    failing = list(failing)
    context = job.error_context
    if context is None:
        return failing
    text = "\n".join([context.error_message, context.stack_trace, *context.affected_files])
    named = [test_id for test_id in failing if _mentioned(test_id, text)]
    return named or failing


def _mentioned(test_id: str, text: str) -> bool:
    file, _, rest = test_id.partition("::")
    name = rest.rsplit("::", 1)[-1].split("[", 1)[0]
    if test_id in text or (file.endswith(".py") and file in text):
        return True
    return bool(name) and re.search(rf"\b{re.escape(name)}\b", text) is not None


def error_fix_rule(context: Context) -> list[str]:
    if not _per_test(context):
        return _suite_reasons(context)
    targets = error_targets(context.job, _not_passing(context.before.tests))
    reasons = []
    for test_id in targets:
        now = context.after.tests.get(test_id)
        if now != PASSED:
            reasons.append(f"{test_id} still {_verb(now) if now else 'does not run'}")
    if not targets:
        reasons += [f"{test_id} fails" for test_id in _not_passing(context.after.tests)]
    return reasons + regressions(context.before, context.after)


def new_or_changed_tests(context: Context) -> list[str]:
    """Tests that did not exist at baseline, or live in a file the executor changed."""
    changed = {path for path in context.changed if TEST_FILE.search(path)}
    return sorted(
        test_id
        for test_id in context.after.tests
        if test_id not in context.before.tests or test_id.partition("::")[0] in changed
    )


def feature_rule(context: Context) -> list[str]:
    if not _per_test(context):
        return _suite_reasons(context)
    new = new_or_changed_tests(context)
    reasons = [] if new else ["no new or changed test covers the feature"]
    reasons += [
        f"{test_id} {_verb(context.after.tests[test_id])}"
        for test_id in new
        if context.after.tests[test_id] != PASSED
    ]
    return reasons + regressions(context.before, context.after)


def unchanged_outcome(context: Context) -> list[str]:
    """Every test's outcome is what it was (the whole command's, without per-test results)."""
    before, after = context.before, context.after
    if not _per_test(context):
        if before.passed == after.passed:
            return []
        return [f"`{after.command}` {'passed' if before.passed else 'failed'} before and now does not"]
    reasons = []
    for test_id in sorted(before.tests.keys() | after.tests.keys()):
        was, now = before.tests.get(test_id), after.tests.get(test_id)
        if was != now:
            reasons.append(f"{test_id} was {was or 'absent'} and is now {now or 'absent'}")
    return reasons


def refactor_rule(context: Context) -> list[str]:
    reasons = [] if context.changed else ["the refactor changed nothing"]
    return reasons + unchanged_outcome(context)


def test_rule(context: Context) -> list[str]:
    changed_tests = [path for path in context.changed if TEST_FILE.search(path)]
    if not changed_tests:
        return ["no test file was added or changed"]
    if not _per_test(context):
        return [*_suite_reasons(context), "the test command did not report per test (not pytest)"]
    reasons = []
    in_changed = [t for t in context.after.tests if t.partition("::")[0] in changed_tests]
    if not in_changed:
        reasons.append(f"no test runs from {', '.join(changed_tests)}")
    reasons += [
        f"{t} {_verb(context.after.tests[t])}" for t in in_changed if context.after.tests[t] != PASSED
    ]
    reasons += regressions(context.before, context.after)
    before, after = context.before.coverage, context.after.coverage
    if after is None:
        reasons.append("line coverage of the target files could not be measured")
    elif after <= (before or 0.0):
        reasons.append(
            f"line coverage of the target files did not rise ({before or 0.0:.1f}% -> {after:.1f}%)"
        )
    return reasons


test_rule.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite its name

RULES: dict[OperationType, Rule] = for_every_type(
    {
        OperationType.ERROR_FIX: error_fix_rule,
        OperationType.FEATURE_IMPLEMENTATION: feature_rule,
        OperationType.REFACTOR: refactor_rule,
        OperationType.TEST: test_rule,
    },
    "the verification rules",
)
"""The rule of each operation type."""
