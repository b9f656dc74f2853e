"""What a repository may say about itself in ``.codeworker.yml``, and the test command it gets.

The file may set ``test_command`` and ``setup_command`` only; anything else is ignored, so a
repository cannot weaken the worker's policy.
"""

from __future__ import annotations

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
