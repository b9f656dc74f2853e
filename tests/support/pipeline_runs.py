"""One job through the pipeline in-process, with an executor whose work is a function of the test."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from codeworker.executors.base import Outcome, Workspace
from codeworker.loopback.gitserver import GitServer
from codeworker.models import Job, parse_job
from codeworker.pipeline.run import OperationRun, Progress
from codeworker.pipeline.service import Pipeline
from tests.support.jobs import new_repo


class FnExecutor:
    """An executor whose work is a function of the test."""

    name = "fn"

    def __init__(self, work: Callable[[Workspace], None]) -> None:
        self.work = work

    def run(self, job: Job, workspace: Workspace) -> Outcome:
        self.work(workspace)
        return Outcome(summary="test change")


def make_job(pipe: Pipeline, url: str, name: str, **extra: object) -> Job:
    raw = {
        "description": "Change the answer",
        "repository": {"url": url, "owner": "acme", "name": name},
        **extra,
    }
    return parse_job(
        raw, operation_type="refactor", allowed_repos=pipe.settings.allowed_repos, max_iterations_cap=10
    )


def run(
    pipe: Pipeline,
    job: Job,
    work: Callable[[Workspace], None],
    progress: Callable[[Progress], None] | None = None,
) -> dict:
    claim = pipe.claims.claim(job.operation_id)
    assert claim.owner is not None
    return OperationRun(pipe, job, FnExecutor(work), claim.owner, progress, time.monotonic()).execute()


def run_in_new_repo(
    pipe: Pipeline, git_server: GitServer, files: dict[str, str], work: Callable[[Workspace], None]
) -> tuple[dict, str]:
    """Runs a job described as "change" whose work is ``work`` on a new repository holding
    ``files``; (its result, the repository's name)."""
    name, url = new_repo(git_server, files)
    return run(pipe, make_job(pipe, url, name, description="change"), work), name


def with_executor(pipe: Pipeline, executor: object) -> Pipeline:
    return dataclasses.replace(pipe, resolve_executor=lambda name, operation_type: executor)
