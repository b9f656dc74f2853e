"""codeworker.error_fix: Fix the error described in the job's error_context."""

from codeworker.tasks import operation_task

error_fix = operation_task(__name__, __doc__)
