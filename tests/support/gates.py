"""Holding a scripted job mid-run through Redis, one handshake per attempt.

The scripted executor (tests/plugins/cw_scripted.py), given ``"redis_gate": name``, announces each
attempt that reaches the gate with a token of its own and waits until that token is released. A
test therefore knows which attempt it holds (and which pool process runs it), releases exactly that
one, and sees any other attempt that got there too, where a FIFO would hand its one release to
whichever reader opened it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from tests.plugins.cw_scripted import arrivals_key, release_key
from tests.support.jobs import GATE_TIMEOUT
from tests.support.worker import WorkerProcess

POP_SLICE = 1
"""Seconds one blocking pop for an arrival waits (see :meth:`RedisGate.arrival`)."""

RELEASE_TTL = 600
"""Seconds a release waits for its attempt: it is pushed only after the attempt arrived, so it is
normally taken at once; the TTL only keeps an orphan from outliving a failed test's database."""


@dataclass(frozen=True)
class Arrival:
    """One attempt parked at a gate."""

    attempt: str
    pid: int
    """The pool process running the attempt."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisGate:
    """A gate named ``name`` in the Redis database of the workers (their ``REDIS_URL``)."""

    def __init__(self, store: redis.Redis, name: str | None = None) -> None:
        self.store = store
        self.name = name or uuid.uuid4().hex

    def arrival(self, timeout: float = GATE_TIMEOUT, workers: Iterable[WorkerProcess] = ()) -> Arrival:
        """The next attempt to reach the gate, once it is there. Raises TimeoutError with the tail of
        ``workers``' logs instead of hanging when none gets there."""
        deadline = time.monotonic() + timeout
        popped = None
        # Short blocking pops: the client's socket timeout (5 s for the tests' clients) would cut a
        # long one.
        while popped is None and time.monotonic() < deadline:
            popped = self.store.blpop([arrivals_key(self.name)], timeout=POP_SLICE)
        if popped is None:
            logs = "\n".join(f"==== {w.name}\n" + "\n".join(w.lines[-30:]) for w in workers)
            raise TimeoutError(f"no attempt reached gate {self.name} within {timeout} s\n{logs}")
        fields = json.loads(_text(popped[1]))
        return Arrival(fields["attempt"], int(fields["pid"]))

    def release(self, arrival: Arrival) -> None:
        """Let exactly ``arrival``'s attempt go on."""
        key = release_key(self.name, arrival.attempt)
        with self.store.pipeline() as pipe:
            pipe.rpush(key, "go").expire(key, RELEASE_TTL).execute()

    def waiting(self) -> list[Arrival]:
        """Attempts that arrived and that no test took with :meth:`arrival` yet."""
        raw = self.store.lrange(arrivals_key(self.name), 0, -1)
        return [Arrival(f["attempt"], int(f["pid"])) for f in (json.loads(_text(item)) for item in raw)]
