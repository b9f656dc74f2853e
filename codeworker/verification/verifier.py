"""Deterministic verification, owned by the worker: the tests before any edit and after the work.

Neither the model nor the executor judges its own work. :class:`Verifier` runs the job's test
command in the sandbox before the executor changes anything (the baseline, taken by the pipeline)
and again afterwards, reads every test's outcome from pytest's junit XML
(:mod:`codeworker.verification.junit`), and applies the rule of the job's operation type
(:mod:`codeworker.verification.rules`). Two more runs give the rules their evidence:

- **on the base code**: the new or changed tests that pass, run in a scratch copy of the checkout
  whose changed files that are not tests are back at their base version (sandboxed like every
  command). One that passes there too does not exercise the change.
- **again**: the tests whose outcome decides the verdict (failing at baseline; newly failing
  after) run a second time on the same code; one whose outcome flips is flaky.

Any pytest invocation reports per test, because the report is requested through
``PYTEST_ADDOPTS`` (and coverage, or a selection of tests, through plugins named there), not by
rewriting the command; a command that is not pytest writes no report and is judged by its exit
status.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from codeworker.executors.base import Workspace
from codeworker.models import Job, OperationType, TestRun, Verification
from codeworker.sandbox.commands import clip
from codeworker.verification.junit import NOT_PASSING, PASSED, parse_junit, read_coverage
from codeworker.verification.rules import RULES, Context, is_test_file, needs_base_run, test_rule

OUTPUT_TAIL = 4_000
"""Characters of the test command's output kept in a TestRun."""

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

SELECT_PLUGIN = "codeworker_select"
"""Module name of the pytest plugin that runs only the tests named in ``CODEWORKER_SELECT``."""

_SELECT_SOURCE = '''"""Run only the tests CODEWORKER_SELECT names (written by codeworker, never committed)."""
import json, os

_WANTED = set(json.loads(os.environ["CODEWORKER_SELECT"]))


def pytest_collection_modifyitems(config, items):
    keep = [item for item in items if item.nodeid in _WANTED]
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in _WANTED])
    items[:] = keep
'''

NO_TEST_COMMAND = "the repository has no test command, so nothing can verify the change"

OMIT_TESTS = ["*/test_*.py", "*/*_test.py", "*/conftest.py", "*/tests/*", "*/test/*"]
"""What coverage leaves out when a test job names no target files."""


def feedback(verdict: Verification, limit: int = 8_000) -> str:
    """What the model is told when verification fails: the reasons (the missing evidence named),
    then the failing tests' text, then the end of the output, trimmed to ``limit`` characters."""
    if verdict.verified:
        return "Verification passed."
    parts = ["Verification failed:", *[f"- {reason}" for reason in verdict.reasons]]
    after = verdict.after
    if after is not None and after.failures:
        parts += ["", "Failing tests:"]
        parts += [f"{test_id}:\n{text}" for test_id, text in after.failures.items()]
    elif after is not None and after.output_tail:
        parts += ["", f"Output of `{after.command}` (end):", after.output_tail]
    return clip("\n".join(parts), limit)


class Verifier:
    """Runs the tests of one job's workspace and judges the work by the job's operation type.

    :meth:`baseline` once, before the executor changes anything; then :meth:`verify` as often as
    asked (the executor's loop, then the worker's own, final run).
    """

    def __init__(self, job: Job, workspace: Workspace) -> None:
        self.job = job
        self.workspace = workspace
        self.operation_type = OperationType(job.operation_type)
        self.rule = RULES[self.operation_type]
        self.measure_coverage = self.rule is test_rule
        self.before: TestRun | None = None
        self.flaky_at_baseline: set[str] = set()

    def baseline(self) -> TestRun | None:
        """The tests before any edit (None when the repository has no test command); the failing
        ones run twice, so a flaky one is not taken for the error to fix."""
        self.before = self.run_tests()
        if self.before is not None:
            failing = [t for t, o in self.before.tests.items() if o in NOT_PASSING]
            self.flaky_at_baseline = self._flips(failing, self.before)
        return self.before

    def verify(self) -> Verification:
        """Run the tests again and apply the rule against the baseline."""
        after = self.run_tests()
        before = self.before
        if before is None or after is None:
            return Verification(verified=False, reasons=[NO_TEST_COMMAND], before=before, after=after)
        if after.timed_out:
            return Verification(
                verified=False, reasons=[f"`{after.command}` timed out"], before=before, after=after
            )
        changed = self.workspace.changed_files()
        newly_failing = [
            t for t, o in after.tests.items() if o in NOT_PASSING and before.tests.get(t) == PASSED
        ]
        context = Context(
            self.job, before, after, changed, flaky=self.flaky_at_baseline | self._flips(newly_failing, after)
        )
        if context.per_test and needs_base_run(self.operation_type, before, context.flaky):
            context.on_base = self._on_base(context.passing_new())
        reasons = self.rule(context)
        return Verification(
            verified=not reasons,
            reasons=reasons,
            before=before,
            after=after,
            fixed=context.fixed(),
            reproduced=context.reproduced(),
            pass_on_base=context.pass_on_base(),
            regressions=context.regressed(),
            flaky=sorted(context.flaky),
        )

    def run_tests(self, select: list[str] | None = None) -> TestRun | None:
        """One run of the test command (only the tests ``select`` names, when given), with per-test
        outcomes and (test jobs) coverage."""
        return self._run(select, on_base=False)

    def _flips(self, tests: list[str], first: TestRun) -> set[str]:
        """Of ``tests``, those whose outcome on a second run of the same code differs from
        ``first``'s."""
        again = self._run(tests, on_base=False) if tests else None
        if again is None:
            return set()
        return {t for t in tests if again.tests.get(t) not in (None, first.tests.get(t))}

    def _on_base(self, tests: list[str]) -> dict[str, str]:
        """Outcomes of ``tests`` on the base code (absent: they do not exist there)."""
        if not tests:
            return {}
        run = self._run(tests, on_base=True)
        return run.tests if run is not None else {}

    def _run(self, select: list[str] | None, on_base: bool) -> TestRun | None:
        command = self.workspace.test_command()
        if command is None:
            return None
        run_id = uuid.uuid4().hex[:12]
        scratch = self.workspace.scratch
        junit = scratch / f"junit-{run_id}.xml"
        addopts = [f"--junitxml={junit}", "-o", "junit_family=xunit1"]
        env: dict[str, str] = {}
        coverage_json = scratch / f"coverage-{run_id}.json"
        measure = self.measure_coverage and select is None
        if measure:
            env.update(self._coverage_env(scratch, run_id, coverage_json))
            addopts += ["-p", COVERAGE_PLUGIN]
        if select is not None:
            (scratch / f"{SELECT_PLUGIN}.py").write_text(_SELECT_SOURCE, encoding="utf-8")
            env.update(PYTHONPATH=str(scratch), CODEWORKER_SELECT=json.dumps(select))
            addopts += ["-p", SELECT_PLUGIN]
        env["PYTEST_ADDOPTS"] = " ".join(addopts)
        try:
            if on_base:
                result = self.workspace.run_on_base(command, lambda path: not is_test_file(path), env)
            else:
                result = self.workspace.run(command, env=env)
            tests, failures = parse_junit(junit) if junit.is_file() else ({}, {})
            coverage = read_coverage(coverage_json) if measure else None
        finally:
            plugins = [scratch / f"{name}.py" for name in (SELECT_PLUGIN, COVERAGE_PLUGIN)]
            for path in (junit, coverage_json, scratch / f".coverage-{run_id}", *plugins):
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
