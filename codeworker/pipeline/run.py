"""One job's trip through the stages (:mod:`codeworker.pipeline.stages`).

Everything a stage acquires (the worktree, the branch record, the locks, the command home) goes on
one undo stack (:class:`contextlib.ExitStack`) the moment it is acquired, so every exit path, a
cancelled job's ``SystemExit`` included, releases exactly what was taken, newest first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from codeworker import logs
from codeworker.coordination.cancellations import CancelSignal, CancelWatch, OperationCancelled
from codeworker.coordination.keys import repo_id
from codeworker.coordination.locks import FileLocks
from codeworker.coordination.registry import BranchRecord, BranchStatus
from codeworker.coordination.watchdog import LockWatchdog
from codeworker.executors.base import Executor, Outcome, RetryLater
from codeworker.git.worktree import Worktree
from codeworker.models import Job, PullRequestInfo, Result, Status, Usage, Verification
from codeworker.pipeline import revision, stages
from codeworker.pipeline.checkpoint import Pushed
from codeworker.pipeline.errors import StageFailed, ending
from codeworker.sandbox.checkout import Checkout
from codeworker.secrets.findings import SecretFinding
from codeworker.worker import metrics
from codeworker.worker.journal import ActiveJob

if TYPE_CHECKING:
    from codeworker.pipeline.service import Pipeline

log = logging.getLogger(__name__)


class Progress(BaseModel):
    """What a task publishes as its PROGRESS state (Flower, ``AsyncResult.info``)."""

    operation_id: str
    stage: str
    iteration: int = 0
    max_iterations: int = 0
    branch: str | None = None


ProgressSink = Callable[[Progress], None]


def branch_name(job: Job) -> str:
    """``codeworker/<operation_type>/<short id>-<digest>-<slug>``: the short id and the slug are for
    people; the digest of the whole operation id keeps two operations from ever sharing a branch,
    whatever their ids have in common."""
    slug = re.sub(r"[^a-z0-9]+", "-", job.description.lower()).strip("-")[:40].strip("-") or "change"
    short = re.sub(r"[^A-Za-z0-9]", "", job.operation_id)[:8] or "op"
    digest = hashlib.sha256(job.operation_id.encode()).hexdigest()[:12]
    return f"codeworker/{job.operation_type}/{short}-{digest}-{slug}"


class OperationRun:
    """One attempt of one job: its state as the stages fill it in, and its undo stack."""

    def __init__(
        self,
        pipeline: Pipeline,
        job: Job,
        executor: Executor,
        owner: str,
        progress: ProgressSink | None,
        started: float,
        pushed: Pushed | None = None,
        task_id: str | None = None,
    ) -> None:
        """``pushed``: the checkpoint of an earlier attempt whose branch reached the remote;
        ``task_id``: the Celery task carrying the job, whose revoke cancels it."""
        self.p = pipeline
        self.job = job
        self.executor = executor
        self.owner = owner
        self.progress = progress
        self.started = started
        self.started_wall = time.time() - (time.monotonic() - started)
        self.repo = repo_id(job.repository.url)
        self.branch = job.revision.branch if job.revision else branch_name(job)
        self.attempt = pipeline.claims.attempt(job.operation_id, owner)
        """Every shared write of this run is conditional on it still holding the claim."""
        self.locks = FileLocks(
            pipeline.redis,
            pipeline.keys,
            self.repo,
            job.operation_id,
            pipeline.settings.lock_ttl,
            attempt=self.attempt,
        )
        self.watchdog = LockWatchdog(
            self.locks,
            interval=min(pipeline.settings.lock_ttl, pipeline.settings.claim_ttl) / 3,
            also=[self.heartbeat_claim],
        )
        self.task_id = task_id
        self.cancel = CancelSignal()
        """Set once the operation is cancelled: kills a running command, stops the next step."""
        self.cancel_watch = CancelWatch(
            pipeline.cancellations,
            job.operation_id,
            task_id,
            self.cancel,
            pipeline.settings.cancel_poll_interval,
        )
        self.pushed = pushed
        self.lock_waits = 0
        """Earlier attempts that gave their slot back because files were locked."""
        self.lock_wait_since: float | None = None
        """When the operation began waiting for locks, if earlier attempts did (wall clock)."""
        self.undo = ExitStack()
        self.final_attempt = True
        self.stage: str | None = None
        self.stage_started = 0.0
        self.last_stage = "claim"
        """The stage entered last (kept after it ends, for a cancelled run's result)."""
        self._worktree: Worktree | None = None
        self._checkout: Checkout | None = None
        self.outcome: Outcome | None = None
        self.verification = Verification()
        """The worker's verdict (the verify stage's), once the executor returned."""
        self.files: list[str] = []
        self.findings: list[SecretFinding] = []
        self.commits: list[str] = []
        """Shas on the branch, once it is pushed."""
        self.record: BranchRecord | None = None
        """A revision's branch record as it was when the revision started."""
        self.revision_files: list[str] = []
        """Files a revision changed on top of the branch's tip (``files`` is the whole PR's)."""
        self.pr_number: int | None = None
        self.pr_url: str | None = None
        self.note: revision.ProgressComment | None = None
        """A revision's progress comment on its pull request."""

    def heartbeat_claim(self) -> bool:
        """Renew this attempt's claim; False once another attempt has taken the operation over."""
        return self.p.claims.heartbeat(self.job.operation_id, self.owner)

    @property
    def max_iterations(self) -> int:
        return self.job.max_iterations or self.p.settings.default_max_iterations

    @property
    def worktree(self) -> Worktree:
        if self._worktree is None:
            raise RuntimeError("the job has no worktree before the checkout stage")
        return self._worktree

    @worktree.setter
    def worktree(self, worktree: Worktree) -> None:
        self._worktree = worktree

    @property
    def checkout(self) -> Checkout:
        if self._checkout is None:
            raise RuntimeError("the job has no checkout before the lock stage")
        return self._checkout

    @checkout.setter
    def checkout(self, checkout: Checkout) -> None:
        self._checkout = checkout

    def on_exit(self, undo: Callable[[], object]) -> None:
        """Run ``undo`` when the run ends, whatever happened, after everything acquired later."""
        self.undo.callback(quietly, undo)

    def execute(self, final_attempt: bool = True) -> dict[str, Any]:
        """The result of the job. Raises RetryLater (after cleaning up) when the executor asks to
        come back later and this is not the ``final_attempt``."""
        self.final_attempt = final_attempt
        self._journal("claim")
        try:
            with self.undo:
                self.undo.enter_context(self.watchdog)
                self.undo.enter_context(self.cancel_watch)
                result = self._run_stages()
        except Exception as exc:  # the job ends with a result whatever broke; the log keeps the trace
            failure = self._ending(exc)
            if failure is None:
                raise
            if not isinstance(exc, (StageFailed, RetryLater, OperationCancelled)):
                log.exception("operation failed in an unexpected way")
            result = self._failed(failure)
            if isinstance(exc, OperationCancelled):
                result.cancellation = exc.cancellation
        finally:
            self._end_stage()
            if self.outcome is not None:
                metrics.model_usage(self.p.settings.model, self.outcome.usage)
        return result.model_dump(mode="json")

    def _run_stages(self) -> Result:
        self.enter(stages.checkout.__name__)
        stages.checkout(self)
        revising = self.job.revision is not None
        after = stages.REVISION_STAGES if revising else stages.AFTER_CHECKOUT
        for stage in (stages.resume,) if stages.resumable(self) else after:
            self.enter(stage.__name__)
            stage(self)
        if revising:  # a revision answers on its pull request, which stays open
            self.enter(stages.revised.__name__)
            return stages.revised(self)
        # Only a verified change is merged without review; an unverified one waits as a draft.
        merge = not self.job.approval_required and self.verification.verified
        deliver = stages.merge if merge else stages.pull_request
        self.enter(deliver.__name__)
        return deliver(self)

    def enter(self, stage: str) -> None:
        """Start ``stage``: time it, log it, journal it and publish it as the task's progress.
        An attempt whose watchdog found its claim or a lock lost stops here instead."""
        self._end_stage()
        self.stop_if_lost(stage)
        self.cancel.raise_if_set()
        self.stage, self.stage_started, self.last_stage = stage, time.monotonic(), stage
        log.info("stage %s", stage, extra={"stage": stage, "branch": self.branch})
        self._journal(stage)
        revision.progress(self, revision.STAGE_WORDS.get(stage, stage))
        if self.progress is not None:
            self.progress(
                Progress(
                    operation_id=self.job.operation_id,
                    stage=stage,
                    iteration=self.outcome.iterations if self.outcome else 0,
                    max_iterations=self.max_iterations,
                    branch=self.branch,
                )
            )

    def stop_if_lost(self, before: str, claim_held: bool = True) -> None:
        """Raise StageFailed if the watchdog found a lock or the claim lost, or ``claim_held`` (the
        caller's fresher word from Redis) is False: a superseded attempt goes no further."""
        claim_lost = not claim_held or bool(self.watchdog.lost_leases)
        if not claim_lost and not self.watchdog.lost:
            return
        lost = [f"the lock on {', '.join(self.watchdog.lost)}"] if self.watchdog.lost else []
        if claim_lost:
            lost.append("the operation's claim (another attempt took it over)")
        raise StageFailed(Status.FAILED, f"lost {' and '.join(lost)}; stopped before {before}")

    def _end_stage(self) -> None:
        if self.stage is not None:
            metrics.stage_duration(self.stage, time.monotonic() - self.stage_started)
            self.stage = None

    def _journal(self, stage: str) -> None:
        self.p.journal.write(
            ActiveJob(
                operation_id=self.job.operation_id,
                operation_type=self.job.operation_type,
                repository=self.job.repository.url,
                repo=self.repo,
                branch=self.branch,
                claim_owner=self.owner,
                lock_owner=self.locks.owner,
                locked=self.locks.held,
                worktree=str(self._worktree.path) if self._worktree else None,
                stage=stage,
                iteration=self.outcome.iterations if self.outcome else 0,
                max_iterations=self.max_iterations,
                started_at=self.started_wall,
                pid=os.getpid(),
            )
        )

    def _ending(self, exc: Exception) -> StageFailed | None:
        if isinstance(exc, OperationCancelled):
            kept = (
                f"the branch was pushed ({len(self.commits)} commit(s)) and is kept"
                if self.commits
                else "nothing was pushed"
            )
            return StageFailed(Status.CANCELLED, f"{exc} during {self.last_stage}; {kept}")
        return ending(exc, self.final_attempt, self.p.settings.max_deferrals)

    def settle_branch(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """The undo of registering the branch: a run that raises past it leaves the record failed,
        cancelled when the operation was, or abandoned when the job is deferred. A job cancelled by
        a shutdown (``SystemExit``) keeps its record live for the main process to abandon."""
        if not isinstance(exc, Exception):
            return
        failure = self._ending(exc)
        if isinstance(exc, OperationCancelled):
            self._mark_branch(BranchStatus.CANCELLED, str(failure))
        elif failure is None:
            self._mark_branch(BranchStatus.ABANDONED, f"deferred: {exc}")
        else:
            self._mark_branch(BranchStatus.FAILED, str(failure))

    def settle_revision(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """The undo of starting a revision: the record back to ``pr_open`` (the pull request is
        still open, whatever happened to this revision), and, unless the revision only waits to
        run again, an answer on the PR saying why nothing was pushed."""
        if not isinstance(exc, Exception):
            return
        failure = self._ending(exc)
        fields: dict[str, Any] = {"revising": None}
        if failure is not None:
            spent = self.outcome.usage.cost_usd if self.outcome else 0.0
            record = self.record
            fields.update(
                error=logs.scrub(str(failure))[:2000],
                revisions=(record.revisions if record else 0) + 1,
                cost_usd=round((record.cost_usd if record else 0.0) + spent, 6),
            )
        try:
            self.p.registry.transition(
                self.repo, self.branch, BranchStatus.PR_OPEN, attempt=self.attempt, **fields
            )
        except Exception:  # merged or closed meanwhile, or no longer ours: keep it
            log.info("branch record kept its status", exc_info=True)
        if failure is not None:
            spent = f"${self.outcome.usage.cost_usd:.4f}" if self.outcome else "$0"
            revision.progress(self, f"{failure.status.value}: nothing pushed ({spent})")
            revision.reply(self, revision.failure_answer(self, str(failure)))

    def _mark_branch(self, status: BranchStatus, error: str) -> None:
        try:
            self.p.registry.transition(
                self.repo, self.branch, status, attempt=self.attempt, error=logs.scrub(error)[:2000]
            )
        except Exception:  # a final state (pushed, then the PR failed), or no longer ours: keep it
            log.info("branch record kept its status", exc_info=True)

    def result(self, status: Status, pr: PullRequestInfo | None = None, error: str | None = None) -> Result:
        outcome = self.outcome
        verification = self.verification
        if (
            error is None
            and not verification.verified
            and status not in (Status.FAILED, Status.INVALID, Status.CANCELLED)
        ):
            error = "not verified: " + "; ".join(verification.reasons or ["the change was not verified"])
        return Result(
            success=error is None,
            operation_id=self.job.operation_id,
            status=status,
            branch=self.branch,
            commits=self.commits,
            pr=pr,
            files_modified=self.files,
            iterations=outcome.iterations if outcome else 0,
            duration=round(time.monotonic() - self.started, 3),
            error=logs.scrub(error) if error else None,
            verification=verification,
            usage=outcome.usage if outcome else Usage(),
            secret_findings=self.findings,
            summary=outcome.summary if outcome else "",
        )

    def _failed(self, failure: StageFailed) -> Result:
        log.warning("operation failed: %s", failure, extra={"status": failure.status})
        self.findings = failure.findings
        return self.result(failure.status, error=str(failure))


def quietly(step: Callable[[], object]) -> None:
    """Run one cleanup step; one that fails is logged, so the steps after it still run and the
    job's result stands."""
    try:
        step()
    except Exception:
        log.exception("cleanup step %s failed", getattr(step, "__qualname__", step))
