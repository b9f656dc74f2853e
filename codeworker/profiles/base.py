"""What every language profile gives the worker, and what one test run asks of it.

A :class:`Profile` says how a repository is set up, how its tests run and which of its files are
tests; its :class:`Reporting` says how one run is asked to report per test and how that report is
read. The verification rules never look at a language: they get ``{test id: outcome}`` from
whichever profile the repository has (:mod:`codeworker.verification.verifier`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from codeworker.sandbox.repo_config import RepoConfigError, SetupPlan


class ProfileError(RepoConfigError):
    """The repository cannot be set up or tested as it stands (a ``package.json`` without a test
    script); the message says what to add. Fails the job like a broken ``.codeworker.yml``."""


@dataclass(frozen=True)
class TestRequest:
    """One run of the tests the verifier asks for."""

    __test__ = False  # not a pytest test class, despite its name

    run_id: str
    """Unique per run: report files in scratch are named with it."""
    scratch: Path
    """The job's scratch directory, writable by commands and read by the worker."""
    root: Path
    """The checkout the tests are asked of (a run on the base code runs in a copy of it)."""
    select: list[str] | None = None
    """Only these test ids are wanted (a re-run); None for the whole suite."""
    coverage_targets: list[str] | None = None
    """Files whose line coverage is measured (empty: the whole checkout); None: not measured."""


@dataclass(frozen=True)
class Invocation:
    """The command one run executes and the variables it adds to the sandbox's environment."""

    command: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Results:
    """Per-test outcomes of one run, the failing tests' text, and line coverage when measured."""

    tests: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    coverage: float | None = None


class Reporting(Protocol):
    """How a runner reports per test: what a run adds to the command, where its report lands."""

    selects: bool
    """Whether :meth:`invocation` runs only ``request.select``; otherwise a re-run runs the whole
    command and the verifier keeps the outcomes of the wanted tests."""

    def invocation(self, command: str, request: TestRequest) -> Invocation:
        """``command`` (the job's test command) as this run executes it."""

    def results(self, request: TestRequest, root: Path) -> Results:
        """What the run in ``root`` (the checkout, or the base copy) reported; empty if nothing."""

    def discard(self, request: TestRequest, root: Path) -> None:
        """Remove this run's reports and helper files: before it (a stale report must never be
        read as this run's) and after it (nothing of it may land in the commit)."""


@dataclass(frozen=True)
class ExitStatus:
    """No per-test results: the run is judged by the command's exit status."""

    selects: bool = False

    def invocation(self, command: str, request: TestRequest) -> Invocation:
        return Invocation(command)

    def results(self, request: TestRequest, root: Path) -> Results:
        return Results()

    def discard(self, request: TestRequest, root: Path) -> None:
        return None


@dataclass(frozen=True)
class Profile:
    """A repository's language as the worker treats it."""

    name: str
    """Short name in results and logs: ``python``, ``javascript``."""
    language: str
    """What the agent is told the repository is written in."""
    test_command: str | None
    """The detected test command (the job's or ``.codeworker.yml``'s one wins over it)."""
    setup: SetupPlan | None
    """The detected or configured setup; None when there is nothing to install."""
    reporting: Reporting
    """How a run of the test command reports per test."""
    test_files: re.Pattern[str]
    """Paths that hold tests, for the ``test`` rule and for the run on the base code."""
    conventions: str
    """One line for the agent: where tests live and how they are named."""
    runner: str = ""
    """The test runner detected (``pytest``, ``node:test``, ``jest``, ``vitest``), if any."""
    cache_dirs: tuple[str, ...] = ()
    """Directories of the setup cache shown inside the checkout under the same name
    (``node_modules``), for runtimes that look for dependencies next to the code."""
    private_dirs: tuple[str, ...] = ()
    """Directories inside those that tools write at every run (Vitest's results cache in
    ``node_modules/.vite``): the cache is read-only, so each command gets them empty and its own."""
    environment: dict[str, str] = field(default_factory=dict)
    """What every command in the checkout gets (the agent's too): the runtime's options that the
    sandbox needs, so the agent runs the tests as the worker does."""

    def is_test_file(self, path: str) -> bool:
        return self.test_files.search(path) is not None

    def with_reporting(self, reporting: Reporting) -> Profile:
        return dataclasses.replace(self, reporting=reporting)
