"""codeworker.test: Write tests that raise coverage of the target files."""

from __future__ import annotations

from typing import Any

from celery import Task

from codeworker.celery import app
from tasks import run_operation


@app.task(name="codeworker.test", bind=True)
def test(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Write tests that raise coverage of the target files."""
    return run_operation(self, args, kwargs, "test")
