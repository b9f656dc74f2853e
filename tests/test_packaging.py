"""What ``pip install .`` puts on a machine: one top-level package, ``codeworker``.

The design card's ``tasks/`` and ``executors/`` folders install as ``codeworker.tasks`` and
``codeworker.executors``, so a backend with its own ``tasks`` module can install codeworker beside it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from codeworker.models import OperationType

ROOT = Path(__file__).resolve().parent.parent
UNSHIPPED = (".git", ".venv*", ".work", "build", "*.egg-info", "__pycache__", ".ruff_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds.
    source = tmp_path_factory.mktemp("source") / "codeworker"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*UNSHIPPED))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)],
        check=True,
    )
    (built,) = out.glob("codeworker-*.whl")
    return zipfile.ZipFile(built)


def test_only_the_codeworker_package_is_installed(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/")[0] for name in wheel.namelist()}
    assert {name for name in top if not name.endswith(".dist-info")} == {"codeworker"}


def test_tasks_and_executors_install_under_codeworker(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert {f"codeworker/tasks/{kind}.py" for kind in OperationType} <= names
    assert {"codeworker/executors/registry.py", "codeworker/executors/agent/executor.py"} <= names
    assert "codeworker/secrets/rules.yml" in names


def test_entry_points_name_the_namespaced_modules(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "agent = codeworker.executors.agent:AgentExecutor" in text
    assert "autofix = codeworker.executors.autofix:AutofixExecutor" in text
    assert "codeworker = codeworker.cli:main" in text


def test_benchmarks_do_not_import_the_tests() -> None:
    """bench/ runs from a checkout without the test suite: what both need lives in the package."""
    imported = set()
    for path in (ROOT / "bench").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert "codeworker.loopback.gitserver" in imported
    assert not [name for name in imported if name.split(".")[0] == "tests"]
