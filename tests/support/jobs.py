"""Building and following jobs in end-to-end tests: sample repositories, scripted jobs, gates."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

from codeworker.loopback.gitserver import GitServer
from tests.support.worker import WorkerProcess

QUEUE = "code-operation"
RESULT_TIMEOUT = 120

APP_PY = "def greet(name):\n    return 'hello ' + name\n"
TEST_APP_PY = "from app import greet\n\n\ndef test_greet():\n    assert greet('x') == 'hello x'\n"
PYTEST_INI = "[pytest]\npythonpath = .\n"


def new_repo(git_server: GitServer, files: dict[str, str] | None = None) -> tuple[str, str]:
    """A fresh repository ``acme/<name>`` holding ``files``, by default a small passing test suite;
    (name, clone URL)."""
    name = f"repo-{uuid.uuid4().hex[:8]}"
    default = {"app.py": APP_PY, "tests/test_app.py": TEST_APP_PY, "pytest.ini": PYTEST_INI}
    return name, git_server.create_repo("acme", name, files or default)


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


GATE_TIMEOUT = 90
"""Seconds a test waits for a scripted job to reach its gate before it fails."""


def open_gate(gate: Path, worker: WorkerProcess | None = None, timeout: float = GATE_TIMEOUT) -> int:
    """Open the FIFO ``gate`` for writing: returns once a scripted job has opened it for reading,
    i.e. it is parked after checkout and locking. Raises TimeoutError (with the tail of
    ``worker``'s log) instead of hanging when no job gets there."""
    opened: list[int] = []
    thread = threading.Thread(target=lambda: opened.append(os.open(gate, os.O_WRONLY)), daemon=True)
    thread.start()
    thread.join(timeout)
    if not opened:
        reader = os.open(gate, os.O_RDONLY | os.O_NONBLOCK)  # unblocks the opener
        thread.join(5)
        os.close(reader)
        for fd in opened:
            os.close(fd)
        log = "\n".join(worker.lines[-30:]) if worker else ""
        raise TimeoutError(f"no job parked at {gate} within {timeout} s\n{log}")
    return opened[0]


def release(fd: int) -> None:
    """Let the job parked behind ``fd`` (from :func:`open_gate`) go on."""
    os.write(fd, b"go")
    os.close(fd)


@contextmanager
def parked(gate: Path) -> Iterator[None]:
    """Hold a scripted job at its gate for the ``with`` block; closing it lets the job go on."""
    fd = open_gate(gate)
    try:
        yield
    finally:
        release(fd)


def run_job(client: Celery, job: dict, task: str = "codeworker.refactor") -> dict:
    return client.send_task(task, args=[job], queue=QUEUE).get(timeout=RESULT_TIMEOUT)
