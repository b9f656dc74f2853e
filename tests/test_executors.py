"""The executor registry (entry points) and the shipped ``autofix`` executor, on a real checkout."""

from __future__ import annotations

import sys
import time
import uuid

import pytest

from codeworker.executors.autofix import AutofixExecutor
from codeworker.executors.base import Executor
from codeworker.executors.registry import UnknownExecutor, available, load_executor
from codeworker.models import parse_job
from codeworker.pipeline.run import OperationRun
from tests.support.worker import PLUGINS

UNTIDY = "import os, sys\n\n\ndef answer( ):\n    return   42\n"
PYTEST_INI = "[pytest]\npythonpath = .\n"
TEST = "from app import answer\n\n\ndef test_answer():\n    assert answer() == 42\n"


@pytest.fixture()
def test_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS))


@pytest.mark.parametrize("operation_type", ["error_fix", "feature_implementation", "refactor", "test"])
def test_each_operation_type_has_a_default_executor(operation_type):
    executor = load_executor(None, operation_type)
    assert isinstance(executor, Executor)
    assert executor.name == "agent"


def test_a_named_plugin_is_found_through_its_entry_point(test_plugins):
    assert "scripted" in available()
    executor = load_executor("scripted", "refactor")
    assert type(executor).__module__ == "cw_scripted"
    assert "cw_scripted" in sys.modules


def test_an_unknown_executor_names_the_installed_ones():
    with pytest.raises(UnknownExecutor, match=r"unknown executor 'gpt'; installed: agent, autofix"):
        load_executor("gpt", "refactor")


def test_autofix_fixes_and_formats_with_the_tests_unchanged(pipe, git_server):
    name = f"untidy-{uuid.uuid4().hex[:8]}"
    url = git_server.create_repo(
        "acme", name, {"app.py": UNTIDY, "tests/test_app.py": TEST, "pytest.ini": PYTEST_INI}
    )
    job = parse_job(
        {"description": "tidy", "repository": {"url": url}, "target_files": ["app.py"]},
        operation_type="refactor",
        allowed_repos=pipe.settings.allowed_repos,
        max_iterations_cap=10,
    )
    claim = pipe.claims.claim(job.operation_id)

    result = OperationRun(pipe, job, AutofixExecutor(), claim.owner, None, time.monotonic()).execute()

    assert result["status"] == "pr_open", result["error"]
    assert result["success"] is True
    assert git_server.read_file("acme", name, result["branch"], "app.py") == "def answer():\n    return 42\n"
    before, after = result["verification"]["before"], result["verification"]["after"]
    assert before["passed"] is True and after["passed"] is True
    assert "1 passed" in after["output_tail"]
