"""What an attempt leaves on the operation's claim once its branch is on the remote, so the attempt
after it (its worker died before the pull request) delivers that push instead of running the job
and pushing again."""

from __future__ import annotations

from pydantic import BaseModel

from codeworker.executors.base import Outcome
from codeworker.models import Verification
from codeworker.secrets.findings import SecretFinding


class Pushed(BaseModel):
    """An attempt's branch as it reached the remote, and what its pull request needs to say."""

    commits: list[str]
    """Shas on the branch, oldest first; the last is the remote branch's tip."""
    files: list[str]
    """Files the change modified (and locked)."""
    outcome: Outcome
    """The executor's report: summary, iterations, usage."""
    verification: Verification = Verification()
    """The worker's verdict on the change."""
    findings: list[SecretFinding] = []
    """The secret scan's non-blocking findings."""
