"""codeworker.refactor: Refactor the target files without changing behaviour."""

from codeworker.tasks import operation_task

refactor = operation_task(__name__, __doc__)
