"""The ``codeworker`` command: run a worker, submit a job, follow it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from codeworker.config import get_settings

TASK_BY_TYPE = {
    "error_fix": "codeworker.error_fix",
    "feature_implementation": "codeworker.feature_implementation",
    "refactor": "codeworker.refactor",
    "test": "codeworker.test",
}


@click.group()
def main() -> None:
    """codeworker: code-operation jobs in, verified pull requests out."""


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", type=int, default=None, help="Concurrent jobs (WORKER_CONCURRENCY).")
@click.option("--hostname", "-n", default=None, help="Worker node name (default codeworker@%h).")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    concurrency: int | None, hostname: str | None, loglevel: str, celery_args: tuple[str, ...]
) -> None:
    """Start a worker consuming the code-operation queue (extra arguments go to Celery)."""
    from codeworker.celery import app

    settings = get_settings()
    argv = [
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
    app.worker_main(argv)


@main.command()
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait/--no-wait", default=False, help="Follow progress and print the result.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the result.")
def submit(job_file: Path, wait: bool, timeout: float | None) -> None:
    """Send the job in JOB_FILE (JSON) to the queue."""
    from codeworker.celery import app

    job = json.loads(job_file.read_text())
    operation_type = job.get("operation_type", job.get("operationType"))
    if operation_type not in TASK_BY_TYPE:
        raise click.BadParameter(
            f"operation_type must be one of {', '.join(TASK_BY_TYPE)}", param_hint="JOB_FILE"
        )
    result = app.send_task(TASK_BY_TYPE[operation_type], args=[job], queue=get_settings().queue)
    click.echo(f"task {result.id} sent to {get_settings().queue}")
    if not wait:
        return
    last: object = None

    def on_message(message: dict) -> None:
        nonlocal last
        info = message.get("result")
        if message.get("status") == "PROGRESS" and info != last and isinstance(info, dict):
            last = info
            click.echo(f"  {info.get('stage')}  branch={info.get('branch')}", err=True)

    outcome = result.get(timeout=timeout, on_message=on_message, propagate=False)
    click.echo(json.dumps(outcome, indent=2, default=str))
    sys.exit(0 if isinstance(outcome, dict) and outcome.get("success") else 1)
