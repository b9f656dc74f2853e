"""codeworker.refactor: Refactor the target files without changing behaviour."""

from __future__ import annotations

from typing import Any

from celery import Task

from codeworker.celery import app
from tasks import run_operation


@app.task(name="codeworker.refactor", bind=True)
def refactor(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Refactor the target files without changing behaviour."""
    return run_operation(self, args, kwargs, "refactor")
