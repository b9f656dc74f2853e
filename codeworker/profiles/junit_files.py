"""Any runner that writes JUnit XML: ``junit: <path or glob>`` in ``.codeworker.yml`` names where
the repository's test command writes it (relative to the checkout: gotestsum's ``--junitfile``,
cargo nextest's JUnit profile, Maven Surefire's ``target/surefire-reports/*.xml``, pytest run by
something else).

The worker cannot ask an unknown runner for a subset of tests, so a re-run (flakiness, the new tests
on the base code) runs the whole command and keeps the outcomes of the tests it wanted. The reports
lie in the checkout, where the agent's commands write too: every file the pattern matches is
removed before each run (a report the run did not write is never read as its own) and after it (a
report never lands in the commit), and only regular files inside the checkout are read.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from codeworker.profiles.base import Invocation, Results, TestRequest
from codeworker.verification.junit import merge_junit, runner_id

MAX_REPORTS = 1_000
"""Report files read from one run at most."""


@dataclass(frozen=True)
class JUnitFiles:
    """Reports the repository's own command writes where ``pattern`` says."""

    pattern: str
    selects: bool = False

    def invocation(self, command: str, request: TestRequest) -> Invocation:
        return Invocation(command)

    def results(self, request: TestRequest, root: Path) -> Results:
        tests, failures = merge_junit(self.reports(root), runner_id(root))
        return Results(tests, failures)

    def discard(self, request: TestRequest, root: Path) -> None:
        for path in self.reports(root):
            with contextlib.suppress(OSError):
                path.unlink()

    def reports(self, root: Path) -> list[Path]:
        """The files ``pattern`` matches that lie inside ``root`` through no link."""
        real_root = root.resolve()
        found = []
        try:
            matches = sorted(root.glob(self.pattern))[:MAX_REPORTS]
        except (ValueError, NotImplementedError):  # a pattern pathlib refuses matches nothing
            return []
        for path in matches:
            if path.is_symlink() or not path.is_file():
                continue
            if path.resolve().is_relative_to(real_root):  # a directory on the way may link out
                found.append(path)
        return found
