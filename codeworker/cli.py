"""The ``codeworker`` command: run a worker, submit and follow jobs, look at locks and branches.

Commands that only use Redis (``status``, ``locks``, ``branches``, ``revisions``, ``cancel``) need
only ``REDIS_URL`` and build no other client. A Redis that cannot be reached or refuses the password
is one line naming it (the password masked by kombu's ``maybe_sanitize_url``) and exit status 1,
never a traceback.
"""

from __future__ import annotations

import faulthandler
import getpass
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import click
import redis
from kombu.utils.url import maybe_sanitize_url

from codeworker.config import Settings, get_settings
from codeworker.coordination.cancellations import Cancellations, CancelState, cancellation_now
from codeworker.coordination.claims import RUNNING, OperationClaims
from codeworker.coordination.connection import redis_for
from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.locks import list_locks
from codeworker.coordination.registry import BranchRegistry, BranchStatus
from codeworker.doctor import Finding, Verdict, run_checks
from codeworker.models import InvalidJob, OperationType, parse_job
from codeworker.pipeline.revision import TASK_NAME as FOLLOW_UP_TASK
from codeworker.pipeline.revision import revision_id
from codeworker.pipeline.service import pipeline

TASK_BY_TYPE = {kind.value: kind.task_name for kind in OperationType}


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _load_job(job_file: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """A job from a JSON file, with any flags given on the command line on top."""
    job: dict[str, Any] = json.loads(job_file.read_text()) if job_file else {}
    if flags["repo"]:
        job["repository"] = {**job.get("repository", {}), "url": flags["repo"]}
    if flags["base"]:
        job.setdefault("repository", {})["branch"] = flags["base"]
    for name in ("operation_type", "description", "executor", "operation_id", "test_command"):
        if flags[name]:
            job[name] = flags[name]
    if flags["target_file"]:
        job["target_files"] = list(flags["target_file"])
    if flags["merge"]:
        job["approval_required"] = False
    job.setdefault("operation_type", job.pop("operationType", None))
    if job["operation_type"] not in TASK_BY_TYPE:
        raise click.UsageError(
            f"operation type must be one of {', '.join(TASK_BY_TYPE)} (--type or the file)"
        )
    return job


def job_options(command: Any) -> Any:
    """The flags ``submit`` and ``run`` share; every one overrides the job file."""
    for option in reversed(
        [
            click.argument(
                "job_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
            ),
            click.option(
                "--type", "operation_type", type=click.Choice(list(TASK_BY_TYPE)), help="Operation type."
            ),
            click.option("--repo", help="Repository URL."),
            click.option("--base", help="Base branch (default main)."),
            click.option("--description", "-d", help="What to do."),
            click.option("--target-file", "-f", multiple=True, help="A target file (repeatable)."),
            click.option("--executor", help="Executor plugin name."),
            click.option("--operation-id", help="Idempotency key."),
            click.option("--test-command", help="Command that runs the tests."),
            click.option(
                "--merge", is_flag=True, help="Merge instead of opening a PR (approval_required false)."
            ),
        ]
    ):
        command = option(command)
    return command


def _print_progress(info: dict[str, Any]) -> None:
    iteration = f" iteration {info['iteration']}/{info['max_iterations']}" if info.get("iteration") else ""
    click.echo(f"  {info['stage']:<14}{iteration}  {info.get('branch') or ''}", err=True)


NO_WORKER = 3
"""Exit status of ``--wait`` when no worker consumes the queue: the job was sent and waits."""

REVISABLE = (BranchStatus.PR_OPEN, BranchStatus.REVISING)
"""Branch statuses a follow-up may revise; the worker refuses the others too, but only once it runs."""


def _send(task_name: str, payload: dict[str, Any], wait: bool, timeout: float | None) -> None:
    """Send ``payload`` to ``task_name`` on the queue and print the task id. With ``wait``, follow
    its progress, print its result and exit 0 if it succeeded, else 1 (:data:`NO_WORKER` when no
    worker consumes the queue)."""
    from codeworker.celery import app

    settings = get_settings()
    result = app.send_task(task_name, args=[payload], queue=settings.queue)
    click.echo(f"task {result.id} sent to {settings.queue}", err=True)
    if not wait:
        click.echo(result.id)
        return
    consumers = app.control.inspect(timeout=1.0).active_queues() or {}
    if not any(queue["name"] == settings.queue for queues in consumers.values() for queue in queues):
        click.echo(
            f"no worker consumes {settings.queue} (none answered within 1 s): the job waits in the "
            "queue until one starts",
            err=True,
        )
        click.echo(result.id)
        sys.exit(NO_WORKER)
    last: list[Any] = [None]

    def on_message(message: dict[str, Any]) -> None:
        info = message.get("result")
        if message.get("status") == "PROGRESS" and isinstance(info, dict) and info != last[0]:
            last[0] = info
            _print_progress(info)
        elif message.get("status") in ("STARTED", "RETRY"):
            click.echo(f"  {message['status'].lower()}", err=True)

    outcome = result.get(timeout=timeout, on_message=on_message, propagate=False)
    _echo_json(outcome)
    sys.exit(0 if isinstance(outcome, dict) and outcome.get("success") else 1)


def _requester(requested_by: str | None) -> str:
    """Who asks: the ``--by`` given, else ``user@host``."""
    return requested_by or f"{getpass.getuser()}@{socket.gethostname()}"


class Commands(click.Group):
    """The command group; a Redis failure in any command ends it with one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except redis.AuthenticationError as exc:
            raise click.ClickException(f"Redis at {_redis_shown()} refused the credentials: {exc}") from None
        except redis.ConnectionError as exc:
            raise click.ClickException(f"cannot reach Redis at {_redis_shown()}: {exc}") from None
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis at {_redis_shown()} failed: {exc}") from None


def _redis_shown() -> str:
    return maybe_sanitize_url(get_settings().redis_url)


def _store(settings: Settings) -> tuple[redis.Redis, Keys]:
    """The Redis client and key layout a read-only command needs, and nothing else."""
    return redis_for(settings), Keys(settings.key_prefix)


@click.group(cls=Commands)
def main() -> None:
    """codeworker: code-operation jobs in, verified pull requests out."""


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", type=int, default=None, help="Concurrent jobs (WORKER_CONCURRENCY).")
@click.option("--hostname", "-n", default=None, help="Worker node name (default codeworker@%h).")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option(
    "--doctor",
    "check_first",
    is_flag=True,
    help="Run `codeworker doctor` first; refuse to start if a check fails.",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    concurrency: int | None,
    hostname: str | None,
    loglevel: str,
    check_first: bool,
    celery_args: tuple[str, ...],
) -> None:
    """Start a worker consuming the code-operation queue (extra arguments go to Celery)."""
    if check_first and not _report(run_checks(get_settings())):
        raise click.ClickException("codeworker worker refuses to start: a doctor check failed (above)")
    # SIGTERM means "finish within the grace period, then requeue": Celery's soft shutdown.
    # billiard reads this when first imported, so it must be set before Celery's worker loads.
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    # `kill -USR2 <pid>` prints every thread's stack to stderr, from C, so it answers even when the
    # main thread is stuck where Python's own signal handlers cannot run.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    from celery.bin.celery import celery as celery_command

    from codeworker.worker.signals import stopped_on_request

    settings = get_settings()
    argv = [
        "--app",
        "codeworker.celery:app",
        "worker",
        "--queues",
        settings.queue,
        "--concurrency",
        str(concurrency or settings.worker_concurrency),
        "--hostname",
        hostname or "codeworker@%h",
        "--loglevel",
        loglevel,
        "--task-events",
        *celery_args,
    ]
    # Celery's command, not ``app.worker_main``: that one drops the worker's exit status, so a
    # worker that died ("Unrecoverable error") exited 0 and a supervisor restarting it only on
    # failure left it down.
    try:
        status = celery_command.main(args=argv, standalone_mode=False)
    except SystemExit as exit_:  # raised by a signal handler or a worker_init refusal
        status = exit_.code
    # Celery's cold shutdown exits 1 even when an operator asked for it (SIGTERM, SIGINT).
    sys.exit(0 if status and stopped_on_request() else status)


@main.command()
@job_options
@click.option("--wait/--no-wait", default=False, help="Follow progress live and print the result.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the result.")
def submit(job_file: Path | None, wait: bool, timeout: float | None, **flags: Any) -> None:
    """Send a job (JSON file and/or flags) to the code-operation queue, once it passes the worker's
    own validation. With --wait, exit status 3 says that no worker consumes the queue (the job
    was sent and waits there)."""
    settings = get_settings()
    job = _load_job(job_file, flags)
    try:
        parse_job(
            job,
            operation_type=job["operation_type"],
            allowed_repos=settings.allowed_repos,
            max_iterations_cap=settings.max_iterations_cap,
        )
    except InvalidJob as exc:
        raise click.UsageError(f"not sent: {exc}") from None
    _send(TASK_BY_TYPE[job["operation_type"]], job, wait, timeout)


@main.command("follow-up")
@click.argument("operation_id")
@click.argument("instructions")
@click.option("--by", "requested_by", default=None, help="Who asks, for the PR comment (default user@host).")
@click.option("--wait/--no-wait", default=False, help="Follow progress live and print the result.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the result.")
def follow_up(
    operation_id: str, instructions: str, requested_by: str | None, wait: bool, timeout: float | None
) -> None:
    """Send the next revision of an operation's open pull request, which follows INSTRUCTIONS."""
    if not instructions.strip():
        raise click.UsageError("not sent: the instructions are empty")
    record = BranchRegistry(*_store(get_settings())).of_operation(operation_id)
    if record is None:
        raise click.ClickException(f"no codeworker branch for operation {operation_id}")
    if record.status not in REVISABLE:
        raise click.ClickException(
            f"operation {operation_id}: its branch is {record.status.value}; "
            "only an open pull request is revised"
        )
    request = {
        "operation_id": operation_id,
        "instructions": instructions,
        "requested_by": _requester(requested_by),
        "trigger": "cli",
    }
    _send(FOLLOW_UP_TASK, request, wait, timeout)


@main.command()
@job_options
def run(job_file: Path | None, **flags: Any) -> None:
    """Run one operation in this process, without a broker (Redis is still used for locks)."""
    job = _load_job(job_file, flags)
    result = pipeline().run(job, job["operation_type"], progress=lambda p: _print_progress(p.model_dump()))
    _echo_json(result)
    sys.exit(0 if result.get("success") else 1)


@main.command()
@click.argument("operation_id")
def status(operation_id: str) -> None:
    """Show an operation's idempotency record: running (and where) or finished (with its result),
    and its cancellation if one was asked for."""
    settings = get_settings()
    client, keys = _store(settings)
    record = OperationClaims(client, keys, settings.claim_ttl, settings.result_expires).get(operation_id)
    found = Cancellations(client, keys, settings.result_expires).find(operation_id)
    if record is None and found is None:
        raise click.ClickException(f"no record of operation {operation_id}")
    # A revoke records its cancellation by task id; the result then carries it.
    recorded = ((record or {}).get("result") or {}).get("cancellation")
    _echo_json({**(record or {}), "cancellation": found.model_dump() if found else recorded})


@main.command()
@click.argument("operation_id")
@click.option("--by", "requested_by", default=None, help="Who asks, for the result (default user@host).")
def cancel(operation_id: str, requested_by: str | None) -> None:
    """Cancel an operation. A queued job never starts; a running one stops within seconds and pushes
    nothing more; a finished one is left as it is (exit status 1). Needs only REDIS_URL."""
    settings = get_settings()
    done = Cancellations(*_store(settings), settings.result_expires).request(
        cancellation_now(_requester(requested_by), "codeworker cancel"), operation_id=operation_id
    )
    if done.state is CancelState.FINISHED:
        status = (done.result or {}).get("status")
        raise click.ClickException(f"operation {operation_id} already finished ({status}); nothing to cancel")
    assert done.cancellation is not None
    if done.state is CancelState.ALREADY:
        click.echo(
            f"operation {operation_id} was already cancelled by {done.cancellation.requested_by} "
            f"({done.cancellation.via})"
        )
    elif done.claim == RUNNING:
        click.echo(
            f"cancellation of {operation_id} recorded; it stops within {settings.cancel_poll_interval:g} s "
            f"and its current step; `codeworker status {operation_id}` shows the result"
        )
    else:
        click.echo(
            f"cancellation of {operation_id} recorded; no worker runs it now (queued, or an unknown "
            "id): it will not start"
        )


@main.command()
def locks() -> None:
    """List held file locks with their holder and TTL."""
    held = list_locks(*_store(get_settings()))
    if not held:
        click.echo("no locks held")
    for lock in held:
        ttl = f"{lock.ttl:.1f}s" if lock.ttl is not None else "-"
        click.echo(f"{lock.repo}  {lock.path}  {lock.holder}  ttl={ttl}")


@main.command()
@click.option("--repo", help="Only this repository (URL or owner/name id).")
@click.option(
    "--status", "status_", type=click.Choice([s.value for s in BranchStatus]), help="Only this status."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON records.")
def branches(repo: str | None, status_: str | None, as_json: bool) -> None:
    """List the branch registry, filterable by repository and status."""
    wanted_repo = repo_id(repo) if repo and "://" in repo else repo
    registry = BranchRegistry(*_store(get_settings()))
    records = registry.list(repo=wanted_repo, status=BranchStatus(status_) if status_ else None)
    if as_json:
        _echo_json([record.model_dump(mode="json") for record in records])
        return
    if not records:
        click.echo("no branches")
    for record in records:
        pr = f"  PR #{record.pr_number}" if record.pr_number else ""
        click.echo(f"{record.status.value:<9} {record.repo}  {record.branch}  {record.operation_id}{pr}")


@main.command()
@click.argument("operation_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def revisions(operation_id: str, as_json: bool) -> None:
    """Show an operation's branch and pull request, and the outcome of each of its revisions."""
    settings = get_settings()
    client, keys = _store(settings)
    record = BranchRegistry(client, keys).of_operation(operation_id)
    if record is None:
        raise click.ClickException(f"no codeworker branch for operation {operation_id}")
    claims = OperationClaims(client, keys, settings.claim_ttl, settings.result_expires)
    # Every number handed out, not only the ended ones: a queued or running revision shows too.
    rows = [
        _revision_row(claims, revision_id(operation_id, n), n) for n in range(1, record.revision_requests + 1)
    ]
    if as_json:
        _echo_json({"record": record.model_dump(mode="json"), "revisions": rows})
        return
    pr = f"{record.pr_url} (#{record.pr_number})" if record.pr_number else "-"
    click.echo(f"branch     {record.branch}")
    click.echo(f"pr         {pr}")
    click.echo(f"status     {record.status.value}" + (f" ({record.revising})" if record.revising else ""))
    click.echo(f"revisions  {record.revisions} ended of {record.revision_requests} asked for")
    click.echo(f"cost       ${record.cost_usd:.4f}")
    for row in rows:
        cost = f"${row['cost_usd']:.4f}" if row["cost_usd"] is not None else "-"
        error = (row["error"] or "")[:100]
        click.echo(
            f"r{row['number']}  {row['operation_id']}  {row['state'] or '-'}  {row['status'] or '-'}  "
            f"{row['head'] or '-'}  {cost}  {error}".rstrip()
        )


def _revision_row(claims: OperationClaims, operation_id: str, number: int) -> dict[str, Any]:
    """What the claims say of one revision; None fields where it has no record (yet, or any more)."""
    claim = claims.get(operation_id) or {}
    result = claim.get("result") or {}
    commits = result.get("commits") or []
    return {
        "number": number,
        "operation_id": operation_id,
        "state": claim.get("state"),
        "status": result.get("status"),
        "head": commits[-1][:12] if commits else None,
        "cost_usd": (result.get("usage") or {}).get("cost_usd"),
        "error": result.get("error"),
    }


@main.command()
@click.option("--repo", "repository", default=None, help="owner/name of a repository the token must push to.")
def doctor(repository: str | None) -> None:
    """Check that this host can run a worker: one line per check (ok, warning or failed, and the
    fix). Exit status 1 when a check failed."""
    if not _report(run_checks(get_settings(), repository)):
        sys.exit(1)


def _report(findings: list[Finding]) -> bool:
    """Print one line per finding; whether none failed."""
    for finding in findings:
        click.echo(finding.line())
    return all(finding.verdict is not Verdict.FAILED for finding in findings)


@main.command()
@click.argument("trajectory", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--job", "job_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
def replay(trajectory: Path, job_file: Path | None) -> None:
    """Run a job in this process with its model answers served from a recorded trajectory."""
    from codeworker.replay import replay_main

    sys.exit(replay_main(trajectory, job_file, echo=click.echo))
