"""Per-test results of a pytest run: its junit XML report (xunit1) and coverage.py's JSON report."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

from codeworker.sandbox.commands import clip

FAILURE_TEXT = 2_000
"""Characters of one test's failure text kept in a TestRun."""

MAX_FAILURES = 30
"""Failing tests whose text a TestRun keeps."""

PASSED, FAILED, ERROR, SKIPPED = "passed", "failed", "error", "skipped"
NOT_PASSING = (FAILED, ERROR)


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
