"""Deterministic verification, owned by the worker: the tests before any edit and after the work.

The model never judges its own work. :class:`Verifier` runs the job's test command in the sandbox
before the executor changes anything (the baseline) and again afterwards, reads every test's
outcome from pytest's junit XML, and applies the rule of the job's operation type:

- error_fix: the tests the error is about (failing at baseline and named by the error context;
  every test failing at baseline when none is named) now pass, and nothing that passed fails;
- feature_implementation: new or changed tests exist and pass, and nothing that passed fails;
- refactor: the diff is not empty and every test's outcome is exactly what it was;
- test: new or changed test files exist and pass, and line coverage of the target files rises.

Any pytest invocation reports per test, because the report is requested through
``PYTEST_ADDOPTS`` (and coverage through a plugin named there), not by rewriting the command; a
command that is not pytest writes no report and is judged by its exit status. A test that passed
at baseline and is now skipped or gone counts as broken: deleting a failing test is not a fix.
"""

from __future__ import annotations

import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydantic import BaseModel

from codeworker.executors.base import Workspace
from codeworker.models import Job, OperationType, TestRun, for_every_type
from codeworker.sandbox.commands import clip

FAILURE_TEXT = 2_000
"""Characters of one test's failure text kept in a TestRun."""

MAX_FAILURES = 30
"""Failing tests whose text a TestRun keeps."""

OUTPUT_TAIL = 4_000
"""Characters of the test command's output kept in a TestRun."""

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"

COVERAGE_PLUGIN = "codeworker_coverage"
"""Module name of the pytest plugin written to the scratch dir for coverage measurement."""

_PLUGIN_SOURCE = '''"""Line coverage around a pytest session (written by codeworker, never committed)."""
import json, os

try:
    import coverage
except ImportError:  # the repository's Python has no coverage.py: nothing measured
    coverage = None

_cov = None
if coverage is not None:
    _cov = coverage.Coverage(
        data_file=os.environ["CODEWORKER_COVERAGE_DATA"],
        include=json.loads(os.environ["CODEWORKER_COVERAGE_INCLUDE"]) or None,
        source=json.loads(os.environ["CODEWORKER_COVERAGE_SOURCE"]) or None,
        omit=json.loads(os.environ["CODEWORKER_COVERAGE_OMIT"]) or None,
    )
    _cov.start()


def pytest_unconfigure(config):
    if _cov is None:
        return
    _cov.stop()
    _cov.save()
    try:
        _cov.json_report(outfile=os.environ["CODEWORKER_COVERAGE_JSON"])
    except coverage.CoverageException:  # nothing measured (no target file imported)
        pass
'''

TEST_FILE = re.compile(r"(^|/)(test_[^/]*\.py|[^/]*_test\.py|conftest\.py)$|(^|/)tests?/")
"""Paths that hold tests (pytest's default discovery, plus anything under test/ or tests/)."""

OMIT_TESTS = ["*/test_*.py", "*/*_test.py", "*/conftest.py", "*/tests/*", "*/test/*"]
"""What coverage leaves out when a test job names no target files."""


class Verdict(BaseModel):
    """Whether the work meets its operation type's rule, and why not."""

    ok: bool
    reasons: list[str] = []
    """Human-readable, one per broken expectation (``tests/test_x.py::test_y still fails``)."""
    before: TestRun | None = None
    after: TestRun | None = None

    def feedback(self, limit: int = 8_000) -> str:
        """What the model is told when verification fails: the reasons, then the failing tests'
        text, then the end of the output, trimmed to ``limit`` characters."""
        if self.ok:
            return "Verification passed."
        parts = ["Verification failed:", *[f"- {reason}" for reason in self.reasons]]
        after = self.after
        if after is not None and after.failures:
            parts += ["", "Failing tests:"]
            parts += [f"{test_id}:\n{text}" for test_id, text in after.failures.items()]
        elif after is not None and after.output_tail:
            parts += ["", f"Output of `{after.command}` (end):", after.output_tail]
        return clip("\n".join(parts), limit)


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


class Verifier:
    """Runs the tests of one job's workspace and judges the work by the job's operation type.

    ``rule`` replaces the operation type's rule (autofix uses :func:`unchanged_outcome`).
    """

    def __init__(self, job: Job, workspace: Workspace, rule: Rule | None = None) -> None:
        self.job = job
        self.workspace = workspace
        self.rule = rule or RULES[OperationType(job.operation_type)]
        self.measure_coverage = self.rule is test_rule

    def baseline(self) -> TestRun | None:
        """The tests before any edit; None when the repository has no test command."""
        return self.run_tests()

    def verify(self, baseline: TestRun | None) -> Verdict:
        """Run the tests again and apply the rule against ``baseline``."""
        after = self.run_tests()
        if baseline is None or after is None:
            if self.rule is unchanged_outcome:
                return Verdict(ok=True, before=baseline, after=after)
            return Verdict(
                ok=False,
                reasons=["the repository has no test command, so nothing can verify the change"],
                before=baseline,
                after=after,
            )
        context = Context(self.job, baseline, after, self.workspace.changed_files())
        reasons = _timing_reasons(after) or self.rule(context)
        return Verdict(ok=not reasons, reasons=reasons, before=baseline, after=after)

    def run_tests(self) -> TestRun | None:
        """One run of the test command, with per-test outcomes and (test jobs) coverage."""
        command = self.workspace.test_command()
        if command is None:
            return None
        run_id = uuid.uuid4().hex[:12]
        scratch = self.workspace.scratch
        junit = scratch / f"junit-{run_id}.xml"
        addopts = [f"--junitxml={junit}", "-o", "junit_family=xunit1"]
        env: dict[str, str] = {}
        coverage_json = scratch / f"coverage-{run_id}.json"
        if self.measure_coverage:
            env.update(self._coverage_env(scratch, run_id, coverage_json))
            addopts += ["-p", COVERAGE_PLUGIN]
        env["PYTEST_ADDOPTS"] = " ".join(addopts)
        try:
            result = self.workspace.run(command, env=env)
            tests, failures = parse_junit(junit) if junit.is_file() else ({}, {})
            coverage = read_coverage(coverage_json) if self.measure_coverage else None
        finally:
            for path in (junit, coverage_json, scratch / f".coverage-{run_id}"):
                path.unlink(missing_ok=True)
        return TestRun(
            command=command,
            exit_code=result.exit_code,
            passed=result.ok,
            timed_out=result.timed_out,
            output_tail=result.output[-OUTPUT_TAIL:],
            tests=tests,
            failures=failures,
            coverage=coverage,
        )

    def _coverage_env(self, scratch: Path, run_id: str, report: Path) -> dict[str, str]:
        (scratch / f"{COVERAGE_PLUGIN}.py").write_text(_PLUGIN_SOURCE, encoding="utf-8")
        root = self.workspace.root
        targets = [str(root / path) for path in self.job.target_files]
        return {
            "PYTHONPATH": str(scratch),
            "CODEWORKER_COVERAGE_DATA": str(scratch / f".coverage-{run_id}"),
            "CODEWORKER_COVERAGE_JSON": str(report),
            "CODEWORKER_COVERAGE_INCLUDE": json.dumps(targets),
            "CODEWORKER_COVERAGE_SOURCE": json.dumps([] if targets else [str(root)]),
            "CODEWORKER_COVERAGE_OMIT": json.dumps([] if targets else OMIT_TESTS),
        }


# -- reports --------------------------------------------------------------------------------------


def parse_junit(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Outcome per pytest node id, and the failure text of the tests that did not pass."""
    try:
        tree = ET.parse(path)  # noqa: S314 - written by pytest in our sandbox, not by a stranger
    except ET.ParseError:
        return {}, {}
    tests: dict[str, str] = {}
    failures: dict[str, str] = {}
    for case in tree.iter("testcase"):
        test_id = _node_id(case)
        outcome, text = _outcome(case)
        # A test reported twice (an error in teardown after its call) keeps its worst outcome.
        if test_id not in tests or _RANK[outcome] > _RANK[tests[test_id]]:
            tests[test_id] = outcome
        if outcome in (FAILED, ERROR) and len(failures) < MAX_FAILURES:
            failures[test_id] = clip(text.strip(), FAILURE_TEXT)
    return tests, failures


_RANK = {SKIPPED: 0, PASSED: 1, FAILED: 2, ERROR: 3}


def _node_id(case: ET.Element) -> str:
    """``file::Class::name`` as pytest prints it (xunit1 reports carry the file)."""
    name = case.get("name", "")
    classname = case.get("classname", "")
    file = case.get("file")
    if not file:
        return f"{classname}::{name}" if classname else name
    module = PurePosixPath(file).with_suffix("").as_posix().replace("/", ".")
    if name == module and not classname:
        return file  # the module itself failed to import (a collection error)
    classes = classname.removeprefix(module).strip(".")
    return "::".join(part for part in (file, *classes.split("."), name) if part)


def _outcome(case: ET.Element) -> tuple[str, str]:
    for tag, outcome in (("error", ERROR), ("failure", FAILED), ("skipped", SKIPPED)):
        element = case.find(tag)
        if element is not None:
            return outcome, f"{element.get('message', '')}\n{element.text or ''}"
    return PASSED, ""


def read_coverage(path: Path) -> float | None:
    """Percent of lines covered (coverage.py's JSON report), None when nothing was measured."""
    if not path.is_file():
        return None
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["totals"]["percent_covered"])
    except (ValueError, KeyError, TypeError):
        return None


# -- rules ----------------------------------------------------------------------------------------


def _timing_reasons(after: TestRun) -> list[str]:
    return [f"`{after.command}` timed out"] if after.timed_out else []


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
