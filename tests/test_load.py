"""A load run: jobs on distinct files of one repository over 2 real workers, 3 of them SIGKILLed and 2
SIGTERMed at random moments (seeded; chosen by how many results are in, not by the clock), each
replaced by a new worker on a fresh machine. Every job ends with exactly one result, one accepted
push of its branch and one pull request; no lock is left; and the workers' own count of finished
jobs, killed workers included, is the number of results.

``make test`` runs CODEWORKER_LOAD_JOBS (default 200, about a minute here) jobs; ``make soak`` runs
600 with 10 SIGKILLs and 5 SIGTERMs and prints the figures. CODEWORKER_LOAD_KILLS,
CODEWORKER_LOAD_TERMS and CODEWORKER_LOAD_SEED vary the run.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.jobs import new_repo
from tests.support.load import Results, disrupt, figures, file_job, finished_counts, log_trail, plan
from tests.support.stalls import SHORT_RECOVERY, Fleet, locks_left

JOBS = int(os.environ.get("CODEWORKER_LOAD_JOBS", "200"))
KILLS = int(os.environ.get("CODEWORKER_LOAD_KILLS", "3"))
TERMS = int(os.environ.get("CODEWORKER_LOAD_TERMS", "2"))
SEED = int(os.environ.get("CODEWORKER_LOAD_SEED", "11"))
FIGURES = os.environ.get("CODEWORKER_LOAD_FIGURES")
"""A file the run's figures go to (``make soak`` prints it), whether the test passes or not."""

SETTINGS = {
    **SHORT_RECOVERY,
    # A SIGTERMed worker cancels (and requeues) what it has not finished within a second: the
    # stop interrupts jobs too, as a kill does, instead of waiting them out.
    "CODEWORKER_SHUTDOWN_GRACE": "1",
}
RESULTS_WITHIN = 120 + 3 * JOBS
"""Seconds the whole run may take."""
STALLED_AFTER = 60
"""Seconds without a new result after which the jobs still without one count as lost: an
interrupted job runs again within the visibility timeout (6 s) and a claim TTL (6 s)."""


@pytest.fixture(scope="module")
def broker_url(redis_server) -> str:
    # A database of its own: messages of killed workers must not reach other modules' workers.
    return redis_server.url.rsplit("/", 1)[0] + "/6"


@pytest.fixture()
def fleet(worker_env: dict, tmp_path) -> Iterator[Fleet]:
    with Fleet({**worker_env, **SETTINGS}, tmp_path / "machines") as fleet:
        yield fleet
    for worker in fleet.killed + fleet.stopped:
        # Whole logs next to the machines, for a failure's post-mortem; the tails in the report.
        (fleet.root / f"{worker.name}.log").write_text(worker.output + "\n")
        print(f"==== {worker.name} (log: {fleet.root / worker.name}.log)\n" + "\n".join(worker.lines[-40:]))


@pytest.mark.timeout(RESULTS_WITHIN + 180)
def test_jobs_survive_killed_and_stopped_workers(fleet, celery_client, broker, git_server, github_stub):
    rng = random.Random(SEED)
    disruptions = plan(JOBS, KILLS, TERMS, rng)
    name, url = new_repo(git_server, {"README.md": "load\n"})
    fleet.start()
    fleet.start()
    results = Results(celery_client)
    started = time.monotonic()
    for index in range(JOBS):
        results.send(file_job(url, name, index))

    hits = []
    lost = None
    try:
        for disruption in disruptions:
            results.wait_for(disruption.after, STALLED_AFTER, RESULTS_WITHIN)
            hits.append(disrupt(fleet, disruption, rng))
        results.wait_for(JOBS, STALLED_AFTER, RESULTS_WITHIN)
    except TimeoutError as exc:
        lost = f"{exc}: {len(results.missing())} job(s) lost\n{results.trail(fleet, broker)}"
    seconds = time.monotonic() - started
    timeline = "\n".join(str(hit) for hit in hits)
    fleet.stop()  # counters are read from the files of every worker, the stopped ones included

    outcomes = {op: results.sent[op].get(timeout=10) for op in results.arrived}
    branches = {op: result["branch"] for op, result in outcomes.items()}
    updates = git_server.ref_updates("acme", name)
    accepted = Counter(update.ref for update in updates if update.accepted)
    pull_requests = Counter(pr["head"]["ref"] for pr in github_stub.pull_requests("acme", name))
    finished: Counter[str] = Counter()
    for worker in fleet.killed + fleet.stopped:
        finished += finished_counts(Path(worker.env["CODEWORKER_METRICS_DIR"]))
    twice = {op: branch for op, branch in branches.items() if accepted[f"refs/heads/{branch}"] > 1}
    report = figures(
        seconds,
        hits,
        results,
        results=len(outcomes),
        lost=JOBS - len(outcomes),
        pushed_twice=len(twice),
        jobs_finished=", ".join(f"{status} {count}" for status, count in sorted(finished.items())),
        seed=SEED,
    )
    print(report)
    if FIGURES:
        Path(FIGURES).write_text(report + "\n")

    if lost:
        pytest.fail(f"{lost}\nkills and stops:\n{timeline}")
    if twice:
        # A redelivered job pushes its branch again when its first attempt died between its push
        # and its pull request: the updates, and who pushed when.
        refs = {f"refs/heads/{branch}" for branch in twice.values()}
        details = [f"{u.ref}: {u.old} -> {u.new} accepted={u.accepted}" for u in updates if u.ref in refs]
        for op, branch in twice.items():
            details += log_trail(fleet.killed + fleet.stopped, op, branch)
        pytest.fail("pushed twice:\n" + "\n".join(details) + f"\nkills and stops:\n{timeline}")
    assert [hit.exit_status for hit in hits if hit.disruption.signal == "SIGTERM"] == [0] * TERMS
    failed = {op: result["error"] for op, result in outcomes.items() if result["status"] != "pr_open"}
    assert failed == {}
    assert all(result["success"] and result["operation_id"] == op for op, result in outcomes.items())
    assert len(set(branches.values())) == JOBS
    assert accepted == Counter(f"refs/heads/{branch}" for branch in branches.values())
    assert pull_requests == Counter(branches.values())
    assert locks_left(broker, url) == []
    # What the workers counted, killed ones included: one pr_open per job; any other status is a
    # retry of a copy that found its operation busy, or a job a SIGTERM interrupted (requeued),
    # neither of which is a result.
    assert finished["pr_open"] == JOBS
    assert set(finished) <= {"pr_open", "retry", "requeued"}
