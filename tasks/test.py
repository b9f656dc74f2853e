"""codeworker.test: Write tests that raise coverage of the target files."""

from codeworker.tasks import operation_task

test = operation_task(__name__, __doc__)
