"""codeworker.follow_up: The next revision of an open pull request, on its branch (the job names the
operation, the instructions and who asked)."""

from codeworker.tasks import follow_up_task

follow_up = follow_up_task(__name__, __doc__)
