"""Deterministic verification, owned by the worker: the tests before any edit and after the work.

Neither the model nor the executor judges its own work. :class:`Verifier` runs the job's test
command in the sandbox before the executor changes anything (the baseline, taken by the pipeline)
and again afterwards, reads every test's outcome from the JUnit XML the repository's language
profile has its runner write (:mod:`codeworker.profiles`, :mod:`codeworker.verification.junit`),
and applies the rule of the job's operation type (:mod:`codeworker.verification.rules`), which is
the same for every language. Two more runs give the rules their evidence:

- **on the base code**: the new or changed tests that pass, run in a scratch copy of the checkout
  whose changed files that are not tests are back at their base version (sandboxed like every
  command). One that passes there too does not exercise the change.
- **again**: the tests whose outcome decides the verdict (failing at baseline; newly failing
  after) run a second time on the same code; one whose outcome flips is flaky.

How a run is asked to report, and to run only some tests, is the profile's
(:class:`~codeworker.profiles.base.Reporting`): pytest through ``PYTEST_ADDOPTS``, Node's runner
through ``NODE_OPTIONS``, Jest and Vitest through their reporter arguments, any runner through the
JUnit files ``.codeworker.yml`` names. A runner that cannot select tests runs them all again, and
only the wanted tests' outcomes are kept. A command that writes no report is judged by its exit
status.
"""

from __future__ import annotations

import uuid

from codeworker.executors.base import Workspace
from codeworker.models import Job, OperationType, TestRun, Verification
from codeworker.profiles.base import Results, TestRequest
from codeworker.sandbox.commands import clip
from codeworker.verification.junit import NOT_PASSING, PASSED
from codeworker.verification.rules import RULES, Context, needs_base_run, test_rule

OUTPUT_TAIL = 4_000
"""Characters of the test command's output kept in a TestRun."""

NO_TEST_COMMAND = "the repository has no test command, so nothing can verify the change"


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
            self.job,
            before,
            after,
            changed,
            flaky=self.flaky_at_baseline | self._flips(newly_failing, after),
            is_test_file=self.workspace.profile.is_test_file,
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
        profile = self.workspace.profile
        reporting = profile.reporting
        root = self.workspace.root
        measure = self.measure_coverage and select is None
        request = TestRequest(
            run_id=uuid.uuid4().hex[:12],
            scratch=self.workspace.scratch,
            root=root,
            select=select,
            coverage_targets=list(self.job.target_files) if measure else None,
        )
        reporting.discard(request, root)  # a report left from an earlier run is never this one's
        invocation = reporting.invocation(command, request)
        found: list[Results] = []
        try:
            if on_base:
                result = self.workspace.run_on_base(
                    invocation.command,
                    lambda path: not profile.is_test_file(path),
                    invocation.env,
                    lambda copy: found.append(reporting.results(request, copy)),
                )
            else:
                result = self.workspace.run(invocation.command, env=invocation.env)
                found.append(reporting.results(request, root))
        finally:
            reporting.discard(request, root)
        results = found[0] if found else Results()
        tests = results.tests
        if select is not None and not reporting.selects:
            wanted = set(select)
            tests = {test_id: outcome for test_id, outcome in tests.items() if test_id in wanted}
        return TestRun(
            command=command,
            exit_code=result.exit_code,
            passed=result.ok,
            timed_out=result.timed_out,
            output_tail=result.output[-OUTPUT_TAIL:],
            tests=tests,
            failures={t: text for t, text in results.failures.items() if t in tests},
            coverage=results.coverage,
        )
