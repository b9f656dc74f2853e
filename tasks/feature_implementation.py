"""codeworker.feature_implementation: Implement the feature described in the job's feature_context."""

from __future__ import annotations

from typing import Any

from celery import Task

from codeworker.celery import app
from tasks import run_operation


@app.task(name="codeworker.feature_implementation", bind=True)
def feature_implementation(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Implement the feature described in the job's feature_context."""
    return run_operation(self, args, kwargs, "feature_implementation")
