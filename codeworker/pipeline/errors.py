"""The errors that steer a job: those that end it with a status of their own, and those that send
it back to the queue for later."""

from __future__ import annotations

from codeworker.executors.base import RetryLater
from codeworker.models import Status
from codeworker.secrets.findings import SecretFinding


class RetryOperation(Exception):
    """The job cannot run now; the task retries it after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class OperationBusy(RetryOperation):
    """The operation is running elsewhere with a live heartbeat."""

    def __init__(self, operation_id: str, holder: str | None, retry_after: float) -> None:
        super().__init__(
            f"operation {operation_id} is running on {holder}; retry in {retry_after:.0f}s", retry_after
        )


class ClaimVanished(RetryOperation):
    """Redis lost the operation's claim (a failover to a replica that had not received it) while
    this attempt ran; it stopped before pushing, so the operation runs again from the start."""

    def __init__(self, operation_id: str) -> None:
        super().__init__(
            f"Redis lost the claim of operation {operation_id} (a failover?) before anything was "
            "pushed; running it again",
            1.0,
        )


class LockDeferred(RetryOperation):
    """Files the job needs are locked by another operation: the job gives its worker slot back,
    releasing what it took, and comes back after ``retry_after`` seconds."""

    def __init__(self, held: str, waited: float, retry_after: float) -> None:
        super().__init__(
            f"{held}; waited {waited:.0f}s so far, trying again in {retry_after:.0f}s", retry_after
        )


class OperationDeferred(RetryOperation):
    """The executor asked to come back later (model API overloaded); the workspace is clean."""


def deferral_delay(deferrals: int, asked: float) -> float:
    """Exponential backoff (30 s, 60 s, ... up to 10 min), never sooner than the API asked."""
    return max(asked, min(600.0, 30.0 * 2**deferrals))


def busy_delay(waits: int) -> float:
    """Backoff for a copy that found its operation running elsewhere: 1 s, 2 s, 4 s, ... 30 s."""
    return min(30.0, 2.0 ** max(waits - 1, 0))


class StageFailed(Exception):
    """A failure the result reports with its own status (blocked, conflict, no changes...)."""

    def __init__(self, status: Status, message: str, findings: list[SecretFinding] | None = None) -> None:
        self.status = status
        self.findings = findings or []
        super().__init__(message)


class ChangeTooLarge(StageFailed):
    """The executor's change is over ``max_diff_bytes`` or ``max_changed_files``: nothing is pushed.

    Blocked rather than failed, as a secret is: the change exists, a policy keeps it off the remote.
    """

    def __init__(self, what: str, size: int, limit: int, setting: str) -> None:
        super().__init__(
            Status.BLOCKED,
            f"the change is too large to push: {size:,} {what}, over the limit of {limit:,} ({setting})",
        )


def ending(exc: Exception, final_attempt: bool, max_deferrals: int) -> StageFailed | None:
    """How ``exc`` ends a run: the failure its result reports, or None when it sends the job back
    to the queue (a lock deferral, or the executor's RetryLater when not the ``final_attempt``)."""
    if isinstance(exc, StageFailed):
        return exc
    if isinstance(exc, RetryOperation):
        return None
    if isinstance(exc, RetryLater):
        if not final_attempt:
            return None
        return StageFailed(Status.FAILED, f"{exc}; gave up after {max_deferrals} retries")
    return StageFailed(Status.FAILED, f"{type(exc).__name__}: {exc}")
