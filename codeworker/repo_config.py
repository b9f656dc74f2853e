"""What a repository may say about itself in ``.codeworker.yml``, and the test command it gets.

The file may set ``test_command`` and ``setup_command`` only; anything else is ignored, so a
repository cannot weaken the worker's policy.

Setup detection is deliberately modest: a ``requirements.txt`` at the root is installed with pip
into the setup cache; anything else needs ``setup_command`` in ``.codeworker.yml``.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

CONFIG_FILE = ".codeworker.yml"


class RepoConfigError(ValueError):
    """The repository's .codeworker.yml cannot be read."""


class RepoConfig(BaseModel):
    """The repository's own settings."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    test_command: str | None = None
    """Command that runs the repository's tests."""

    setup_command: str | None = None
    """Command that installs the repository's dependencies."""


def load_repo_config(checkout: Path) -> RepoConfig:
    path = checkout / CONFIG_FILE
    if not path.is_file() or path.is_symlink():
        return RepoConfig()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace")[:100_000])
        return RepoConfig.model_validate(data or {})
    except (yaml.YAMLError, ValidationError) as exc:
        raise RepoConfigError(f"{CONFIG_FILE} is invalid: {exc}") from None


def detect_test_command(checkout: Path) -> str | None:
    """pytest when the repository looks like a Python project with tests; None otherwise."""
    markers = ("pytest.ini", "conftest.py", "tests", "test")
    if any((checkout / marker).exists() for marker in markers) or any(checkout.glob("test_*.py")):
        return "python -m pytest -q -p no:cacheprovider"
    return None


def test_command_for(checkout: Path, requested: str | None) -> str | None:
    """The job's command, else the repository's, else a detected one."""
    return requested or load_repo_config(checkout).test_command or detect_test_command(checkout)


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


def setup_plan(checkout: Path) -> SetupPlan | None:
    """The repository's setup_command, else pip for a requirements.txt, else None (nothing to do)."""
    files = tuple(
        name
        for name in DEPENDENCY_FILES
        if (checkout / name).is_file() and not (checkout / name).is_symlink()
    )
    command = load_repo_config(checkout).setup_command
    if command:
        return SetupPlan(command, files)
    if "requirements.txt" in files:
        return SetupPlan(DETECTED_PIP_SETUP, files)
    return None
