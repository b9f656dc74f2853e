"""Language profiles: which one a repository gets, what it runs, and how each runner's JUnit XML
becomes test ids. The JUnit shapes are those the runners really write (node:test's through the
worker's reporter, run here with the real Node.js; Vitest's and jest-junit's as their reporters
emit them with the options the profile gives)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from codeworker.profiles import choose_profile
from codeworker.profiles.base import ProfileError, TestRequest
from codeworker.profiles.javascript import Package, detect_runner, package_manager
from codeworker.profiles.junit_files import JUnitFiles
from codeworker.profiles.node_reporter import REPORTER_FILE, REPORTER_SOURCE
from codeworker.profiles.python import PytestReporting
from codeworker.sandbox.repo_config import RepoConfig
from codeworker.verification.junit import parse_junit, runner_id


def make(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def package(scripts: dict[str, str] | None = None, **sections: dict[str, str]) -> str:
    return json.dumps({"name": "calc", "scripts": scripts or {}, **sections})


# == which profile ================================================================================


def test_a_python_repository_keeps_pytest(tmp_path: Path) -> None:
    profile = choose_profile(
        make(tmp_path, {"tests/test_x.py": "", "requirements.txt": "attrs\n"}), RepoConfig()
    )
    assert profile.name == "python" and profile.runner == "pytest"
    assert profile.test_command == "python -m pytest -q -p no:cacheprovider"
    assert profile.setup is not None and "pip install" in profile.setup.command
    assert isinstance(profile.reporting, PytestReporting) and profile.cache_dirs == ()


@pytest.mark.parametrize(
    ("script", "runner", "command"),
    [
        ("node --test", "node:test", "node --test"),
        ("node --test test/", "node:test", "node --test test/"),
        ("tsc && node --test dist/", "node:test", "npm test"),
        ("vitest run", "vitest", "npm test"),
        ("jest --ci", "jest", "npm test"),
        ("mocha", "", "npm test"),
    ],
)
def test_the_runner_comes_from_the_test_script(
    tmp_path: Path, script: str, runner: str, command: str
) -> None:
    profile = choose_profile(make(tmp_path, {"package.json": package({"test": script})}), RepoConfig())
    assert (profile.name, profile.runner, profile.test_command) == ("javascript", runner, command)
    assert profile.language == "JavaScript/TypeScript"


def test_the_dependencies_name_the_runner_when_the_script_does_not() -> None:
    assert detect_runner(Package({"test": "npm run unit"}, frozenset({"vitest"}))) == "vitest"
    assert detect_runner(Package({"test": "npm run unit"}, frozenset({"jest", "jest-junit"}))) == "jest"
    # The script wins over the dependencies: a repository moving from Jest to Vitest has both.
    assert detect_runner(Package({"test": "vitest run"}, frozenset({"jest"}))) == "vitest"


@pytest.mark.parametrize(
    ("lock", "manager", "install"),
    [
        ("package-lock.json", "npm", "npm ci"),
        ("pnpm-lock.yaml", "pnpm", "pnpm install --frozen-lockfile"),
        ("yarn.lock", "yarn", "yarn install --immutable"),
    ],
)
def test_the_lock_file_names_the_package_manager(
    tmp_path: Path, lock: str, manager: str, install: str
) -> None:
    files = {"package.json": package({"test": "jest"}, devDependencies={"jest": "29"}), lock: "{}"}
    profile = choose_profile(make(tmp_path, files), RepoConfig())
    assert package_manager(tmp_path) == (manager, install)
    assert profile.test_command == f"{manager} test"
    assert profile.setup is not None and profile.setup.command == install
    assert lock in profile.setup.dependency_files and "package.json" in profile.setup.dependency_files
    assert profile.cache_dirs == ("node_modules",)  # installed into the cache, shown in the checkout


def test_without_dependencies_or_a_lock_file_there_is_nothing_to_set_up(tmp_path: Path) -> None:
    profile = choose_profile(make(tmp_path, {"package.json": package({"test": "node --test"})}), RepoConfig())
    assert profile.setup is None and profile.cache_dirs == ()


def test_a_package_json_without_a_test_script_is_a_clear_error(tmp_path: Path) -> None:
    make(tmp_path, {"package.json": package({"build": "tsc"}), "src/index.js": ""})
    with pytest.raises(ProfileError) as caught:
        choose_profile(tmp_path, RepoConfig())
    assert str(caught.value).startswith(
        'package.json has no "test" script, so the worker cannot run the tests'
    )
    assert "test_command in .codeworker.yml" in str(caught.value)
    # npm init's placeholder is no test script either.
    (tmp_path / "package.json").write_text(package({"test": 'echo "Error: no test specified" && exit 1'}))
    with pytest.raises(ProfileError):
        choose_profile(tmp_path, RepoConfig())
    # A test command named elsewhere is enough.
    assert choose_profile(tmp_path, RepoConfig(test_command="node check.js")).name == "javascript"
    assert choose_profile(tmp_path, RepoConfig(), "node check.js").name == "javascript"


def test_a_python_project_with_a_package_json_for_its_tooling_stays_python(tmp_path: Path) -> None:
    files = {"package.json": package({"lint": "prettier ."}), "pyproject.toml": "", "tests/test_x.py": ""}
    assert choose_profile(make(tmp_path, files), RepoConfig()).name == "python"


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_broken_package_json_is_a_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "package.json").write_text(text)
    with pytest.raises(ProfileError, match=r"package\.json"):
        choose_profile(tmp_path, RepoConfig())


def test_junit_in_the_config_keeps_the_profile_and_reads_its_files(tmp_path: Path) -> None:
    config = RepoConfig(test_command="sh run-tests.sh", junit="reports/*.xml")
    profile = choose_profile(make(tmp_path, {"run-tests.sh": ""}), config)
    assert profile.name == "python" and profile.reporting == JUnitFiles("reports/*.xml")
    assert profile.reporting.selects is False


@pytest.mark.parametrize(
    ("profile_files", "path", "is_test"),
    [
        ({"tests/test_a.py": ""}, "tests/test_calc.py", True),
        ({"tests/test_a.py": ""}, "calc_test.py", True),
        ({"tests/test_a.py": ""}, "calc.py", False),
        ({"package.json": package({"test": "jest"})}, "src/calc.test.ts", True),
        ({"package.json": package({"test": "jest"})}, "src/calc.spec.js", True),
        ({"package.json": package({"test": "jest"})}, "src/__tests__/calc.js", True),
        ({"package.json": package({"test": "jest"})}, "test/calc.mjs", True),
        ({"package.json": package({"test": "jest"})}, "src/calc.ts", False),
        ({"package.json": package({"test": "jest"})}, "src/testing.ts", False),
    ],
)
def test_test_files_are_the_profiles(tmp_path: Path, profile_files: dict, path: str, is_test: bool) -> None:
    profile = choose_profile(make(tmp_path, profile_files), RepoConfig())
    assert profile.is_test_file(path) is is_test


# == how a run is asked to report =================================================================


def request(tmp_path: Path, **fields: object) -> TestRequest:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return TestRequest(run_id="r1", scratch=scratch, root=tmp_path / "repo", **fields)  # type: ignore[arg-type]


def test_node_test_reports_through_node_options(tmp_path: Path) -> None:
    make(tmp_path / "repo", {"package.json": package({"test": "node --test"})})
    profile = choose_profile(tmp_path / "repo", RepoConfig())
    run = request(tmp_path)
    invocation = profile.reporting.invocation("node --test", run)
    assert invocation.command == "node --test"  # no arguments: any node --test invocation reports
    reporter = run.scratch / REPORTER_FILE
    assert f"--test-reporter={reporter} --test-reporter-destination=" in invocation.env["NODE_OPTIONS"]
    assert invocation.env["CI"] == "true" and reporter.is_file()
    profile.reporting.discard(run, run.root)
    assert list(run.scratch.iterdir()) == []


def test_vitest_and_jest_get_their_reporters_on_the_detected_command_only(tmp_path: Path) -> None:
    make(tmp_path / "repo", {"package.json": package({"test": "vitest run"}), "pnpm-lock.yaml": ""})
    vitest = choose_profile(tmp_path / "repo", RepoConfig()).reporting
    run = request(tmp_path)
    report = run.scratch / "junit-r1.xml"
    assert vitest.invocation("pnpm test", run).command == (
        f"pnpm test --reporter=default --reporter=junit --outputFile.junit={report}"
    )
    assert vitest.invocation("npx vitest run src", run).command == "npx vitest run src"

    deps = {"jest": "29", "jest-junit": "16"}
    (tmp_path / "repo" / "pnpm-lock.yaml").unlink()
    (tmp_path / "repo" / "package.json").write_text(package({"test": "jest"}, devDependencies=deps))
    jest = choose_profile(tmp_path / "repo", RepoConfig()).reporting
    invocation = jest.invocation("npm test", run)
    assert invocation.command == "npm test -- --reporters=default --reporters=jest-junit"
    assert invocation.env["JEST_JUNIT_OUTPUT_FILE"] == str(report)
    assert invocation.env["JEST_JUNIT_CLASSNAME"] == "{filepath}"

    # Without jest-junit installed, Jest would fail on the reporter: no arguments, exit status only.
    (tmp_path / "repo" / "package.json").write_text(package({"test": "jest"}, devDependencies={"jest": "29"}))
    bare = choose_profile(tmp_path / "repo", RepoConfig()).reporting
    assert bare.invocation("npm test", run).command == "npm test"


# == the JUnit shapes =============================================================================

NODE_TESTS = {
    "calc.js": "exports.add = (a, b) => a + b;\nexports.sub = (a, b) => a + b;\n",
    "test/calc.test.js": (
        "const test = require('node:test');\nconst assert = require('node:assert');\n"
        "const { add, sub } = require('../calc');\n"
        "test('adds', () => { assert.strictEqual(add(2, 3), 5); });\n"
        "test('subtracts', () => { assert.strictEqual(sub(5, 3), 2); });\n"
        "test.describe('group', () => {\n  test.it('nested ok', () => {});\n"
        "  test.it.skip('later', () => {});\n});\n"
    ),
    "test/more.test.js": (
        "const test = require('node:test');\n"
        "test.describe('outer', () => { test.describe('inner', () => {\n"
        "  test.it('deep', () => { throw new Error('boom'); });\n}); });\n"
        "test('adds', () => {});\n"
    ),
    "test/broken.test.js": "this is not javascript (\n",
}


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_node_test_results_name_each_tests_file_and_suites(tmp_path: Path) -> None:
    root = make(tmp_path / "repo", NODE_TESTS)
    (tmp_path / REPORTER_FILE).write_text(REPORTER_SOURCE)
    report = tmp_path / "junit.xml"
    options = f"--test-reporter={tmp_path / REPORTER_FILE} --test-reporter-destination={report}"
    node = shutil.which("node") or "node"
    done = subprocess.run(
        [node, "--test"], cwd=root, env={"NODE_OPTIONS": options}, capture_output=True, check=False
    )

    assert done.returncode == 1
    tests, failures = parse_junit(report, runner_id(root))
    assert tests == {
        "test/broken.test.js": "failed",  # failed to load: the file alone, like pytest's
        "test/calc.test.js::adds": "passed",
        "test/calc.test.js::subtracts": "failed",
        "test/calc.test.js::group > nested ok": "passed",
        "test/calc.test.js::group > later": "skipped",
        "test/more.test.js::outer > inner > deep": "failed",
        "test/more.test.js::adds": "passed",
    }
    assert "8 !== 2" in failures["test/calc.test.js::subtracts"]
    assert "boom" in failures["test/more.test.js::outer > inner > deep"]


def test_nodes_own_junit_reporter_has_no_file(tmp_path: Path) -> None:
    """What ``node --test --test-reporter=junit`` writes (Node 20): every classname is "test"."""
    (tmp_path / "r.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<testsuites>\n'
        '\t<testcase name="adds" time="0.001" classname="test"/>\n'
        '\t<testsuite name="group" time="0.003" disabled="0" errors="0" tests="1" failures="1" skipped="0">\n'
        '\t\t<testcase name="nested" time="0.003" classname="test" failure="boom">\n'
        '\t\t\t<failure type="testCodeFailure" message="boom">Error: boom</failure>\n'
        "\t\t</testcase>\n\t</testsuite>\n</testsuites>\n"
    )
    tests, _ = parse_junit(tmp_path / "r.xml", runner_id(tmp_path))
    assert tests == {"test::adds": "passed", "test::nested": "failed"}


VITEST_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<testsuites name="vitest tests" tests="3" failures="1" errors="0" time="0.851">
    <testsuite name="src/calc.test.ts" timestamp="2026-12-03T13:11:14.839Z" hostname="vm" tests="1">
        <testcase classname="src/calc.test.ts" name="add" time="0.0017">
        </testcase>
    </testsuite>
    <testsuite name="src/more.test.ts" timestamp="2026-12-03T13:11:14.855Z" hostname="vm" tests="2">
        <testcase classname="src/more.test.ts" name="outer &gt; inner &gt; deep" time="0.019">
            <failure message="expected 8 to be 2 // Object.is equality" type="AssertionError">
AssertionError: expected 8 to be 2 // Object.is equality
 > src/more.test.ts:2:84
            </failure>
        </testcase>
        <testcase classname="src/more.test.ts" name="outer &gt; later" time="0">
            <skipped/>
        </testcase>
    </testsuite>
</testsuites>
"""
"""Vitest 2.1's ``--reporter=junit`` (classname the file, name the suites and the test)."""

JEST_JUNIT_XML = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="jest tests" tests="3" failures="1" errors="0" time="0.912">
  <testsuite name="calc" errors="0" failures="1" skipped="0" time="0.5" tests="3">
    <testcase classname="src/calc.test.js" name="calc &gt; adds" time="0.002">
    </testcase>
    <testcase classname="src/calc.test.js" name="calc &gt; subtracts" time="0.003">
      <failure>Error: expect(received).toBe(expected) // Object.is equality

Expected: 2
Received: 8
    at Object.toBe (/work/repo/src/calc.test.js:8:22)</failure>
    </testcase>
    <testcase classname="src/top.test.js" name=" &gt; top level" time="0.001">
    </testcase>
  </testsuite>
</testsuites>
"""
"""jest-junit 16 with the profile's JEST_JUNIT_CLASSNAME="{filepath}" and
JEST_JUNIT_TITLE="{classname} > {title}" (a test outside any describe has no ancestors)."""


def test_vitest_and_jest_junit_results_have_the_same_ids(tmp_path: Path) -> None:
    (tmp_path / "v.xml").write_text(VITEST_XML)
    (tmp_path / "j.xml").write_text(JEST_JUNIT_XML)

    vitest, failures = parse_junit(tmp_path / "v.xml", runner_id(tmp_path))
    assert vitest == {
        "src/calc.test.ts::add": "passed",
        "src/more.test.ts::outer > inner > deep": "failed",
        "src/more.test.ts::outer > later": "skipped",
    }
    assert "expected 8 to be 2" in failures["src/more.test.ts::outer > inner > deep"]
    jest, failures = parse_junit(tmp_path / "j.xml", runner_id(tmp_path))
    assert jest == {
        "src/calc.test.js::calc > adds": "passed",
        "src/calc.test.js::calc > subtracts": "failed",
        "src/top.test.js::top level": "passed",
    }
    assert "Received: 8" in failures["src/calc.test.js::calc > subtracts"]


def test_generic_junit_ids_are_classname_and_name_or_file_based(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "go.xml").write_text(
        '<testsuites><testsuite name="example.com/calc">'
        '<testcase classname="example.com/calc" name="TestAdd"/>'
        '<testcase classname="example.com/calc" name="TestSub"><failure message="8 != 2"/></testcase>'
        "</testsuite></testsuites>"
    )
    (tmp_path / "reports" / "py.xml").write_text(
        f'<testsuite><testcase file="{tmp_path}/tests/test_x.py" classname="tests.test_x.TestX"'
        ' name="test_y"/></testsuite>'
    )
    reporting = JUnitFiles("reports/*.xml")
    results = reporting.results(request(tmp_path), tmp_path)
    assert results.tests == {
        "example.com/calc::TestAdd": "passed",
        "example.com/calc::TestSub": "failed",
        "tests/test_x.py::TestX::test_y": "passed",
    }


def test_generic_junit_files_are_read_only_inside_the_checkout_and_removed(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    outside = tmp_path / "outside"
    make(outside, {"secret.xml": '<testsuite><testcase classname="s" name="t"><failure message="SECRET"/>'})
    make(root, {"reports/a.xml": '<testsuite><testcase classname="c" name="n"/></testsuite>'})
    (root / "reports" / "link.xml").symlink_to(outside / "secret.xml")
    (root / "elsewhere").symlink_to(outside)
    reporting = JUnitFiles("*/*.xml")

    results = reporting.results(request(tmp_path), root)

    assert results.tests == {"c::n": "passed"}
    reporting.discard(request(tmp_path), root)
    assert sorted(p.name for p in (root / "reports").iterdir()) == ["link.xml"]  # a link is not a report
    assert (outside / "secret.xml").is_file()  # nothing outside the checkout is read or removed
