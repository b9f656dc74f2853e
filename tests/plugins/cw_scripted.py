"""A test-only executor plugin: applies the change a test writes into the job's description.

A revision (``codeworker.follow_up``) runs the operation's job again, description included, so it
applies the script in the follow-up's instructions instead: the same script would make the same
edit again and leave nothing to commit.

The description is JSON: ``{"write": {path: content}, "delete": [path], "gate": fifo,
"redis_gate": name, "lock": [path], "run": command, "claim_verified": bool}``; ``run`` is a
command the executor runs in its sandbox after writing. ``claim_verified`` is what a
plugin that certifies its own work would say; the worker ignores it. Both gates hold the job mid-run (after
checkout and locking, before it writes) until the test lets it go, without sleeping:

- ``gate`` names a FIFO the executor reads to its end: it blocks until the test opens it for
  writing and then closes it.
- ``redis_gate`` is a handshake per attempt in the job's Redis (the worker's ``REDIS_URL``): the
  attempt pushes ``{"attempt": token, "pid": pool process}`` onto :func:`arrivals_key` and waits
  on its own :func:`release_key`. A FIFO cannot tell one attempt from the next (a re-run of a
  killed job, a superseded attempt): whichever reader opens it takes the test's release; here the
  test sees every attempt that arrives and lets go exactly the one it means (tests/support/gates.py).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import redis

from codeworker.executors.base import Outcome, Workspace
from codeworker.models import Job

REDIS_GATE_WAIT = 600
"""Seconds an attempt waits at a Redis gate: a test that failed before releasing it must not leave a
worker's pool process parked for ever (a FIFO gate would)."""


def arrivals_key(gate: str) -> str:
    return f"cw-test:gate:{gate}:arrivals"


def release_key(gate: str, attempt: str) -> str:
    return f"cw-test:gate:{gate}:release:{attempt}"


def wait_at_redis_gate(gate: str) -> None:
    attempt = uuid.uuid4().hex
    # redis-py's default 5 s socket timeout would cut the blocking pop short.
    store = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=REDIS_GATE_WAIT + 10)
    try:
        store.rpush(arrivals_key(gate), json.dumps({"attempt": attempt, "pid": os.getpid()}))
        if store.blpop([release_key(gate, attempt)], timeout=REDIS_GATE_WAIT) is None:
            raise RuntimeError(f"attempt {attempt} was not released from gate {gate} in {REDIS_GATE_WAIT} s")
    finally:
        store.close()


class ScriptedExecutor:
    name = "scripted"

    def run(self, job: Job, workspace: Workspace) -> Outcome:
        script = json.loads(job.revision.instructions if job.revision else job.description)
        for path in script.get("lock", []):
            workspace.lock(path)
        if gate := script.get("gate"):
            Path(gate).read_text()
        if redis_gate := script.get("redis_gate"):
            wait_at_redis_gate(redis_gate)
        for path, content in script.get("write", {}).items():
            workspace.write_file(path, content)
        for path in script.get("delete", []):
            workspace.lock(path)
            workspace.resolve(path).unlink()
        if command := script.get("run"):
            workspace.run(command)
        return Outcome(
            summary=f"scripted change to {len(workspace.changed_files())} file(s)",
            iterations=1,
            verified=script.get("claim_verified", True),  # type: ignore[call-arg]
        )
