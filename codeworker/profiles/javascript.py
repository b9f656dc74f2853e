"""JavaScript and TypeScript: a ``package.json``, its lock file's package manager, its ``test``
script, and per-test results through the runner's JUnit reporting.

- **Setup** installs with the lock file's manager (``npm ci``, ``pnpm install --frozen-lockfile``,
  ``yarn install --immutable``) into the setup cache keyed by the lock file. Node looks for packages
  in ``node_modules`` next to the code (ES modules ignore ``NODE_PATH``), so the cache's
  ``node_modules`` is bound by the sandbox at ``<checkout>/node_modules``
  (:attr:`~codeworker.profiles.base.Profile.cache_dirs`): setup installs through that bind into the
  entry being built (``npm ci`` empties ``node_modules`` rather than removing it, so a mount point
  survives), and later jobs see it read-only. Nothing is copied or linked into the checkout, so
  nothing of it can land in a commit, whatever the repository's ``.gitignore`` says.
- **Tests** run the ``test`` script: through the package manager, or, when the script is exactly a
  ``node --test ...`` command, that command itself (no package manager is needed to run it).
- **Per test**: the runner is detected from the script and the dependencies. Node's runner takes
  its reporter from ``NODE_OPTIONS`` (Node 20 accepts ``--test-reporter`` there, and it reaches the
  runner through ``npm test`` too); the worker's reporter (:mod:`codeworker.profiles.node_reporter`)
  writes JUnit with each test's file. Jest reports through ``jest-junit`` (when the repository
  depends on it: Jest fails on a reporter it cannot load) and Vitest through its ``junit``
  reporter; both are asked by arguments added to the detected command, so a ``test_command`` of
  the repository's own gets no arguments added (name ``junit:`` in ``.codeworker.yml`` then).
  Every run has ``CI=true``, which keeps Jest and Vitest out of watch mode, ``NO_COLOR``, and,
  where Node takes it, ``--disable-wasm-trap-handler`` (:data:`WASM_TRAP_HANDLER`).

Re-runs of some tests run the whole command and keep the wanted tests' outcomes: selecting by
name differs per runner and would need the names quoted into a pattern. Coverage is not measured
(a ``test`` operation says so).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from codeworker.profiles.base import Invocation, Profile, ProfileError, Results, TestRequest
from codeworker.profiles.node_reporter import REPORTER_FILE, REPORTER_SOURCE
from codeworker.sandbox.repo_config import CONFIG_FILE, RepoConfig, SetupPlan, read_repo_file
from codeworker.verification.junit import parse_junit, runner_id

PACKAGE_JSON = "package.json"

MAX_PACKAGE_BYTES = 1_000_000
"""Largest package.json read."""

LOCK_FILES = {
    "package-lock.json": ("npm", "npm ci"),
    "npm-shrinkwrap.json": ("npm", "npm ci"),
    "pnpm-lock.yaml": ("pnpm", "pnpm install --frozen-lockfile"),
    "yarn.lock": ("yarn", "yarn install --immutable"),
}
"""Lock file -> (package manager, install command), in the order they are looked for."""

UNLOCKED_INSTALL = "npm install --no-package-lock --no-audit --no-fund"
"""Setup of a package.json with dependencies and no lock file (writing none into the checkout)."""

SETUP_FILES = (CONFIG_FILE, PACKAGE_JSON, *LOCK_FILES, ".npmrc", ".yarnrc.yml", "pnpm-workspace.yaml")
"""Files whose content decides what setup installs: its cache key."""

NO_TEST_SCRIPT = 'echo "Error: no test specified" && exit 1'
"""The test script ``npm init`` writes: no tests at all."""

NODE_TEST = re.compile(r"^node\s+(?:[^;&|<>$`\\\"'\s]+\s+)*--test(?:\s+[^;&|<>$`\\\"'\s]+)*$")
"""A test script that is one plain ``node ... --test ...`` command, run without a package manager."""

TEST_FILE = re.compile(r"(^|/)(__tests__|tests?)/|\.(test|spec)\.[cm]?[jt]sx?$")
"""Paths that hold tests: ``*.test.ts``, ``*.spec.js``, anything under ``__tests__/``, ``test/``
or ``tests/``."""

CACHE_DIRS = ("node_modules",)

PRIVATE_DIRS = ("node_modules/.cache", "node_modules/.vite")
"""Where tools keep their caches inside node_modules (find-cache-dir's convention, Vite's and
Vitest's): writable per command, over the read-only cache."""

JEST_JUNIT_ENV = {
    "JEST_JUNIT_CLASSNAME": "{filepath}",
    "JEST_JUNIT_TITLE": "{classname} > {title}",
    "JEST_JUNIT_ANCESTOR_SEPARATOR": " > ",
}
"""jest-junit's case shape made Vitest's: classname the file, name the suites and the test."""


@dataclass(frozen=True)
class Package:
    """What the worker reads of a ``package.json``."""

    scripts: dict[str, str] = field(default_factory=dict)
    dependencies: frozenset[str] = frozenset()
    """Names in dependencies, devDependencies and optionalDependencies."""

    @property
    def test_script(self) -> str | None:
        script = self.scripts.get("test", "").strip()
        return script if script and script != NO_TEST_SCRIPT else None


def read_package(checkout: Path) -> Package | None:
    """The checkout's package.json; None without one; :class:`ProfileError` when it is unusable."""
    data = _load(checkout / PACKAGE_JSON)
    if data is None:
        return None
    scripts = data.get("scripts")
    scripts = {k: v for k, v in scripts.items() if isinstance(v, str)} if isinstance(scripts, dict) else {}
    names: set[str] = set()
    for key in ("dependencies", "devDependencies", "optionalDependencies"):
        section = data.get(key)
        if isinstance(section, dict):
            names.update(str(name) for name in section)
    return Package(scripts, frozenset(names))


def _load(path: Path) -> dict[str, Any] | None:
    """Read like .codeworker.yml (:func:`read_repo_file`), then parse."""
    raw = read_repo_file(path, MAX_PACKAGE_BYTES, ProfileError)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProfileError(f"{PACKAGE_JSON} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{PACKAGE_JSON} must hold a JSON object")
    return data


def package_manager(checkout: Path) -> tuple[str, str | None]:
    """The package manager the lock file names (npm without one) and its install command (None
    without a lock file)."""
    for lock, (manager, install) in LOCK_FILES.items():
        if (checkout / lock).is_file():
            return manager, install
    return "npm", None


def detect_runner(package: Package) -> str:
    """``node:test``, ``vitest``, ``jest``, or "" when the test script and dependencies name none
    of them. The script decides first (a repository may depend on both Jest and Vitest)."""
    script = package.test_script or ""
    words = set(re.split(r"[\s;&|()]+", script))
    if "vitest" in words:
        return "vitest"
    if "jest" in words:
        return "jest"
    if "--test" in words and "node" in words:
        return "node:test"
    for runner in ("vitest", "jest"):
        if runner in package.dependencies:
            return runner
    return ""


def test_command(package: Package, manager: str) -> str | None:
    """The test script itself when it is a plain ``node --test`` command, else ``<manager> test``."""
    script = package.test_script
    if script is None:
        return None
    if NODE_TEST.match(script):
        return script
    return f"{manager} test"


WASM_TRAP_HANDLER = "--disable-wasm-trap-handler"
"""V8's WebAssembly trap handler reserves about 10 GB of address space per memory, which the
sandbox's address-space limit refuses (Vite's and Vitest's module lexer is WebAssembly)."""


@lru_cache(maxsize=1)
def node_takes(option: str) -> bool:
    """Whether the host's Node.js (the one commands see through /usr) accepts ``option`` in
    NODE_OPTIONS (``--disable-wasm-trap-handler`` came with Node 20.15); checked once per process."""
    node = shutil.which("node")
    if node is None:
        return False
    try:
        done = subprocess.run(
            [node, "-e", "0"], env={"NODE_OPTIONS": option}, capture_output=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _passed_on(manager: str, command: str, arguments: list[str]) -> str:
    """``command`` with ``arguments`` for the test script (npm needs ``--`` before them)."""
    joined = shlex.join(arguments)
    return f"{command} -- {joined}" if manager == "npm" else f"{command} {joined}"


@dataclass(frozen=True)
class RunnerReporting:
    """The detected runner's JUnit reporting for one repository."""

    runner: str
    own_command: str | None
    """The command the profile detected: only it gets arguments added."""
    manager: str = "npm"
    jest_junit: bool = False
    """Whether the repository depends on jest-junit (Jest cannot report JUnit without it)."""
    selects: bool = False

    def invocation(self, command: str, request: TestRequest) -> Invocation:
        report = str(_junit(request))
        env = {"CI": "true", "NO_COLOR": "1"}  # no colour codes in the output the model reads
        options = [WASM_TRAP_HANDLER] if node_takes(WASM_TRAP_HANDLER) else []
        ours = command == self.own_command and command is not None
        if self.runner == "node:test":
            (request.scratch / REPORTER_FILE).write_text(REPORTER_SOURCE, encoding="utf-8")
            reporter = request.scratch / REPORTER_FILE
            options += [f"--test-reporter={reporter}", f"--test-reporter-destination={report}"]
            options += ["--test-reporter=spec", "--test-reporter-destination=stdout"]
        elif self.runner == "jest" and self.jest_junit and ours:
            env.update(JEST_JUNIT_ENV, JEST_JUNIT_OUTPUT_FILE=report)
            command = _passed_on(self.manager, command, ["--reporters=default", "--reporters=jest-junit"])
        elif self.runner == "vitest" and ours:
            arguments = ["--reporter=default", "--reporter=junit", f"--outputFile.junit={report}"]
            command = _passed_on(self.manager, command, arguments)
        if options:
            env["NODE_OPTIONS"] = " ".join(options)
        return Invocation(command, env)

    def results(self, request: TestRequest, root: Path) -> Results:
        tests, failures = parse_junit(_junit(request), runner_id(root))
        return Results(tests, failures)

    def discard(self, request: TestRequest, root: Path) -> None:
        for path in (_junit(request), request.scratch / REPORTER_FILE):
            path.unlink(missing_ok=True)


def _junit(request: TestRequest) -> Path:
    return request.scratch / f"junit-{request.run_id}.xml"


def setup(checkout: Path, config: RepoConfig, package: Package) -> SetupPlan | None:
    """``setup_command``, else the lock file's install, else an install without a lock file when
    there are dependencies, else None."""
    files = tuple(
        name for name in SETUP_FILES if (checkout / name).is_file() and not (checkout / name).is_symlink()
    )
    if config.setup_command:
        return SetupPlan(config.setup_command, files)
    _, install = package_manager(checkout)
    if install is not None:
        return SetupPlan(install, files)
    return SetupPlan(UNLOCKED_INSTALL, files) if package.dependencies else None


def javascript_profile(checkout: Path, config: RepoConfig, package: Package, explicit: bool) -> Profile:
    """The profile of a checkout with a package.json; ``explicit``: the job or .codeworker.yml
    names a test command, so a missing test script is no error."""
    manager, _ = package_manager(checkout)
    command = test_command(package, manager)
    if command is None and not explicit:
        raise ProfileError(
            f'{PACKAGE_JSON} has no "test" script, so the worker cannot run the tests: add one '
            '(for example "scripts": {"test": "node --test"}, "vitest run" or "jest"), '
            f"or set test_command in {CONFIG_FILE}"
        )
    runner = detect_runner(package)
    reporting = RunnerReporting(runner, command, manager, jest_junit="jest-junit" in package.dependencies)
    setup_plan = setup(checkout, config, package)
    return Profile(
        name="javascript",
        language="JavaScript/TypeScript",
        test_command=command,
        setup=setup_plan,
        reporting=reporting,
        test_files=TEST_FILE,
        conventions=(
            f"tests run with {runner or 'the test script'}; test files are named *.test.js / *.test.ts "
            "or *.spec.*, or live under test/ or __tests__/; dependencies come from the lock file "
            "(installed once by the worker; there is no network)"
        ),
        runner=runner,
        cache_dirs=CACHE_DIRS if setup_plan is not None else (),
        private_dirs=PRIVATE_DIRS if setup_plan is not None else (),
        environment={"NODE_OPTIONS": WASM_TRAP_HANDLER} if node_takes(WASM_TRAP_HANDLER) else {},
    )
