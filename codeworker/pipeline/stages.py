"""The stages of one job, in order. Each takes the run, does one thing, and puts what it acquires
on the run's undo stack at the moment it acquires it.

    checkout -> register -> lock -> setup -> baseline -> execute -> verify -> scan -> commit -> push
    -> pull_request (approval required) or merge

or, when an earlier attempt of the operation pushed and died before its pull request:

    checkout -> resume -> pull_request

A stage's function name is the stage's name in the journal, the task's progress and the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

from codeworker.coordination.attempts import ClaimLost
from codeworker.coordination.locks import LockHeld
from codeworker.coordination.registry import BranchRecord, BranchStatus, InvalidTransition, UnknownBranch
from codeworker.executors.base import RetryLater
from codeworker.git.errors import GitError, MergeConflict, PushRejected, RepositoryTooLarge, UnsafeSymlink
from codeworker.github import CheckRunReport, GitHubError
from codeworker.models import PullRequestInfo, Result, Status
from codeworker.pipeline import revision
from codeworker.pipeline.checkpoint import Pushed
from codeworker.pipeline.errors import ChangeTooLarge, LockDeferred, StageFailed, busy_delay
from codeworker.pipeline.report import commit_message, evidence_table, pr_body, pr_title
from codeworker.sandbox.checkout import Checkout
from codeworker.sandbox.repo_config import RepoConfigError
from codeworker.sandbox.setup_cache import SetupFailed
from codeworker.secrets.findings import blocking
from codeworker.verification.verifier import Verifier
from codeworker.worker import metrics

if TYPE_CHECKING:
    from codeworker.pipeline.run import OperationRun

log = logging.getLogger(__name__)

MERGE_ATTEMPTS = 2
"""A base that moves between our fetch and our push gets one fresh merge before we give up."""


def checkout(run: OperationRun) -> None:
    """A fresh worktree of the base on the job's branch."""
    job = run.job
    try:
        worktree = run.p.mirrors.checkout(
            job.repository.url, job.repository.branch, run.branch, job.operation_id, run.attempt.token
        )
    except RepositoryTooLarge as exc:
        raise StageFailed(Status.FAILED, str(exc)) from None
    run.on_exit(worktree.remove)
    run.worktree = worktree


def register(run: OperationRun) -> None:
    """The branch record, in state ``active``; a run that fails past here marks it."""
    job = run.job
    run.p.registry.register(
        BranchRecord.new(
            repository=job.repository.url,
            repo=run.repo,
            branch=run.branch,
            operation_id=job.operation_id,
            operation_type=job.operation_type,
            files=job.target_files,
            job=job.model_dump_json(exclude_none=True),
        ),
        attempt=run.attempt,
    )
    run.undo.push(run.settle_branch)


def lock(run: OperationRun) -> None:
    """The target files' locks (all or none, see :func:`take_locks`), then the executor's
    workspace, which locks whatever else the executor writes."""
    job = run.job
    run.on_exit(run.locks.release)
    # A revision holds again what the operation held: its files are the pull request's.
    paths = sorted({*job.target_files, *(run.record.files if run.record else [])})
    if paths:
        fence = take_locks(run, paths)
        run.p.registry.update(run.repo, run.branch, attempt=run.attempt, fencing_token=fence)
    try:
        workspace = Checkout(run.worktree, run.locks, run.p.settings, job.test_command, run.cancel)
    except RepoConfigError as exc:
        raise StageFailed(Status.FAILED, str(exc)) from None
    run.on_exit(workspace.close)
    run.checkout = workspace


def take_locks(run: OperationRun, paths: list[str]) -> int:
    """Lock ``paths`` (all or none), waiting in the worker slot up to ``lock_wait``; answer the
    fencing token. Still held by another operation after that, the job gives its slot back
    (:class:`LockDeferred`: everything it took is released, and it comes again after a growing
    countdown) until the operation has waited ``lock_wait_total`` in all; then it fails naming the
    holder."""
    settings = run.p.settings
    started = time.monotonic()
    try:
        fence = run.locks.acquire(paths, wait=settings.lock_wait)
    except LockHeld as held:
        waited = time.monotonic() - started
        later = wait_again(run, str(held), waited)
        outcome = "deferred" if isinstance(later, LockDeferred) else "conflict"
        metrics.lock_wait(run.job.operation_type, waited, outcome)
        raise later from None
    metrics.lock_wait(run.job.operation_type, time.monotonic() - started, "acquired")
    if run.lock_wait_since is not None:
        run.p.claims.locks_taken(run.job.operation_id)
    return fence


def wait_again(run: OperationRun, held: str, waited: float) -> LockDeferred | StageFailed:
    """What a job raises when another operation holds what it needs (``held`` says what), after
    waiting ``waited`` seconds in this attempt: :class:`LockDeferred` (the job gives its slot back
    and comes again after a growing countdown) until the operation has waited ``lock_wait_total``
    in all, then a failure naming the holder."""
    settings = run.p.settings
    since = run.lock_wait_since or time.time() - waited
    total = time.time() - since
    if total >= settings.lock_wait_total:
        return StageFailed(
            Status.FAILED, f"{held}; gave up after waiting {total:.0f}s in all (CODEWORKER_LOCK_WAIT_TOTAL)"
        )
    return LockDeferred(held, total, min(busy_delay(run.lock_waits + 1), settings.lock_wait_total - total))


def setup(run: OperationRun) -> None:
    """The repository's setup, once per dependency hash, before the executor sees anything."""
    try:
        run.checkout.setup()
    except SetupFailed as exc:
        raise StageFailed(Status.FAILED, str(exc)) from None


def baseline(run: OperationRun) -> None:
    """The tests before the executor changes anything, taken by the worker; the executor's
    workspace can then verify against it (:meth:`Checkout.verify`)."""
    verifier = Verifier(run.job, run.checkout)
    verifier.baseline()
    run.checkout.verifier = verifier


def execute(run: OperationRun) -> None:
    """The executor's change, refused if it is empty, too large or links out of the repository;
    whatever it changed is locked, so nothing is committed that this operation does not hold."""
    job = run.job
    run.outcome = run.executor.run(job, run.checkout)
    # Cancelled while the executor ran (its command killed, say): that, not what it returned.
    run.cancel.raise_if_set()
    metrics.agent_iterations(job.operation_type, run.outcome.iterations)
    run.files = run.worktree.changed_files()
    if job.revision is not None:
        run.revision_files = run.worktree.changed_files(since=run.worktree.builds_on)
    if not (run.revision_files if job.revision else run.files):
        raise StageFailed(Status.NO_CHANGES, f"the {run.executor.name} executor made no changes")
    _check_change_size(run)
    try:  # before locking: a link out of the checkout is refused by name, not as a bad path
        run.worktree.check_symlinks()
    except UnsafeSymlink as exc:
        raise StageFailed(Status.BLOCKED, str(exc)) from None
    for path in run.files:
        run.checkout.lock(path)
    run.p.registry.update(
        run.repo, run.branch, attempt=run.attempt, files=run.files, fencing_token=run.locks.fencing_token
    )


def verify(run: OperationRun) -> None:
    """The worker's verdict on the change, whatever the executor said: the only one the result, the
    pull request, the check run and the metrics report."""
    run.verification = run.checkout.verify()
    metrics.verification(run.job.operation_type, run.verification.verified)


def scan(run: OperationRun) -> None:
    """The secret scan of the added lines; a HIGH finding blocks the commit."""
    # A revision's scan: what it adds on top of the branch (the rest was scanned, or a person's).
    findings = run.p.scanner.scan(run.worktree.added_lines(since=run.worktree.builds_on))
    blocked = blocking(findings)
    metrics.secret_scan(findings, blocked)
    if blocked:
        where = ", ".join(f"{f.path}:{f.line} ({f.rule})" for f in blocked)
        raise StageFailed(Status.BLOCKED, f"secret scan blocked the commit: {where}", findings)
    run.findings = findings


def commit(run: OperationRun) -> None:
    assert run.outcome is not None
    settings = run.p.settings
    run.worktree.commit(
        commit_message(run.job, run.outcome), settings.git_author_name, settings.git_author_email
    )


def push(run: OperationRun) -> None:
    """The branch to the remote, only while every lease is still held and the operation was not
    cancelled. The checkpoint is written first, in the same Redis step as that check: a worker
    killed during or right after the push leaves it behind for the next attempt, which delivers
    the push if the remote has it (:func:`resumable`) and ignores it otherwise."""
    assert run.outcome is not None
    commits = run.worktree.commits()
    pushed = Pushed(
        commits=commits,
        files=run.files,
        outcome=run.outcome,
        verification=run.verification,
        findings=run.findings,
    )
    _check_leases(run, "pushing", pushed)
    try:
        run.worktree.push()
    except PushRejected as exc:
        if run.job.revision is not None:
            # Someone pushed to the branch since the checkout: the revision runs again from their
            # commit (its lease kept ours off the branch), verified on what it will push.
            raise LockDeferred(f"the branch moved while the revision ran ({exc})", 0, busy_delay(1)) from None
        metrics.push_failed(run.job.operation_type)
        raise
    except GitError:
        metrics.push_failed(run.job.operation_type)
        raise
    run.commits = commits
    if run.job.revision is None:  # a revision stays revising until it answered on the PR
        run.p.registry.transition(run.repo, run.branch, BranchStatus.PUSHED, attempt=run.attempt)


def resumable(run: OperationRun) -> bool:
    """Whether an earlier attempt's push can be delivered as it is: it left a checkpoint, the
    remote branch is still at its last commit (this attempt's checkout just fetched it), the
    branch record is this operation's and its pull request was not merged or closed meanwhile,
    and a pull request is what delivers it (a merge starts again from the base)."""
    pushed = run.pushed
    if pushed is None or not pushed.commits or not run.job.approval_required:
        return False
    if run.worktree.seen != pushed.commits[-1]:
        return False
    record = run.p.registry.get(run.repo, run.branch)
    if record is not None and run.job.revision is not None:
        return record.status in (BranchStatus.PR_OPEN, BranchStatus.REVISING)
    return (
        record is not None
        and record.operation_id == run.job.operation_id
        and record.status not in (BranchStatus.MERGED, BranchStatus.CLOSED)
    )


def resume(run: OperationRun) -> None:
    """Take over what the earlier attempt pushed: its files' locks (released when this run ends),
    its branch record (made this attempt's and pushed again: the earlier attempt may have died
    before marking it, or the cleanup after it abandoned it), its outcome and commits."""
    pushed = run.pushed
    assert pushed is not None
    log.warning(
        "resuming: the branch is on the remote at %s as an earlier attempt pushed it; delivering it",
        pushed.commits[-1],
        extra={"lifecycle": "resumed", "branch": run.branch},
    )
    run.on_exit(run.locks.release)
    take_locks(run, [*run.job.target_files, *pushed.files])
    if run.job.revision is not None:
        start_revision(run)  # its record back to revising, if the cleanup after a crash moved it
        run.worktree.builds_on = pushed.commits[-2] if len(pushed.commits) > 1 else None
    else:
        record = run.p.registry.get(run.repo, run.branch)
        assert record is not None
        if record.status is not BranchStatus.PUSHED:
            run.p.registry.register(record, attempt=run.attempt)
            run.p.registry.transition(run.repo, run.branch, BranchStatus.PUSHED, attempt=run.attempt)
        run.undo.push(run.settle_branch)
    run.outcome, run.verification, run.files, run.findings, run.commits = (
        pushed.outcome,
        pushed.verification,
        pushed.files,
        pushed.findings,
        pushed.commits,
    )


AFTER_CHECKOUT: tuple[Callable[[OperationRun], None], ...] = (
    register,
    lock,
    setup,
    baseline,
    execute,
    verify,
    scan,
    commit,
    push,
)
"""A job's stages from :func:`checkout` up to the push (or only :func:`resume`, for an earlier
attempt's push); then :func:`pull_request` or :func:`merge` delivers it."""


def start_revision(run: OperationRun) -> None:
    """Check the PR's cumulative budget, then move the record ``pr_open -> revising`` (this
    revision's own ``revising`` again, after a crash); another revision running waits like a lock.
    The undo puts it back to ``pr_open`` whatever ends the run."""
    job, settings = run.job, run.p.settings
    asked = job.revision
    assert asked is not None
    record = run.p.registry.get(run.repo, run.branch)
    if record is None:
        raise StageFailed(Status.FAILED, f"branch {run.branch} is no longer registered")
    run.pr_number = record.pr_number
    run.pr_url = record.pr_url
    if record.cost_usd >= settings.pr_budget_usd:
        stopped = StageFailed(
            Status.FAILED,
            f"stopped: this pull request has cost ${record.cost_usd:.2f} so far, which reaches "
            f"CODEWORKER_PR_BUDGET_USD (${settings.pr_budget_usd:.2f}); no further revision runs",
        )
        revision.reply(run, revision.failure_answer(run, str(stopped)))
        raise stopped
    if run.worktree.seen is None:
        raise StageFailed(Status.FAILED, f"branch {run.branch} is not on the remote any more")
    if record.status is BranchStatus.REVISING and record.revising != job.operation_id:
        raise wait_again(run, f"pull request #{record.pr_number} is being revised by {record.revising}", 0)
    if record.status is not BranchStatus.REVISING:
        try:
            run.p.registry.transition(
                run.repo, run.branch, BranchStatus.REVISING, attempt=run.attempt, revising=job.operation_id
            )
        except (InvalidTransition, UnknownBranch) as exc:
            raise StageFailed(Status.FAILED, f"the pull request cannot be revised: {exc}") from None
    run.undo.push(run.settle_revision)
    run.record = record
    owner, name = job.repository.owner, job.repository.name
    run.note = revision.ProgressComment(run.p.pulls, run.p.registry, record, owner, name)
    revision.progress(run, revision.STAGE_WORDS["start_revision"])
    try:
        entries = run.p.pulls.conversation(owner, name, record.pr_number or 0)
    except GitHubError as exc:
        log.warning("the pull request's conversation could not be read: %s", exc)
        entries = []
    said = [entry for entry in entries if not entry.body.startswith(revision.PROGRESS_MARKER)]
    run.job = job.model_copy(
        update={"revision": asked.model_copy(update={"conversation": revision.render_conversation(said)})}
    )


def take_branch(run: OperationRun) -> None:
    """After the baseline (on the base): the branch's files in the checkout, to edit and commit on;
    from here each verification is an iteration, which the progress comment counts."""
    run.worktree.take_branch()
    run.checkout.on_verify = lambda count: revision.progress(
        run, f"iteration {count}/{run.max_iterations}" if count <= run.max_iterations else "verifying"
    )


REVISION_STAGES: tuple[Callable[[OperationRun], None], ...] = (
    start_revision,
    lock,
    setup,
    baseline,
    take_branch,
    execute,
    verify,
    scan,
    commit,
    push,
)
"""A revision's stages after :func:`checkout`; then :func:`revised` answers on the PR."""


CHECK_RUN = "codeworker/verification"
"""The check run a pushed head commit gets, so branch protection can require verified changes."""


def publish_check(run: OperationRun) -> None:
    """The verdict as a check run on the pushed head: success, or neutral with the reasons. A
    refusal (a token that is no GitHub App's gets 403) is logged, once per process for a 403,
    and the job goes on: the pull request's body holds the same report."""
    verification, job = run.verification, run.job
    reasons = "; ".join(verification.reasons)
    check = CheckRunReport(
        name=CHECK_RUN,
        conclusion="success" if verification.verified else "neutral",
        title="verified" if verification.verified else f"not verified: {reasons}"[:200],
        summary="\n".join(evidence_table(verification)),
    )
    try:
        run.p.pulls.check_run(job.repository.owner, job.repository.name, run.commits[-1], check)
    except GitHubError as exc:
        if exc.status == 403:
            _check_runs_refused(str(exc))
        else:
            log.warning("check run not published: %s", exc)


@lru_cache(maxsize=1)
def _check_runs_refused(error: str) -> None:
    log.warning("check runs are refused (a GitHub App token is needed); not publishing them: %s", error)


def pull_request(run: OperationRun) -> Result:
    """A pull request for review (a draft when unverified), unless the claim was lost or the
    operation cancelled since the push; the branch stays pushed if it fails."""
    assert run.outcome is not None
    job = run.job
    _check_leases(run, "opening the pull request")
    publish_check(run)
    try:
        pr = run.p.pulls.open(
            job.repository.owner,
            job.repository.name,
            head=run.branch,
            base=job.repository.branch,
            title=pr_title(job),
            body=pr_body(job, run.outcome, run.verification, run.files, run.findings),
            draft=not run.verification.verified,
            labels=run.p.settings.pr_labels,
        )
    except GitHubError as exc:
        metrics.pull_request_failed(job.operation_type)
        if exc.retry_after is not None and not run.final_attempt:
            # Rate limited for longer than a job waits: back to the queue (its locks released);
            # the next attempt finds the branch pushed and goes checkout -> resume -> PR.
            raise RetryLater(f"branch pushed, pull request rate limited: {exc}", exc.retry_after) from exc
        return run.result(Status.PUSHED, error=f"branch pushed, pull request failed: {exc}")
    spent = run.outcome.usage.cost_usd
    run.p.registry.transition(
        run.repo,
        run.branch,
        BranchStatus.PR_OPEN,
        attempt=run.attempt,
        pr_number=pr.number,
        pr_url=pr.url,
        head=run.commits[-1],
        cost_usd=spent,
    )
    info = PullRequestInfo(number=pr.number, url=pr.url, title=pr.title, draft=pr.draft)
    return run.result(Status.PR_OPEN, pr=info)


def revised(run: OperationRun) -> Result:
    """A revision pushed: its check run, the record back to ``pr_open`` with the revision counted
    and its cost added, and the answer on the pull request."""
    job, record = run.job, run.record
    assert job.revision is not None and record is not None and run.pr_number is not None
    publish_check(run)
    spent = run.outcome.usage.cost_usd if run.outcome else 0.0
    run.p.registry.transition(
        run.repo,
        run.branch,
        BranchStatus.PR_OPEN,
        attempt=run.attempt,
        revising=None,
        error=None,
        head=run.commits[-1],
        files=sorted({*record.files, *run.files}),
        revisions=record.revisions + 1,
        cost_usd=round(record.cost_usd + spent, 6),
    )
    verdict = "verified" if run.verification.verified else "not verified"
    revision.progress(run, f"pushed `{run.commits[-1][:12]}`, {verdict} (${spent:.4f})")
    revision.reply(run, revision.answer(run))
    info = PullRequestInfo(number=run.pr_number, url=run.pr_url or "", title=pr_title(job))
    return run.result(Status.PR_OPEN, pr=info)


def merge(run: OperationRun) -> Result:
    """The branch merged into the freshly fetched base (no approval asked); a conflict keeps it."""
    publish_check(run)
    run.p.registry.transition(run.repo, run.branch, BranchStatus.MERGING, attempt=run.attempt)
    settings = run.p.settings
    message = f"Merge {run.branch} into {run.job.repository.branch}"
    for attempt in range(1, MERGE_ATTEMPTS + 1):
        _check_leases(run, "merging")
        try:
            run.worktree.merge_into_base(message, settings.git_author_name, settings.git_author_email)
            break
        except MergeConflict as exc:
            raise StageFailed(
                Status.CONFLICT, f"{run.job.repository.branch} moved and conflicts: {exc}; branch kept"
            ) from None
        except PushRejected:
            if attempt == MERGE_ATTEMPTS:
                metrics.push_failed(run.job.operation_type)
                raise
    run.p.registry.transition(run.repo, run.branch, BranchStatus.MERGED, attempt=run.attempt)
    return run.result(Status.MERGED)


def _check_change_size(run: OperationRun) -> None:
    """Refuse a change too large to review before it is locked, scanned or committed."""
    settings = run.p.settings
    if settings.max_changed_files and len(run.files) > settings.max_changed_files:
        raise ChangeTooLarge(
            "files changed", len(run.files), settings.max_changed_files, "CODEWORKER_MAX_CHANGED_FILES"
        )
    if settings.max_diff_bytes:
        size = run.worktree.change_size()
        if size > settings.max_diff_bytes:
            raise ChangeTooLarge("bytes of diff", size, settings.max_diff_bytes, "CODEWORKER_MAX_DIFF_BYTES")


def _check_leases(run: OperationRun, before: str, pushed: Pushed | None = None) -> None:
    """Stop before anything leaves the machine if a lock or the claim was lost (expired or taken),
    or the operation was cancelled; record ``pushed``, the checkpoint of a push, if it may go on.

    Asked of Redis now, not only of the watchdog's last beat or the cancellation watch's last
    look: an attempt superseded or cancelled since then must not push or open a pull request."""
    run.stop_if_lost(before)
    run.locks.verify()
    try:
        cancelled = run.p.claims.proceed(
            run.attempt, run.task_id, pushed.model_dump_json() if pushed else None
        )
    except ClaimLost:
        run.stop_if_lost(before, claim_held=False)
        raise
    if cancelled is not None:
        run.cancel.set(cancelled)
        run.cancel.raise_if_set()
