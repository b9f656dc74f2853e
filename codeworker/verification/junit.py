"""Per-test results from JUnit XML (pytest's xunit1, node:test's, jest-junit's, Vitest's, any
runner's) and coverage.py's JSON report.

Test ids are built by an :data:`IdRule`: :func:`pytest_id` gives pytest's node ids
(``tests/test_x.py::TestY::test_z``); :func:`runner_id` gives ``<classname>::<name>`` (with a
``file`` attribute, the file's path relative to the checkout first), which for the JavaScript
runners, as :mod:`codeworker.profiles.javascript` asks them to report, is
``test/calc.test.js::group > test name``. An id without ``::`` is a whole file that failed to load.
"""

from __future__ import annotations

import json
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from codeworker.sandbox.commands import clip

FAILURE_TEXT = 2_000
"""Characters of one test's failure text kept in a TestRun."""

MAX_FAILURES = 30
"""Failing tests whose text a TestRun keeps."""

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
NOT_PASSING = (FAILED, ERROR)


MAX_REPORT_BYTES = 50_000_000
"""Largest JUnit report read; a bigger one is taken as no report."""

IdRule = Callable[[ET.Element], str]
"""A test case's id from its ``<testcase>`` element."""


def parse_junit(path: Path, ids: IdRule | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Outcome per test id (pytest's node ids unless ``ids`` says otherwise), and the failure text
    of the tests that did not pass."""
    return merge_junit([path], ids)


def merge_junit(paths: list[Path], ids: IdRule | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """:func:`parse_junit` of several reports of one run (a runner that writes one per file)."""
    tests: dict[str, str] = {}
    failures: dict[str, str] = {}
    for path in paths:
        _add(path, ids or pytest_id, tests, failures)
    return tests, failures


def _add(path: Path, ids: IdRule, tests: dict[str, str], failures: dict[str, str]) -> None:
    raw = _read_regular(path)
    if raw is None:
        return
    try:
        # Written in the sandbox by the repository's own code: expat refuses external entities,
        # and its amplification limit stops an entity bomb; the size is capped before parsing.
        root = ET.fromstring(raw)  # noqa: S314
    except ET.ParseError:
        return
    for case in root.iter("testcase"):
        test_id = ids(case)
        outcome, text = _outcome(case)
        # A test reported twice (an error in teardown after its call) keeps its worst outcome.
        if test_id not in tests or _RANK[outcome] > _RANK[tests[test_id]]:
            tests[test_id] = outcome
        if outcome in (FAILED, ERROR) and len(failures) < MAX_FAILURES:
            failures[test_id] = clip(text.strip(), FAILURE_TEXT)


def _read_regular(path: Path) -> bytes | None:
    """The report's bytes; None unless it is a regular file of at most MAX_REPORT_BYTES. Opened
    without following a link and without blocking on a FIFO: a command may have planted either
    where the worker, outside the sandbox, reads."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_REPORT_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as file:
            return file.read(MAX_REPORT_BYTES + 1)
    finally:
        os.close(fd)


_RANK = {SKIPPED: 0, PASSED: 1, FAILED: 2, ERROR: 3}


def pytest_id(case: ET.Element) -> str:
    """``file::Class::name`` as pytest prints it (xunit1 reports carry the file)."""
    return _node_id(case.get("name", ""), case.get("classname", ""), case.get("file"))


def runner_id(root: Path) -> IdRule:
    """Ids for a runner's report of a run in ``root``: ``classname::name``; with a ``file``
    attribute, ``file::Class::name`` as pytest's. Absolute paths under ``root`` are made relative
    (a run on the base code runs in a copy elsewhere, and its ids must be the checkout's). A case
    named for its own file is that file failing to load: its id is the file alone."""

    def test_id(case: ET.Element) -> str:
        name = _relative(case.get("name", "").strip(), root)
        classname = _relative(case.get("classname", "").strip(), root)
        file = case.get("file")
        if file:
            return _node_id(name, classname, _relative(file, root))
        if not classname or name == classname:
            return name
        return f"{classname}::{name.removeprefix('> ').removeprefix(' > ')}"

    return test_id


def _relative(path: str, root: Path) -> str:
    if not path.startswith("/"):
        return path
    candidate = PurePosixPath(path)
    if candidate.is_relative_to(root):
        return candidate.relative_to(root).as_posix()
    return path


def _node_id(name: str, classname: str, file: str | None) -> str:
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
