"""Python: pytest, asked for its junit XML through ``PYTEST_ADDOPTS``, so any pytest invocation
reports per test without its command being rewritten; a selection of tests and coverage.py come
through plugins named there. A command that is not pytest ignores the variable and writes no
report, and is judged by its exit status."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from codeworker.profiles.base import Invocation, Profile, Results, TestRequest
from codeworker.sandbox.repo_config import RepoConfig, detect_test_command, setup_plan
from codeworker.verification.junit import parse_junit, read_coverage

TEST_FILE = re.compile(r"(^|/)(test_[^/]*\.py|[^/]*_test\.py|conftest\.py)$|(^|/)tests?/")
"""Paths that hold tests (pytest's default discovery, plus anything under test/ or tests/)."""

MARKERS = (
    *("pytest.ini", "conftest.py", "pyproject.toml", "setup.py", "setup.cfg", "tox.ini"),
    "requirements.txt",
)
"""Files that make a repository a Python project even when it also has a package.json."""

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

OMIT_TESTS = ["*/test_*.py", "*/*_test.py", "*/conftest.py", "*/tests/*", "*/test/*"]
"""What coverage leaves out when a test job names no target files."""


@dataclass(frozen=True)
class PytestReporting:
    """pytest's junit XML (xunit1, which carries each test's file) in scratch, the select plugin
    for re-runs, and coverage.py around the session when the request measures it."""

    selects: bool = True

    def invocation(self, command: str, request: TestRequest) -> Invocation:
        scratch, run_id = request.scratch, request.run_id
        addopts = [f"--junitxml={_junit(request)}", "-o", "junit_family=xunit1"]
        env: dict[str, str] = {}
        if request.coverage_targets is not None:
            (scratch / f"{COVERAGE_PLUGIN}.py").write_text(_PLUGIN_SOURCE, encoding="utf-8")
            targets = [str(request.root / path) for path in request.coverage_targets]
            env.update(
                PYTHONPATH=str(scratch),
                CODEWORKER_COVERAGE_DATA=str(scratch / f".coverage-{run_id}"),
                CODEWORKER_COVERAGE_JSON=str(_coverage_json(request)),
                CODEWORKER_COVERAGE_INCLUDE=json.dumps(targets),
                CODEWORKER_COVERAGE_SOURCE=json.dumps([] if targets else [str(request.root)]),
                CODEWORKER_COVERAGE_OMIT=json.dumps([] if targets else OMIT_TESTS),
            )
            addopts += ["-p", COVERAGE_PLUGIN]
        if request.select is not None:
            (scratch / f"{SELECT_PLUGIN}.py").write_text(_SELECT_SOURCE, encoding="utf-8")
            env.update(PYTHONPATH=str(scratch), CODEWORKER_SELECT=json.dumps(request.select))
            addopts += ["-p", SELECT_PLUGIN]
        env["PYTEST_ADDOPTS"] = " ".join(addopts)
        return Invocation(command, env)

    def results(self, request: TestRequest, root: Path) -> Results:
        tests, failures = parse_junit(_junit(request))
        measured = request.coverage_targets is not None
        return Results(tests, failures, read_coverage(_coverage_json(request)) if measured else None)

    def discard(self, request: TestRequest, root: Path) -> None:
        scratch = request.scratch
        plugins = [scratch / f"{name}.py" for name in (SELECT_PLUGIN, COVERAGE_PLUGIN)]
        data = scratch / f".coverage-{request.run_id}"
        for path in (_junit(request), _coverage_json(request), data, *plugins):
            path.unlink(missing_ok=True)


def _junit(request: TestRequest) -> Path:
    return request.scratch / f"junit-{request.run_id}.xml"


def _coverage_json(request: TestRequest) -> Path:
    return request.scratch / f"coverage-{request.run_id}.json"


def is_python(checkout: Path) -> bool:
    """Whether the checkout says it is a Python project (not merely that it has a tests dir)."""
    return any((checkout / marker).is_file() for marker in MARKERS) or any(checkout.glob("test_*.py"))


def python_profile(checkout: Path, config: RepoConfig) -> Profile:
    """Today's behaviour: pytest when the layout suggests it, pip for a requirements.txt."""
    return Profile(
        name="python",
        language="Python",
        test_command=detect_test_command(checkout),
        setup=setup_plan(checkout, config),
        reporting=PytestReporting(),
        test_files=TEST_FILE,
        conventions="tests are pytest files named test_*.py or *_test.py, usually under tests/",
        runner="pytest",
    )
