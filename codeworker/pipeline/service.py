"""The one pipeline every task runs.

    validate -> claim -> checkout -> register branch -> lock -> execute -> scan -> commit
    -> push -> PR or merge -> record result; locks, worktree and branch status cleaned on every path

:class:`Pipeline` holds the per-process services; :class:`OperationRun` holds one job's state.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from pydantic import BaseModel

from codeworker import logs
from codeworker.config import Settings, get_settings
from codeworker.coordination.claims import ClaimState, OperationClaims
from codeworker.coordination.connection import redis_client
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.locks import FileLocks, LockWatchdog
from codeworker.coordination.registry import LIVE_STATUSES, BranchRecord, BranchRegistry, BranchStatus
from codeworker.executors.base import Executor, Outcome, RetryLater
from codeworker.executors.registry import UnknownExecutor, load_executor
from codeworker.git.workspace import (
    GitError,
    MergeConflict,
    Mirrors,
    PushRejected,
    RepositoryTooLarge,
    UnsafeSymlink,
    Worktree,
)
from codeworker.github import GitHubError, PullRequests
from codeworker.models import InvalidJob, Job, PullRequestInfo, Result, Status, Usage, Verification, parse_job
from codeworker.names import is_operation_id
from codeworker.pipeline.report import commit_message, pr_body, pr_title
from codeworker.sandbox.bubblewrap import SetupFailed
from codeworker.sandbox.checkout import Checkout
from codeworker.sandbox.repo_config import RepoConfigError
from codeworker.secrets.scanner import SecretFinding, SecretScanner
from codeworker.worker import metrics
from codeworker.worker.journal import ActiveJob, ActiveJobs

log = logging.getLogger(__name__)

MERGE_ATTEMPTS = 2
"""A base that moves between our fetch and our push gets one fresh merge before we give up."""


class Progress(BaseModel):
    """What a task publishes as its PROGRESS state (Flower, ``AsyncResult.info``)."""

    operation_id: str
    stage: str
    iteration: int = 0
    max_iterations: int = 0
    branch: str | None = None


ProgressSink = Callable[[Progress], None]


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


class OperationDeferred(RetryOperation):
    """The executor asked to come back later (model API overloaded); the workspace is clean."""


def deferral_delay(attempt: int, asked: float) -> float:
    """Exponential backoff (30 s, 60 s, ... up to 10 min), never sooner than the API asked."""
    return max(asked, min(600.0, 30.0 * 2**attempt))


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


def branch_name(job: Job) -> str:
    """``codeworker/<operation_type>/<short id>-<slug>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", job.description.lower()).strip("-")[:40].strip("-") or "change"
    short = re.sub(r"[^A-Za-z0-9]", "", job.operation_id)[:8] or "op"
    return f"codeworker/{job.operation_type}/{short}-{slug}"


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
        token = settings.github_token.get_secret_value()
        logs.register_secret(token)
        logs.register_secret(base64.b64encode(f"x-access-token:{token}".encode()).decode())
        logs.register_secret(settings.anthropic_api_key.get_secret_value())
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
            _run_all(steps)
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


class OperationRun:
    """One job's trip through the stages; every exit path goes through :meth:`_cleanup`."""

    def __init__(
        self,
        pipeline: Pipeline,
        job: Job,
        executor: Executor,
        owner: str,
        progress: ProgressSink | None,
        started: float,
    ) -> None:
        self.p = pipeline
        self.job = job
        self.executor = executor
        self.owner = owner
        self.progress = progress
        self.started = started
        self.started_wall = time.time() - (time.monotonic() - started)
        self.repo = repo_id(job.repository.url)
        self.branch = branch_name(job)
        self.locks = FileLocks(
            pipeline.redis, pipeline.keys, self.repo, job.operation_id, pipeline.settings.lock_ttl
        )
        self.worktree: Worktree | None = None
        self.checkout: Checkout | None = None
        self.registered = False
        self.pushed = False
        self.stage: str | None = None
        self.stage_started = 0.0
        self.outcome: Outcome | None = None
        self.files: list[str] = []
        self.commits: list[str] = []

    @property
    def max_iterations(self) -> int:
        return self.job.max_iterations or self.p.settings.default_max_iterations

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
                worktree=str(self.worktree.path) if self.worktree else None,
                stage=stage,
                iteration=self.outcome.iterations if self.outcome else 0,
                max_iterations=self.max_iterations,
                started_at=self.started_wall,
                pid=os.getpid(),
            )
        )

    def execute(self, final_attempt: bool = True) -> dict[str, Any]:
        """The result of the job. Raises RetryLater (after cleaning up) when the executor asks to
        come back later and this is not the ``final_attempt``."""
        self._journal("claim")
        watchdog = LockWatchdog(
            self.locks,
            interval=min(self.p.settings.lock_ttl, self.p.settings.claim_ttl) / 3,
            also=[lambda: self.p.claims.heartbeat(self.job.operation_id, self.owner)],
        )
        try:
            with watchdog:
                result = self._stages(watchdog)
        except StageFailed as exc:
            result = self._failed(exc.status, str(exc), exc.findings)
        except RetryLater as exc:
            if not final_attempt:
                self._mark_branch(BranchStatus.ABANDONED, f"deferred: {exc}")
                raise
            result = self._failed(
                Status.FAILED, f"{exc}; gave up after {self.p.settings.max_deferrals} retries"
            )
        except Exception as exc:  # the job ends with a result whatever broke; the log keeps the trace
            log.exception("operation failed in an unexpected way")
            result = self._failed(Status.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            self._end_stage()
            if self.outcome is not None:
                metrics.model_usage(self.p.settings.model, self.outcome.usage)
            self._cleanup()
        return result.model_dump(mode="json")

    def _end_stage(self) -> None:
        if self.stage is not None:
            metrics.stage_duration(self.stage, time.monotonic() - self.stage_started)
            self.stage = None

    def _stage(self, stage: str) -> None:
        self._end_stage()
        self.stage, self.stage_started = stage, time.monotonic()
        log.info("stage %s", stage, extra={"stage": stage, "branch": self.branch})
        self._journal(stage)
        if self.progress is not None:
            iteration = self.outcome.iterations if self.outcome else 0
            self.progress(
                Progress(
                    operation_id=self.job.operation_id,
                    stage=stage,
                    iteration=iteration,
                    max_iterations=self.max_iterations,
                    branch=self.branch,
                )
            )

    def _stages(self, watchdog: LockWatchdog) -> Result:
        job = self.job
        self._stage("checkout")
        try:
            self.worktree = self.p.mirrors.checkout(
                job.repository.url, job.repository.branch, self.branch, job.operation_id
            )
        except RepositoryTooLarge as exc:
            raise StageFailed(Status.FAILED, str(exc)) from None
        self._stage("register")
        self.p.registry.register(
            BranchRecord.new(
                repository=job.repository.url,
                repo=self.repo,
                branch=self.branch,
                operation_id=job.operation_id,
                operation_type=job.operation_type,
                files=job.target_files,
            )
        )
        self.registered = True

        self._stage("lock")
        if job.target_files:
            waited, acquired = time.monotonic(), False
            try:
                fence = self.locks.acquire(job.target_files, wait=self.p.settings.lock_wait)
                acquired = True
            finally:
                metrics.lock_wait(job.operation_type, time.monotonic() - waited, acquired=acquired)
            self.p.registry.update(self.repo, self.branch, fencing_token=fence)

        try:
            self.checkout = Checkout(self.worktree, self.locks, self.p.settings, job.test_command)
        except RepoConfigError as exc:
            raise StageFailed(Status.FAILED, str(exc)) from None
        self._stage("setup")
        try:
            self.checkout.setup()
        except SetupFailed as exc:
            raise StageFailed(Status.FAILED, str(exc)) from None

        self._stage("execute")
        self.outcome = self.executor.run(job, self.checkout)
        metrics.agent_iterations(job.operation_type, self.outcome.iterations)
        self.files = self.worktree.changed_files()
        if not self.files:
            raise StageFailed(Status.NO_CHANGES, f"the {self.executor.name} executor made no changes")
        self._check_change_size()
        try:  # before locking: a link out of the checkout is refused by name, not as a bad path
            self.worktree.check_symlinks()
        except UnsafeSymlink as exc:
            raise StageFailed(Status.BLOCKED, str(exc)) from None
        # Whatever the executor did, nothing is committed that this operation does not hold.
        for path in self.files:
            self.checkout.lock(path)
        self.p.registry.update(
            self.repo, self.branch, files=self.files, fencing_token=self.locks.fencing_token
        )

        self._stage("scan")
        findings = self.p.scanner.scan(self.worktree.added_lines())
        blocking = SecretScanner.blocking(findings)
        metrics.secret_scan(findings, blocking)
        if blocking:
            where = ", ".join(f"{f.path}:{f.line} ({f.rule})" for f in blocking)
            raise StageFailed(Status.BLOCKED, f"secret scan blocked the commit: {where}", findings)

        self._stage("commit")
        settings = self.p.settings
        self.worktree.commit(
            commit_message(job, self.outcome), settings.git_author_name, settings.git_author_email
        )
        self.commits = self.worktree.commits()

        self._stage("push")
        self._check_leases(watchdog)
        try:
            self.worktree.push()
        except GitError:
            metrics.push_failed(job.operation_type)
            raise
        self.pushed = True
        self.p.registry.transition(self.repo, self.branch, BranchStatus.PUSHED)
        if job.approval_required:
            return self._open_pull_request(findings)
        return self._merge(watchdog, findings)

    def _check_change_size(self) -> None:
        """Refuse a change too large to review before it is locked, scanned or committed."""
        assert self.worktree is not None
        settings = self.p.settings
        if settings.max_changed_files and len(self.files) > settings.max_changed_files:
            raise ChangeTooLarge(
                "files changed", len(self.files), settings.max_changed_files, "CODEWORKER_MAX_CHANGED_FILES"
            )
        if settings.max_diff_bytes:
            size = self.worktree.change_size()
            if size > settings.max_diff_bytes:
                raise ChangeTooLarge(
                    "bytes of diff", size, settings.max_diff_bytes, "CODEWORKER_MAX_DIFF_BYTES"
                )

    def _check_leases(self, watchdog: LockWatchdog) -> None:
        """Stop before anything leaves the machine if a lock was lost (expired or taken)."""
        if watchdog.is_lost:
            what = ", ".join(watchdog.lost) or "the operation's claim (another worker took it over)"
            raise StageFailed(Status.FAILED, f"lost the lock on {what}; stopped before pushing")
        self.locks.verify()

    def _open_pull_request(self, findings: list[SecretFinding]) -> Result:
        assert self.outcome is not None
        self._stage("pull_request")
        job = self.job
        try:
            pr = self.p.pulls.open(
                job.repository.owner,
                job.repository.name,
                head=self.branch,
                base=job.repository.branch,
                title=pr_title(job),
                body=pr_body(job, self.outcome, self.files, findings),
                draft=not self.outcome.verified,
                labels=self.p.settings.pr_labels,
            )
        except GitHubError as exc:
            metrics.pull_request_failed(job.operation_type)
            return self._result(Status.PUSHED, findings, error=f"branch pushed, pull request failed: {exc}")
        self.p.registry.transition(
            self.repo, self.branch, BranchStatus.PR_OPEN, pr_number=pr.number, pr_url=pr.url
        )
        info = PullRequestInfo(number=pr.number, url=pr.url, title=pr.title, draft=pr.draft)
        return self._result(Status.PR_OPEN, findings, pr=info)

    def _merge(self, watchdog: LockWatchdog, findings: list[SecretFinding]) -> Result:
        assert self.worktree is not None
        self._stage("merge")
        self.p.registry.transition(self.repo, self.branch, BranchStatus.MERGING)
        settings = self.p.settings
        message = f"Merge {self.branch} into {self.job.repository.branch}"
        for attempt in range(1, MERGE_ATTEMPTS + 1):
            self._check_leases(watchdog)
            try:
                self.worktree.merge_into_base(message, settings.git_author_name, settings.git_author_email)
                break
            except MergeConflict as exc:
                raise StageFailed(
                    Status.CONFLICT, f"{self.job.repository.branch} moved and conflicts: {exc}; branch kept"
                ) from None
            except PushRejected:
                if attempt == MERGE_ATTEMPTS:
                    metrics.push_failed(self.job.operation_type)
                    raise
        self.p.registry.transition(self.repo, self.branch, BranchStatus.MERGED)
        return self._result(Status.MERGED, findings)

    def _result(
        self,
        status: Status,
        findings: list[SecretFinding],
        pr: PullRequestInfo | None = None,
        error: str | None = None,
    ) -> Result:
        outcome = self.outcome
        verified = outcome is not None and outcome.verified
        if error is None and not verified and status not in (Status.FAILED, Status.INVALID):
            error = "verification failed: the change did not keep the tests as they were"
        return Result(
            success=error is None,
            operation_id=self.job.operation_id,
            status=status,
            branch=self.branch,
            commits=self.commits if self.pushed else [],
            pr=pr,
            files_modified=self.files,
            iterations=outcome.iterations if outcome else 0,
            duration=round(time.monotonic() - self.started, 3),
            error=logs.scrub(error) if error else None,
            verification=outcome.verification if outcome else Verification(),
            usage=outcome.usage if outcome else Usage(),
            secret_findings=findings,
            summary=outcome.summary if outcome else "",
        )

    def _failed(self, status: Status, error: str, findings: list[SecretFinding] | None = None) -> Result:
        log.warning("operation failed: %s", error, extra={"status": status})
        if self.registered:
            self._mark_branch(BranchStatus.FAILED, error)
        return self._result(status, findings or [], error=error)

    def _mark_branch(self, status: BranchStatus, error: str) -> None:
        try:
            self.p.registry.transition(self.repo, self.branch, status, error=logs.scrub(error)[:2000])
        except Exception:  # already in a final state (e.g. pushed, then PR failed): keep it
            log.info("branch record kept its status", exc_info=True)

    def _cleanup(self) -> None:
        """Release locks, remove the worktree and the command home, whatever happened before."""
        steps: list[Callable[[], None]] = [self.locks.release]
        if self.checkout is not None:
            steps.append(self.checkout.close)
        if self.worktree is not None:
            steps.append(self.worktree.remove)
        _run_all(steps)


def _run_all(steps: list[Callable[[], None]]) -> None:
    """Run every cleanup step; one that fails is logged and does not skip the others."""
    for step in steps:
        try:
            step()
        except Exception:
            log.exception("cleanup step %s failed", getattr(step, "__qualname__", step))
