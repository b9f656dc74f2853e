"""What a repository may say about itself in ``.codeworker.yml``, and the test command it gets.

The file may set ``test_command``, ``setup_command`` and ``junit`` (where the test command writes
JUnit XML, for per-test results from any runner: :mod:`codeworker.profiles.junit_files`), nothing
else. Both commands run in the sandbox like every repository command (setup with network, to
install dependencies; never with the worker's credentials). Policy (the secret scan, the sandbox,
budgets, the iteration cap, the repository allowlist, the environment commands get) comes only from
the worker's environment, so nothing a repository writes can weaken it.

Unknown keys are ignored, and logged as a warning that names them: a typo (``test_comand``) must
not fail a job, a key that tries to change policy (``scan: false``) has nothing to bind to, and an
operator reading the log learns about both. A file that cannot be used as it stands fails the job
with :class:`RepoConfigError` rather than being half-applied: invalid YAML or UTF-8, a top level
that is not a mapping, a wrong type for one of the keys, a ``junit`` path that is absolute or
leaves the checkout, YAML aliases (a "billion laughs" file
expands exponentially, and two strings need none), a file over :data:`MAX_CONFIG_BYTES`, and a
``.codeworker.yml`` that is not a regular file (through a symlink the unsandboxed worker would
read whatever it points at). PyYAML's safe loader builds no Python objects (``!!python/...`` tags
are errors).

:class:`~codeworker.sandbox.checkout.Checkout` reads the file once, before any command runs: the settings
are the base commit's, and an agent that edits the file cannot change the test command that the
verification trusts.

What is detected when the file says nothing (the test command, the setup) is the repository's
language profile's business (:mod:`codeworker.profiles`); for Python, a ``requirements.txt`` at
the root is installed with pip into the setup cache (:func:`setup_plan`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from codeworker.models import command
from codeworker.names import shown

log = logging.getLogger(__name__)

CONFIG_FILE = ".codeworker.yml"

MAX_CONFIG_BYTES = 100_000
"""Largest .codeworker.yml read; two commands fit in far less."""


class RepoConfigError(ValueError):
    """The repository's .codeworker.yml cannot be used; the message says why."""


class RepoConfig(BaseModel):
    """The repository's own settings."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    test_command: str | None = Field(None, max_length=2000)
    """Command that runs the repository's tests."""

    setup_command: str | None = Field(None, max_length=2000)
    """Command that installs the repository's dependencies."""

    junit: str | None = Field(None, max_length=1000)
    """Where the test command writes JUnit XML: a path or glob relative to the checkout."""

    _command = field_validator("test_command", "setup_command")(command)

    @field_validator("junit")
    @classmethod
    def _inside(cls, value: str | None) -> str | None:
        if value is None:
            return None
        pattern = value.strip()
        if not pattern or "\x00" in pattern:
            raise ValueError("must be a non-empty path or glob")
        if pattern.startswith("/") or ".." in pattern.split("/") or not PurePosixPath(pattern).parts:
            raise ValueError("must be relative to the checkout and stay inside it")
        return pattern


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases: each one may repeat a whole subtree, so a small
    file can expand without bound (and pydantic's error message would ``repr`` all of it)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed", mark)
        return super().compose_node(parent, index)


def load_repo_config(checkout: Path) -> RepoConfig:
    """The checkout's settings (defaults without a file); :class:`RepoConfigError` if unusable."""
    data = _parse(read_repo_file(checkout / CONFIG_FILE, MAX_CONFIG_BYTES))
    if data is None:
        return RepoConfig()
    if not isinstance(data, dict):
        raise RepoConfigError(f"{CONFIG_FILE} must be a mapping of settings, not a {type(data).__name__}")
    known = RepoConfig.model_fields
    ignored = [str(key) for key in data if key not in known]
    if ignored:
        log.warning(
            "%s: ignoring unknown keys %s; only %s are read",
            CONFIG_FILE,
            ", ".join(shown(key, 40) for key in ignored[:20]),
            ", ".join(known),
        )
    try:
        return RepoConfig.model_validate({key: value for key, value in data.items() if key in known})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise RepoConfigError(f"{CONFIG_FILE} is invalid: {problems}") from None


def read_repo_file(path: Path, limit: int, error: type[RepoConfigError] = RepoConfigError) -> bytes | None:
    """A repository's settings file (``.codeworker.yml``, ``package.json``), None when there is
    none. Opened without following a symlink and without blocking on a FIFO, then refused with
    ``error`` unless it is a regular file of at most ``limit`` bytes: the worker reads it outside
    the sandbox."""
    name = path.name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{name} is a symbolic link; only a regular file is read") from None
        raise error(f"{name} cannot be opened: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{name} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            raw = file.read(limit + 1)
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise error(f"{name} is larger than {limit:,} bytes")
    return raw


def _parse(raw: bytes | None) -> object:
    if raw is None:
        return None
    try:
        return yaml.load(raw.decode("utf-8"), Loader=_NoAliasLoader)  # noqa: S506 - a safe loader
    except UnicodeDecodeError:
        raise RepoConfigError(f"{CONFIG_FILE} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise RepoConfigError(f"{CONFIG_FILE} is not valid YAML: {exc}") from None
    except RecursionError:
        raise RepoConfigError(f"{CONFIG_FILE} nests too deeply") from None


def detect_test_command(checkout: Path) -> str | None:
    """pytest when the repository looks like a Python project with tests; None otherwise."""
    markers = ("pytest.ini", "conftest.py", "tests", "test")
    if any((checkout / marker).exists() for marker in markers) or any(checkout.glob("test_*.py")):
        return "python -m pytest -q -p no:cacheprovider"
    return None


DEPENDENCY_FILES = (
    CONFIG_FILE,
    "requirements.txt",
    "requirements-dev.txt",
    "requirements-test.txt",
    "constraints.txt",
    "pyproject.toml",
    "setup.cfg",
    "setup.py",
    "poetry.lock",
    "Pipfile.lock",
    "uv.lock",
    "package.json",
    "package-lock.json",
)
"""Root files whose content decides what setup produces: a change to any of them is a new cache key."""

REQUIREMENT_DIRS = ("requirements", "requirements.d", "reqs")
"""Directories whose ``*.txt`` files are requirement files too (``requirements/base.txt``)."""

INCLUDE = re.compile(r"^\s*(?:-r|-c|--requirement|--constraint)(?:\s*=\s*|\s+)(\S+)", re.MULTILINE)
"""A pip requirement file's include of another one (``-r base.txt``, ``--constraint=c.txt``)."""

MAX_DEPENDENCY_FILES = 200
"""Files a cache key covers at most: a repository that includes more is keyed by the first ones."""


def dependency_files(checkout: Path) -> tuple[str, ...]:
    """Every file setup can read to decide what it installs: the root files of
    :data:`DEPENDENCY_FILES`, every ``requirements*.txt`` and ``constraints*.txt`` at the root,
    every ``*.txt`` under :data:`REQUIREMENT_DIRS`, and whatever those include with ``-r`` or
    ``-c``, followed from file to file. Only regular files inside the checkout count (no links)."""
    root = checkout.resolve()
    found: list[str] = []
    pending = [*DEPENDENCY_FILES]
    pending += sorted(
        p.name for pattern in ("requirements*.txt", "constraints*.txt") for p in root.glob(pattern)
    )
    pending += sorted(str(p.relative_to(root)) for d in REQUIREMENT_DIRS for p in (root / d).glob("**/*.txt"))
    while pending and len(found) < MAX_DEPENDENCY_FILES:
        name = pending.pop(0)
        path = root / name
        if name in found or path.is_symlink() or not path.is_file():
            continue
        if not path.resolve().is_relative_to(root):
            continue
        found.append(name)
        if name.endswith(".txt") or name.endswith(".in"):
            with path.open("rb") as handle:
                text = handle.read(MAX_CONFIG_BYTES).decode("utf-8", errors="replace")
            for included in INCLUDE.findall(text):
                target = posixpath.normpath(posixpath.join(posixpath.dirname(name), included))
                if not target.startswith(".."):
                    pending.append(target)
    return tuple(found)


DETECTED_PIP_SETUP = 'python -m pip install --quiet --target "$CODEWORKER_CACHE/python" -r requirements.txt'
"""Setup for a repository with a requirements.txt and no setup_command of its own."""


@dataclass(frozen=True)
class SetupPlan:
    """The setup command a checkout needs and the files its result depends on."""

    command: str
    dependency_files: tuple[str, ...]

    def cache_key(self, checkout: Path) -> str:
        """Hash of the command, the interpreter and the dependency files' content: equal keys may
        share one setup result, because setup sees nothing else that differs between them."""
        digest = hashlib.sha256()
        for part in (self.command, sys.version):
            digest.update(part.encode() + b"\0")
        for name in self.dependency_files:
            digest.update(name.encode() + b"\0" + (checkout / name).read_bytes() + b"\0")
        return digest.hexdigest()[:32]


def setup_plan(checkout: Path, config: RepoConfig) -> SetupPlan | None:
    """The repository's setup_command, else pip for a requirements.txt, else None (nothing to do)."""
    files = dependency_files(checkout)
    command = config.setup_command
    if command:
        return SetupPlan(command, files)
    if "requirements.txt" in files:
        return SetupPlan(DETECTED_PIP_SETUP, files)
    return None
