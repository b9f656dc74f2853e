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
from codeworker.coordination.claims import ClaimState, OperationClaims
from codeworker.coordination.connection import redis_client
from codeworker.coordination.keys import Keys
from codeworker.coordination.locks import FileLocks
from codeworker.coordination.registry import LIVE_STATUSES, BranchRegistry, BranchStatus
from codeworker.executors.base import Executor, RetryLater
from codeworker.executors.registry import UnknownExecutor, load_executor
from codeworker.git.mirrors import Mirrors
from codeworker.github import PullRequests
from codeworker.models import InvalidJob, Result, Status, parse_job
from codeworker.names import is_operation_id
from codeworker.pipeline.errors import OperationBusy, OperationDeferred, deferral_delay
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
        client = redis_client(settings.redis_url)
        keys = Keys(settings.key_prefix)
        logs.register_credentials(settings)
        return cls(
            settings=settings,
            registry=BranchRegistry(client, keys),
            claims=OperationClaims(client, keys, settings.claim_ttl, settings.result_expires),
            mirrors=Mirrors(
                settings.workspace_root,
                settings.github_token,
                settings.git_connect_timeout_ms,
                settings.git_read_timeout_ms,
                max_repo_bytes=settings.max_repo_bytes,
            ),
            scanner=SecretScanner(settings.scanner, settings.scan_timeout),
            pulls=PullRequests(
                settings.github_api_url, settings.github_token, settings.github_seconds_between_writes
            ),
            redis=client,
            keys=keys,
            journal=ActiveJobs.of_worker(settings.workspace_root, worker_pid or os.getpid()),
        )

    def run(
        self, raw: Any, operation_type: str, progress: ProgressSink | None = None, attempt: int = 0
    ) -> dict[str, Any]:
        """Run one job to its result (a JSON-able dict). Raises only RetryOperation.

        ``attempt`` counts earlier deferrals of this delivery (Celery's retries).
        """
        started = time.monotonic()
        try:
            job = parse_job(
                raw,
                operation_type=operation_type,
                allowed_repos=self.settings.allowed_repos,
                max_iterations_cap=self.settings.max_iterations_cap,
            )
            executor = self.resolve_executor(job.executor, job.operation_type)
        except (InvalidJob, UnknownExecutor) as exc:
            return self.reject(raw, exc)

        with logs.bound_operation(job.operation_id):
            claim = self.claims.claim(job.operation_id)
            if claim.state is ClaimState.FINISHED:
                log.info("operation already finished; returning its recorded result")
                assert claim.result is not None
                return claim.result
            if claim.state is ClaimState.BUSY:
                busy = OperationBusy(job.operation_id, claim.holder, claim.retry_after)
                log.info("operation retried: %s", busy, extra={"lifecycle": "retried"})
                raise busy
            assert claim.owner is not None
            log.info(
                "operation active",
                extra={"lifecycle": "active", "operation_type": job.operation_type, "attempt": attempt},
            )
            run = OperationRun(self, job, executor, claim.owner, progress, started)
            try:
                result = run.execute(final_attempt=attempt >= self.settings.max_deferrals)
            except RetryLater as exc:
                self.journal.remove(job.operation_id)
                self.claims.abandon(job.operation_id, claim.owner)
                delay = deferral_delay(attempt, exc.retry_after)
                log.warning(
                    "operation retried: %s; again in %.0f s", exc, delay, extra={"lifecycle": "retried"}
                )
                raise OperationDeferred(str(exc), delay) from None
            # Only a job that really ended leaves the journal: one cancelled by a shutdown
            # (SystemExit in the pool child) stays, for the main process to abandon.
            self.claims.finish(job.operation_id, claim.owner, result)
            self.journal.remove(job.operation_id)
            outcome = "completed" if result["success"] else "failed"
            log.info(
                "operation %s",
                outcome,
                extra={"lifecycle": outcome, "status": result["status"], "duration": result["duration"]},
            )
            return result

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

    def abandon(self, entry: ActiveJob, reason: str) -> None:
        """Clean up after a job whose process was killed (shutdown, crash): its locks, its branch
        record, its worktree and its claim, so a redelivery starts from scratch at once."""
        with logs.bound_operation(entry.operation_id):
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
                lambda: self.mirrors.discard(entry.repository, entry.operation_id, entry.branch),
                lambda: self.claims.abandon(entry.operation_id, entry.claim_owner),
            ]
            record = self.registry.get(entry.repo, entry.branch)
            if (
                record is not None
                and record.operation_id == entry.operation_id
                and record.status in LIVE_STATUSES
            ):
                steps.insert(0, lambda: self._abandon_branch(entry, reason))
            for step in steps:
                quietly(step)
            self.journal.remove(entry.operation_id)

    def _abandon_branch(self, entry: ActiveJob, reason: str) -> None:
        self.registry.transition(entry.repo, entry.branch, BranchStatus.ABANDONED, error=reason)


WORKER_PID_ENV = "CODEWORKER_WORKER_PID"
"""Set by the worker's main process before it forks, so children write to its journal."""


@lru_cache(maxsize=1)
def pipeline() -> Pipeline:
    """The process's pipeline, built on first use (after the prefork pool has forked)."""
    worker_pid = os.environ.get(WORKER_PID_ENV)
    return Pipeline.from_settings(get_settings(), int(worker_pid) if worker_pid else None)
