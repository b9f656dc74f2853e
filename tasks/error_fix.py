"""codeworker.error_fix: Fix the error described in the job's error_context."""

from __future__ import annotations

from typing import Any

from celery import Task

from codeworker.celery import app
from tasks import run_operation


@app.task(name="codeworker.error_fix", bind=True)
def error_fix(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Fix the error described in the job's error_context."""
    return run_operation(self, args, kwargs, "error_fix")
