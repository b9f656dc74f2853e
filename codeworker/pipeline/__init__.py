"""One job's run: the services a process shares, the stages in order, the errors that steer them,
and what a reviewer reads (commit message, pull request)."""
