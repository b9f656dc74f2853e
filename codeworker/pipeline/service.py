"""The one pipeline every task runs.

    validate -> claim -> checkout -> register branch -> lock -> setup -> execute -> scan -> commit
    -> push -> PR or merge -> record result; locks, worktree and branch status cleaned on every path

:class:`Pipeline` holds the per-process services and takes a job from its raw form to its result:
it validates, claims (idempotency), hands the job to an :class:`~codeworker.pipeline.run.OperationRun`
(the stages, :mod:`codeworker.pipeline.stages`) and records the result. It also cleans up after a
job whose process was killed (:meth:`Pipeline.abandon`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis

from codeworker import logs
from codeworker.config import Settings, get_settings
from codeworker.coordination.attempts import ClaimLost, attempt_token
from codeworker.coordination.cancellations import Cancellations
from codeworker.coordination.claims import FINISHED, RUNNING, Abandoned, Claim, ClaimState, OperationClaims
from codeworker.coordination.connection import redis_for
from codeworker.coordination.keys import Keys
from codeworker.coordination.locks import FileLocks
from codeworker.coordination.registry import LIVE_STATUSES, BranchRegistry, BranchStatus
from codeworker.executors.base import Executor, RetryLater
from codeworker.executors.registry import UnknownExecutor, load_executor
from codeworker.git.mirrors import Mirrors
from codeworker.git.retries import GitRetries
from codeworker.github import PullRequests
from codeworker.models import Cancellation, FollowUpRequest, InvalidJob, Job, Result, Status, parse_job
from codeworker.names import is_operation_id
from codeworker.pipeline.checkpoint import Pushed
from codeworker.pipeline.errors import (
    ClaimVanished,
    LockDeferred,
    OperationBusy,
    OperationDeferred,
    busy_delay,
    deferral_delay,
)
from codeworker.pipeline.revision import revised_record, revision_job
from codeworker.pipeline.run import OperationRun, ProgressSink, quietly
from codeworker.secrets.scanner import SecretScanner
from codeworker.worker.journal import ActiveJob, ActiveJobs

log = logging.getLogger(__name__)


@dataclass
class Pipeline:
    """Per-process services shared by every job this process runs."""

    settings: Settings
    registry: BranchRegistry
    claims: OperationClaims
    cancellations: Cancellations
    mirrors: Mirrors
    scanner: SecretScanner
    pulls: PullRequests
    redis: redis.Redis
    keys: Keys
    journal: ActiveJobs
    resolve_executor: Callable[[str | None, str], Executor] = load_executor
    """Finds the job's executor (entry points); replaceable where a caller brings its own."""

    @classmethod
    def from_settings(cls, settings: Settings, worker_pid: int | None = None) -> Pipeline:
        """``worker_pid``: the worker main process whose journal this process writes to."""
        client = redis_for(settings)
        keys = Keys(settings.key_prefix)
        logs.register_credentials(settings)
        return cls(
            settings=settings,
            registry=BranchRegistry(client, keys),
            claims=OperationClaims(client, keys, settings.claim_ttl, settings.result_expires),
            cancellations=Cancellations(client, keys, settings.result_expires),
            mirrors=Mirrors(
                settings.workspace_root,
                settings.github_token,
                settings.git_connect_timeout_ms,
                settings.git_read_timeout_ms,
                max_repo_bytes=settings.max_repo_bytes,
                retries=GitRetries(settings.git_retries, settings.git_retry_delay),
            ),
            scanner=SecretScanner(settings.scanner, settings.scan_timeout),
            pulls=PullRequests.from_settings(settings),
            redis=client,
            keys=keys,
            journal=ActiveJobs.of_worker(settings.workspace_root, worker_pid or os.getpid()),
        )

    def run(
        self,
        raw: Any,
        operation_type: str,
        progress: ProgressSink | None = None,
        *,
        task_id: str | None = None,
        redelivered: bool = False,
    ) -> dict[str, Any]:
        """Run one job to its result (a JSON-able dict). Raises only RetryOperation.

        ``task_id`` (the Celery task id, the same on every delivery and retry of one message) is
        the operation id of a job sent without one, so a redelivery is the same operation.
        """
        started = time.monotonic()
        try:
            job = parse_job(
                raw,
                operation_type=operation_type,
                allowed_repos=self.settings.allowed_repos,
                max_iterations_cap=self.settings.max_iterations_cap,
                default_operation_id=task_id,
            )
            executor = self.resolve_executor(job.executor, job.operation_type)
        except (InvalidJob, UnknownExecutor) as exc:
            return self.reject(raw, exc)
        return self._run_job(job, executor, started, progress, task_id, redelivered)

    def follow_up(
        self,
        raw: Any,
        progress: ProgressSink | None = None,
        *,
        task_id: str | None = None,
        redelivered: bool = False,
    ) -> dict[str, Any]:
        """Run one follow-up (:mod:`codeworker.pipeline.revision`): the operation's job again as
        its next revision, ``{operation_id}.r{n}``. The number is handed out once per Celery task
        id, so a redelivery or retry of the same message is the same revision."""
        started = time.monotonic()
        try:
            request = FollowUpRequest.parse(raw, self.settings.allowed_repos)
            record = revised_record(self, request)
            number = self.registry.revision_number(
                record.repo, record.branch, task_id, self.settings.result_expires
            )
            job = revision_job(self, request, record, number)
            executor = self.resolve_executor(job.executor, job.operation_type)
        except (InvalidJob, UnknownExecutor) as exc:
            return self.reject(raw, exc)
        return self._run_job(job, executor, started, progress, task_id, redelivered)

    def _run_job(
        self,
        job: Job,
        executor: Executor,
        started: float,
        progress: ProgressSink | None,
        task_id: str | None,
        redelivered: bool,
    ) -> dict[str, Any]:
        """Claim the operation and run it (or answer its recorded result, or come back later)."""
        with logs.bound_operation(job.operation_id):
            claim = self.claims.claim(job.operation_id, task_id)
            if claim.state is ClaimState.FINISHED:
                log.info("operation already finished; returning its recorded result")
                assert claim.result is not None
                return claim.result
            if claim.state is ClaimState.BUSY:
                return self._busy(job, claim)
            assert claim.owner is not None
            if claim.stalled:
                log.warning(
                    "operation stalled: its worker died while running it",
                    extra={"lifecycle": "stalled", "stalls": claim.stalls},
                )
            if redelivered:
                log.warning("operation redelivered", extra={"lifecycle": "redelivered"})
            if claim.cancellation is not None:
                return self._record(job, claim.owner, self._never_started(job, claim.cancellation))
            if claim.stalls > self.settings.max_stalls:
                return self._give_up(
                    job,
                    claim.owner,
                    f"its worker died {claim.stalls} times while running it (CODEWORKER_MAX_STALLS "
                    f"is {self.settings.max_stalls}); not running it again",
                )
            log.info(
                "operation active",
                extra={
                    "lifecycle": "active",
                    "operation_type": job.operation_type,
                    "deferrals": claim.deferrals,
                    "stalls": claim.stalls,
                },
            )
            pushed = Pushed.model_validate_json(claim.pushed) if claim.pushed else None
            run = OperationRun(self, job, executor, claim.owner, progress, started, pushed, task_id)
            run.lock_waits, run.lock_wait_since = claim.lock_waits, claim.lock_wait_since
            try:
                result = run.execute(final_attempt=claim.deferrals >= self.settings.max_deferrals)
            except LockDeferred as exc:
                self.journal.remove(job.operation_id, claim.owner)
                self.claims.abandon(job.operation_id, claim.owner, Abandoned.LOCK_WAIT)
                log.info("operation retried: %s", exc, extra={"lifecycle": "retried"})
                raise
            except RetryLater as exc:
                self.journal.remove(job.operation_id, claim.owner)
                self.claims.abandon(job.operation_id, claim.owner, Abandoned.DEFERRED)
                delay = deferral_delay(claim.deferrals, exc.retry_after)
                log.warning(
                    "operation retried: %s; again in %.0f s", exc, delay, extra={"lifecycle": "retried"}
                )
                raise OperationDeferred(str(exc), delay) from None
            # Only a job that really ended leaves the journal: one cancelled by a shutdown
            # (SystemExit in the pool child) stays, for the main process to abandon.
            return self._record(job, claim.owner, result)

    def _busy(self, job: Job, claim: Claim) -> dict[str, Any]:
        """A copy runs elsewhere: come back soon (a duplicate of a job that is about to finish
        answers within seconds), backing off, for at most ``max_busy_waits`` deliveries."""
        if claim.busy_waits > self.settings.max_busy_waits:
            error = (
                f"operation {job.operation_id} was still running on {claim.holder} after "
                f"{claim.busy_waits - 1} waits (CODEWORKER_MAX_BUSY_WAITS); this copy gives up"
            )
            return self._failure(job, error)
        delay = min(claim.retry_after, busy_delay(claim.busy_waits))
        busy = OperationBusy(job.operation_id, claim.holder, delay)
        log.info("operation retried: %s", busy, extra={"lifecycle": "retried"})
        raise busy

    def _give_up(self, job: Job, owner: str, error: str) -> dict[str, Any]:
        """End the operation failed without running it (it stalled too often)."""
        return self._record(job, owner, self._failure(job, error))

    @staticmethod
    def _never_started(job: Job, cancellation: Cancellation) -> dict[str, Any]:
        """The result of an operation cancelled before any attempt of it ran: it left nothing."""
        error = (
            f"cancelled by {cancellation.requested_by} ({cancellation.via}) before it started; "
            "nothing was done"
        )
        log.warning("operation cancelled: %s", error, extra={"status": Status.CANCELLED})
        return Result(
            success=False,
            operation_id=job.operation_id,
            status=Status.CANCELLED,
            error=error,
            cancellation=cancellation,
        ).model_dump(mode="json")

    @staticmethod
    def _failure(job: Job, error: str) -> dict[str, Any]:
        log.warning("operation failed: %s", error, extra={"status": Status.FAILED})
        return Result(
            success=False, operation_id=job.operation_id, status=Status.FAILED, error=error
        ).model_dump(mode="json")

    def _record(self, job: Job, owner: str, result: dict[str, Any]) -> dict[str, Any]:
        """Store the result for redeliveries, leave the journal, and answer the operation's result:
        this one, or, for an attempt superseded meanwhile, the live attempt's (see
        :meth:`_superseded`)."""
        try:
            self.claims.finish(job.operation_id, owner, result)
        except ClaimLost:
            self.journal.remove(job.operation_id, owner)
            return self._superseded(job, result)
        self.journal.remove(job.operation_id, owner)
        outcome = (
            "cancelled"
            if result["status"] == Status.CANCELLED
            else "completed"
            if result["success"]
            else "failed"
        )
        log.info(
            "operation %s",
            outcome,
            extra={"lifecycle": outcome, "status": result["status"], "duration": result["duration"]},
        )
        return result

    def _superseded(self, job: Job, own: dict[str, Any]) -> dict[str, Any]:
        """This attempt lost its claim: answer as a duplicate delivery would, so the task's stored
        result is the operation's and never this attempt's failure. The live attempt's result once
        it is recorded; a retry while it runs. When no attempt holds the operation any more (Redis
        lost the record: a restart without persistence, a failover to a replica that had not
        received it): the operation again from the start if this attempt pushed nothing, else this
        attempt's own result, which is what reached the remote."""
        record = self.claims.get(job.operation_id) or {}
        if record.get("state") == FINISHED:
            log.warning("this attempt was superseded; answering the operation's recorded result")
            return record["result"]
        if record.get("state") == RUNNING and record.get("heartbeat_ttl"):
            busy = OperationBusy(job.operation_id, record.get("owner"), busy_delay(1))
            log.warning("this attempt was superseded: %s", busy, extra={"lifecycle": "retried"})
            raise busy
        if not own.get("commits"):
            vanished = ClaimVanished(job.operation_id)
            log.warning("%s", vanished, extra={"lifecycle": "retried"})
            raise vanished
        log.warning(
            "this attempt lost its claim and no other attempt holds the operation (claim %s); "
            "its result stands but is not recorded",
            record.get("state", "gone"),
            extra={"lifecycle": "failed" if not own["success"] else "completed", "status": own["status"]},
        )
        return own

    def reject(self, raw: Any, exc: InvalidJob | UnknownExecutor) -> dict[str, Any]:
        """The result of a job that cannot run as sent: status invalid, never retried. The sent
        operation id is echoed only when it is a valid one, so a hostile id is not stored."""
        sent_id = raw.get("operation_id", raw.get("operationId")) if isinstance(raw, dict) else None
        log.warning("job rejected: %s", exc)
        return Result(
            success=False,
            operation_id=sent_id if is_operation_id(sent_id) else None,
            status=Status.INVALID,
            error=logs.scrub(str(exc)),
        ).model_dump(mode="json")

    def abandon(
        self,
        entry: ActiveJob,
        reason: str,
        journal: ActiveJobs | None = None,
        why: Abandoned = Abandoned.REQUEUED,
    ) -> None:
        """Clean up after a job whose process was killed (shutdown, crash, a dead worker): its
        locks, its branch record, its worktree and its claim, so a redelivery starts from scratch
        at once; ``why`` is counted on the claim. Only while the killed attempt still holds the
        operation's claim: an operation finished meanwhile, or taken over by another attempt, is
        that attempt's, and nothing of it is touched. Either way the entry leaves ``journal``, the
        one it was read from (this process's by default; a dead worker's when adopting)."""
        journal = self.journal if journal is None else journal
        with logs.bound_operation(entry.operation_id):
            # Re-arming the killed attempt's lease checks, in one Redis step, that it still holds
            # the running claim, and keeps any other attempt from claiming the operation (and
            # registering the same branch) while its leftovers are cleaned up.
            if not self.claims.heartbeat(entry.operation_id, entry.claim_owner):
                claim = self.claims.get(entry.operation_id) or {}
                log.warning(
                    "operation no longer held by the attempt that was killed (claim %s); leaving "
                    "its records alone: %s",
                    claim.get("state", "expired"),
                    reason,
                    extra={"stage": entry.stage},
                )
                journal.remove(entry.operation_id, entry.claim_owner)
                return
            log.warning(
                "operation stalled, abandoning it: %s",
                reason,
                extra={"lifecycle": "stalled", "stage": entry.stage},
            )
            steps: list[Callable[[], None]] = [
                FileLocks(
                    self.redis,
                    self.keys,
                    entry.repo,
                    entry.operation_id,
                    self.settings.lock_ttl,
                    adopt=(entry.lock_owner, entry.locked),
                ).release,
                lambda: self.mirrors.discard(
                    entry.repository, entry.operation_id, entry.branch, attempt_token(entry.claim_owner)
                ),
                lambda: self.claims.abandon(entry.operation_id, entry.claim_owner, why),
            ]
            record = self.registry.get(entry.repo, entry.branch)
            if (
                record is not None
                and record.operation_id == entry.operation_id
                and record.status in LIVE_STATUSES
            ):
                steps.insert(0, lambda: self._abandon_branch(entry, reason))
            elif (
                record is not None
                and record.status is BranchStatus.REVISING
                and record.revising == entry.operation_id
            ):
                steps.insert(0, lambda: self._abandon_revision(entry, reason))
            for step in steps:
                quietly(step)
            journal.remove(entry.operation_id, entry.claim_owner)

    def _abandon_branch(self, entry: ActiveJob, reason: str) -> None:
        """Only while the killed attempt still holds the claim, checked in the same Redis step."""
        self.registry.transition(
            entry.repo,
            entry.branch,
            BranchStatus.ABANDONED,
            attempt=self.claims.attempt(entry.operation_id, entry.claim_owner),
            error=reason,
        )

    def _abandon_revision(self, entry: ActiveJob, reason: str) -> None:
        """A killed revision's pull request is still open: its record goes back to pr_open."""
        self.registry.transition(
            entry.repo,
            entry.branch,
            BranchStatus.PR_OPEN,
            attempt=self.claims.attempt(entry.operation_id, entry.claim_owner),
            revising=None,
            error=reason,
        )


WORKER_PID_ENV = "CODEWORKER_WORKER_PID"
"""Set by the worker's main process before it forks, so children write to its journal."""


@lru_cache(maxsize=1)
def pipeline() -> Pipeline:
    """The process's pipeline, built on first use (after the prefork pool has forked)."""
    worker_pid = os.environ.get(WORKER_PID_ENV)
    return Pipeline.from_settings(get_settings(), int(worker_pid) if worker_pid else None)
