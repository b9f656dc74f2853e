"""Building and following jobs in end-to-end tests: sample repositories, scripted jobs, gates."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

from tests.support.gitserver import GitServer

QUEUE = "code-operation"
RESULT_TIMEOUT = 120

APP_PY = "def greet(name):\n    return 'hello ' + name\n"
TEST_APP_PY = "from app import greet\n\n\ndef test_greet():\n    assert greet('x') == 'hello x'\n"
PYTEST_INI = "[pytest]\npythonpath = .\n"


def new_repo(git_server: GitServer) -> tuple[str, str]:
    """A fresh repository ``acme/<name>`` with a small passing test suite; (name, clone URL)."""
    name = f"repo-{uuid.uuid4().hex[:8]}"
    url = git_server.create_repo(
        "acme", name, {"app.py": APP_PY, "tests/test_app.py": TEST_APP_PY, "pytest.ini": PYTEST_INI}
    )
    return name, url


def scripted_job(url: str, name: str, script: dict, **extra: object) -> dict:
    """A job for the test-only ``scripted`` executor (tests/plugins), which applies ``script``."""
    return {
        "operation_type": "refactor",
        "description": json.dumps(script),
        "repository": {"url": url, "owner": "acme", "name": name, "branch": "main"},
        "executor": "scripted",
        "operation_id": f"op-{uuid.uuid4().hex[:12]}",
        **extra,
    }


@contextmanager
def parked(gate: Path) -> Iterator[None]:
    """Hold a scripted job at its gate: opening a FIFO for writing blocks until the executor opens
    it for reading, which it does after checkout and locking; closing it lets the job go on."""
    fd = os.open(gate, os.O_WRONLY)
    try:
        yield
    finally:
        os.write(fd, b"go")
        os.close(fd)


def run_job(client: Celery, job: dict, task: str = "codeworker.refactor") -> dict:
    return client.send_task(task, args=[job], queue=QUEUE).get(timeout=RESULT_TIMEOUT)
