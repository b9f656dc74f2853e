"""Deterministic verification, owned by the worker: the tests before any edit and after the work.

The model never judges its own work. :class:`Verifier` runs the job's test command in the sandbox
before the executor changes anything (the baseline) and again afterwards, reads every test's
outcome from pytest's junit XML (:mod:`codeworker.verification.junit`), and applies the rule of the
job's operation type (:mod:`codeworker.verification.rules`).

Any pytest invocation reports per test, because the report is requested through
``PYTEST_ADDOPTS`` (and coverage through a plugin named there), not by rewriting the command; a
command that is not pytest writes no report and is judged by its exit status.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from pydantic import BaseModel

from codeworker.executors.base import Workspace
from codeworker.models import Job, OperationType, TestRun
from codeworker.sandbox.commands import clip
from codeworker.verification.junit import parse_junit, read_coverage
from codeworker.verification.rules import RULES, Context, Rule, test_rule, unchanged_outcome

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


class Verifier:
    """Runs the tests of one job's workspace and judges the work by the job's operation type.

    ``rule`` replaces the operation type's rule (autofix uses
    :func:`~codeworker.verification.rules.unchanged_outcome`).
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


def _timing_reasons(after: TestRun) -> list[str]:
    return [f"`{after.command}` timed out"] if after.timed_out else []
