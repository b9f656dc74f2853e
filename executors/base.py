"""The executor interface: a small Protocol on each side of the pipeline/executor boundary."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from codeworker.models import Job, Usage, Verification
from codeworker.profiles.base import Profile
from codeworker.sandbox.commands import CommandResult


class Workspace(Protocol):
    """What an executor may do: files inside the checkout, commands, and one more lock."""

    @property
    def root(self) -> Path:
        """The checkout; every path below is relative to it."""

    def resolve(self, path: str) -> Path:
        """The real path of ``path`` inside the checkout; ValueError if it would leave it."""

    def read_file(self, path: str) -> str: ...

    def write_file(self, path: str, content: str) -> None:
        """Write ``path``, locking it first (LockHeld if another operation holds it)."""

    def lock(self, path: str) -> None:
        """Lock one more file for this operation (LockHeld if another operation holds it)."""

    @property
    def scratch(self) -> Path:
        """A directory outside the checkout that commands may write and the worker may read
        (test reports); never committed, removed with the workspace."""

    def run(
        self, command: str | Sequence[str], timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> CommandResult:
        """Run a command in the sandbox (no network, no credentials); ``env`` adds variables."""

    def changed_files(self) -> list[str]:
        """Paths changed so far, relative to the checkout."""

    def test_command(self) -> str | None:
        """The job's test command, else the repository's, else a detected one."""

    @property
    def profile(self) -> Profile:
        """The repository's language profile: its runner, how it reports per test, its tests."""

    def verify(self) -> Verification:
        """Run the tests and judge the change so far by the job's rule against the baseline the
        worker took before the executor started: feedback for an executor's own loop. The verdict
        in the result is the worker's own run after the executor returned."""

    def run_on_base(
        self,
        command: str,
        revert: Callable[[str], bool],
        env: Mapping[str, str] | None = None,
        inspect: Callable[[Path], None] | None = None,
    ) -> CommandResult:
        """Run ``command`` in a scratch copy of the checkout in which every changed path for which
        ``revert(path)`` holds is as the base commit has it (gone, if the change added it);
        ``inspect`` sees the copy after the command, before it is removed."""

    def stop_if_cancelled(self) -> None:
        """Raise OperationCancelled once the operation was cancelled: an executor's loop asks between
        its steps (a command running when it happens is killed and raises it too)."""


class RetryLater(Exception):
    """The executor cannot go on now (the model API is overloaded or rate-limited); the job is
    cleaned up and retried from the start after ``retry_after`` seconds."""

    def __init__(self, reason: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(reason)


class Outcome(BaseModel):
    """What an executor reports back. Whether the change is verified is not the executor's to say:
    the worker verifies it after the executor returns (anything else given here is ignored)."""

    summary: str
    iterations: int = 1
    usage: Usage = Usage()


@runtime_checkable
class Executor(Protocol):
    """Changes the code for one job. ``name`` is its entry-point name."""

    name: str

    def run(self, job: Job, workspace: Workspace) -> Outcome: ...
