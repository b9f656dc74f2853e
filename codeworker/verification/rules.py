"""The rule of each operation type: what the tests must show for a change to count as proven.

Evidence is a test that fails without the change and passes with it:

- error_fix: the tests the error is about (failing at baseline and named by the error context;
  every test failing at baseline when none is named) now pass; when no test failed at baseline, a
  new or changed test must fail on the base code and pass with the fix (a reproduction test);
- feature_implementation: some test failed at baseline and passes now (acceptance tests written
  before the feature), or a new or changed test fails on the base code and passes with the change;
  every new or changed test passes;
- refactor: the diff is not empty and every test's outcome is exactly what it was;
- test: new or changed test files exist and pass, and line coverage of the target files rises.

For every type, nothing that passed at baseline fails, errors, is skipped or is gone (deleting a
failing test is not a fix), and a test whose outcome flipped on the same code (flaky) is neither
evidence nor a regression. "The base code" is the checkout with every changed file that is not a
test back at its base version (:meth:`Verifier.verify`): a new test passing there does not
exercise the change.

A test command that does not report per test (its profile cannot read its results) is judged by
its exit status: a failing run that passes now is the evidence of an error fix or a feature, an
unchanged status that of a refactor. What counts as a test file is the repository's profile's
(``test_*.py`` for Python, ``*.test.ts`` for JavaScript, :mod:`codeworker.profiles`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from codeworker.models import Job, OperationType, TestRun, for_every_type
from codeworker.profiles.python import TEST_FILE
from codeworker.verification.junit import ERROR, FAILED, NOT_PASSING, PASSED, SKIPPED


def is_test_file(path: str) -> bool:
    """Whether ``path`` holds Python tests (the default profile's rule)."""
    return TEST_FILE.search(path) is not None


@dataclass
class Context:
    """What a rule looks at."""

    job: Job
    before: TestRun
    after: TestRun
    changed: list[str] = field(default_factory=list)
    """Paths the executor changed (the diff)."""
    on_base: dict[str, str] | None = None
    """Outcomes of the new or changed tests run on the base code; None when not run."""
    flaky: set[str] = field(default_factory=set)
    """Tests whose outcome differed between two runs of the same code."""
    is_test_file: Callable[[str], bool] = is_test_file
    """Whether a path holds tests, by the repository's profile."""

    @property
    def per_test(self) -> bool:
        return bool(self.before.tests or self.after.tests)

    def failing_at_baseline(self) -> list[str]:
        return sorted(t for t, o in self.before.tests.items() if o in NOT_PASSING and t not in self.flaky)

    def passes_now(self, test_id: str) -> bool:
        """Whether ``test_id`` passes after the change. A bare file (a module that failed to import)
        passes once every test it now holds passes, and it holds one."""
        if test_id in self.after.tests:
            return self.after.tests[test_id] == PASSED
        held = [o for t, o in self.after.tests.items() if t.partition("::")[0] == test_id and "::" in t]
        return bool(held) and all(o == PASSED for o in held)

    def fixed(self) -> list[str]:
        """Tests (or modules that failed to import) failing at baseline that pass now."""
        return [t for t in self.failing_at_baseline() if self.passes_now(t)]

    def new_or_changed(self) -> list[str]:
        """Tests in a file the executor added or changed, and tests that did not run at baseline
        although it ran to its end (a module that fails to import stops pytest's collection, and
        the tests it kept from running are not new)."""
        changed = set(self.changed)
        interrupted = any("::" not in test_id for test_id in self.before.tests)
        return sorted(
            test_id
            for test_id in self.after.tests
            if test_id.partition("::")[0] in changed or (test_id not in self.before.tests and not interrupted)
        )

    def passing_new(self) -> list[str]:
        return [t for t in self.new_or_changed() if self.after.tests[t] == PASSED and t not in self.flaky]

    def reproduced(self) -> list[str]:
        """New or changed tests that pass now and fail, error or do not exist on the base code (a
        test of a module that failed to import at baseline counts as fixed instead)."""
        if self.on_base is None:
            return []
        fixed_files = set(self.fixed())
        return [
            t
            for t in self.passing_new()
            if self.on_base.get(t) != PASSED and t.partition("::")[0] not in fixed_files
        ]

    def pass_on_base(self) -> list[str]:
        if self.on_base is None:
            return []
        return [t for t in self.passing_new() if self.on_base.get(t) == PASSED]

    def regressed(self) -> list[str]:
        """Tests that passed at baseline and now fail, error, are skipped or are gone."""
        return [
            test_id
            for test_id, outcome in sorted(self.before.tests.items())
            if outcome == PASSED and test_id not in self.flaky and self.after.tests.get(test_id) != PASSED
        ]

    def regressions(self) -> list[str]:
        """One reason per regressed test."""
        reasons = []
        for test_id in self.regressed():
            now = self.after.tests.get(test_id)
            reasons.append(f"{test_id} passed before and {f'now {_verb(now)}' if now else 'no longer runs'}")
        return reasons


Rule = Callable[[Context], list[str]]
"""Returns the reasons the work fails; empty means it passes."""


def _verb(outcome: str) -> str:
    return {FAILED: "fails", ERROR: "errors", SKIPPED: "is skipped"}.get(outcome, outcome)


def _suite_failed(context: Context) -> list[str]:
    after = context.after
    return [] if after.passed else [f"`{after.command}` failed (exit {after.exit_code})"]


def _suite_evidence(context: Context, missing: str) -> list[str]:
    """Without per-test results: the command failed before and passes now, or ``missing``."""
    if not context.after.passed:
        return _suite_failed(context)
    if context.before.passed:
        return [
            f"{missing} (`{context.after.command}` passed before the change too and does not report per test)"
        ]
    return []


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


def _new_tests_failing(context: Context) -> list[str]:
    return [
        f"{test_id} {_verb(context.after.tests[test_id])}"
        for test_id in context.new_or_changed()
        if context.after.tests[test_id] != PASSED and test_id not in context.flaky
    ]


def _proves_nothing(context: Context) -> list[str]:
    return [
        f"{test_id} passes on the base code too, so it does not exercise the change"
        for test_id in context.pass_on_base()
    ]


NO_REPRODUCTION = "no test reproduces the reported error"


def error_fix_rule(context: Context) -> list[str]:
    if not context.per_test:
        return _suite_evidence(context, NO_REPRODUCTION)
    targets = error_targets(context.job, context.failing_at_baseline())
    reasons = []
    for test_id in targets:
        now = context.after.tests.get(test_id)
        if not context.passes_now(test_id):
            reasons.append(f"{test_id} still {_verb(now) if now else 'does not run'}")
    if not targets and not context.reproduced():
        reasons.append(
            f"{NO_REPRODUCTION}: no test failed before the fix, and no new or changed test fails on "
            "the base code and passes with it"
        )
        reasons += _proves_nothing(context)
    return reasons + _new_tests_failing(context) + context.regressions()


def needs_base_run(operation_type: OperationType, before: TestRun, flaky: set[str]) -> bool:
    """Whether the rule needs the new tests' outcomes on the base code: a feature always, an error
    fix when no test failed at baseline."""
    if operation_type == OperationType.FEATURE_IMPLEMENTATION:
        return True
    if operation_type == OperationType.ERROR_FIX:
        return not any(o in NOT_PASSING and t not in flaky for t, o in before.tests.items())
    return False


def feature_rule(context: Context) -> list[str]:
    if not context.per_test:
        return _suite_evidence(context, "no test shows the feature")
    reasons = []
    if not context.fixed() and not context.reproduced():
        reasons.append(
            "no test shows the feature: none failed before the change and passes with it, and no new "
            "or changed test fails on the base code and passes with the change"
        )
        reasons += _proves_nothing(context)
    return reasons + _new_tests_failing(context) + context.regressions()


def unchanged_outcome(context: Context) -> list[str]:
    """Every test's outcome is what it was (the whole command's, without per-test results)."""
    before, after = context.before, context.after
    if not context.per_test:
        if before.passed == after.passed:
            return []
        return [f"`{after.command}` {'passed' if before.passed else 'failed'} before and now does not"]
    reasons = []
    for test_id in sorted(before.tests.keys() | after.tests.keys()):
        was, now = before.tests.get(test_id), after.tests.get(test_id)
        if was != now and test_id not in context.flaky:
            reasons.append(f"{test_id} was {was or 'absent'} and is now {now or 'absent'}")
    return reasons


def refactor_rule(context: Context) -> list[str]:
    reasons = [] if context.changed else ["the refactor changed nothing"]
    return reasons + unchanged_outcome(context)


def test_rule(context: Context) -> list[str]:
    changed_tests = [path for path in context.changed if context.is_test_file(path)]
    if not changed_tests:
        return ["no test file was added or changed"]
    if not context.per_test:
        return [*_suite_failed(context), "the test command did not report per test"]
    reasons = []
    in_changed = [t for t in context.after.tests if t.partition("::")[0] in changed_tests]
    if not in_changed:
        reasons.append(f"no test runs from {', '.join(changed_tests)}")
    reasons += [
        f"{t} {_verb(context.after.tests[t])}" for t in in_changed if context.after.tests[t] != PASSED
    ]
    reasons += context.regressions()
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
