"""Cancellations: a request that an operation stop, recorded in Redis where every worker sees it.

A cancellation is a JSON string (:class:`~codeworker.models.Cancellation`) at the operation's key,
and, for a Celery revoke (which knows only the task id), at the task id's key
(:meth:`Keys.cancellations`). It lives as long as results do, so a copy of the job delivered much
later, to a worker restarted meanwhile (Celery's own revoke list lives in worker memory), still
finds it: the claim hands it over and the job ends cancelled without running
(:class:`~codeworker.coordination.claims.OperationClaims`).

A running attempt learns of it within ``cancel_poll_interval`` from :class:`CancelWatch`, which
sets the attempt's :class:`CancelSignal`: the sandboxed command running at that moment is killed,
and the attempt stops at its next check (a stage boundary, an agent turn, the end of the command).
Right before the push and before the pull request, the claim and the cancellation are read in the
same Redis step (:meth:`OperationClaims.proceed`), so nothing leaves the machine once the
cancellation is recorded.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any

import redis

from codeworker import logs
from codeworker.coordination.keys import Keys
from codeworker.coordination.scripts import LuaScript
from codeworker.models import Cancellation

log = logging.getLogger(__name__)

REQUEST_SCRIPT = LuaScript(
    """
-- KEYS[1] the operation's claim record, KEYS[2..] where to record the cancellation
-- ARGV[1] cancellation JSON, ARGV[2] ttl ms
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'finished' then
    return {'finished', redis.call('HGET', KEYS[1], 'result') or 'null', state}
end
for i = 2, #KEYS do
    local existing = redis.call('GET', KEYS[i])
    if existing then return {'already', existing, state or ''} end
end
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]) end
return {'recorded', ARGV[1], state or ''}
"""
)
"""Record a cancellation unless the operation already finished or one is recorded already."""


class OperationCancelled(Exception):
    """The operation was cancelled: the attempt stops, cleans up and records a cancelled result.

    Executors let it pass (it is no ValueError or OSError a tool would turn into a message)."""

    def __init__(self, cancellation: Cancellation) -> None:
        super().__init__(f"cancelled by {cancellation.requested_by} ({cancellation.via})")
        self.cancellation = cancellation


class CancelState(StrEnum):
    """What :meth:`Cancellations.request` did."""

    RECORDED = "recorded"
    ALREADY = "already"
    """A cancellation was recorded before (``cancellation`` is that one)."""
    FINISHED = "finished"
    """The operation had already ended: nothing to cancel (``result`` is its result)."""


@dataclass(frozen=True)
class CancelRequest:
    state: CancelState
    cancellation: Cancellation | None = None
    result: dict[str, Any] | None = None
    claim: str = ""
    """The claim record's state when it was recorded: ``running``, ``abandoned`` or '' (none yet:
    queued, or an unknown id)."""


class Cancellations:
    """Recording and finding cancellations (``ttl``: how long one is kept, the results' life)."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl: float) -> None:
        self.client = client
        self.keys = keys
        self.ttl = ttl

    def request(
        self, cancellation: Cancellation, operation_id: str | None = None, task_id: str | None = None
    ) -> CancelRequest:
        """Record ``cancellation`` of an operation (by its id) or of a Celery task (by its id, as a
        revoke knows it), unless it already finished."""
        if operation_id:
            keys = self.keys.cancellations(operation_id, task_id)
            record = self.keys.claim(operation_id)
        elif task_id:
            keys = [self.keys.task_cancellation(task_id)]
            # A job sent without an operation id runs under its task id.
            record = self.keys.claim(task_id)
        else:
            raise ValueError("a cancellation needs an operation id or a task id")
        state, payload, claim = REQUEST_SCRIPT(
            keys=[record, *keys],
            args=[cancellation.model_dump_json(), max(1, int(self.ttl * 1000))],
            client=self.client,
        )
        if state == CancelState.FINISHED:
            return CancelRequest(CancelState.FINISHED, result=json.loads(payload), claim=claim)
        return CancelRequest(CancelState(state), Cancellation.model_validate_json(payload), claim=claim)

    def find(self, operation_id: str, task_id: str | None = None) -> Cancellation | None:
        """The cancellation recorded for the operation or its task, if any."""
        found = next(
            (raw for raw in self.client.mget(self.keys.cancellations(operation_id, task_id)) if raw), None
        )
        return Cancellation.model_validate_json(found) if found else None


def cancellation_now(requested_by: str, via: str) -> Cancellation:
    return Cancellation(requested_by=requested_by, via=via, requested_at=time.time())


class CancelSignal:
    """One attempt's word that its operation was cancelled. Set by :class:`CancelWatch` (or by a
    check in Redis before the push); read by the run and its workspace; when set, it kills the
    commands registered with :meth:`killing`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kills: list[Callable[[], None]] = []
        self.cancellation: Cancellation | None = None

    def set(self, cancellation: Cancellation) -> None:
        with self._lock:
            if self.cancellation is not None:
                return
            self.cancellation = cancellation
            kills = list(self._kills)
        for kill in kills:
            kill()

    def raise_if_set(self) -> None:
        if self.cancellation is not None:
            raise OperationCancelled(self.cancellation)

    @contextmanager
    def killing(self, kill: Callable[[], None]) -> Iterator[None]:
        """While inside, a cancellation calls ``kill`` (at once if it came already)."""
        with self._lock:
            self._kills.append(kill)
            cancelled = self.cancellation is not None
        if cancelled:
            kill()
        try:
            yield
        finally:
            with self._lock:
                self._kills.remove(kill)


class CancelWatch:
    """A daemon thread that asks Redis every ``interval`` seconds whether the operation was
    cancelled, and sets ``signal`` when it was. A Redis error is logged and asked again."""

    def __init__(
        self,
        cancellations: Cancellations,
        operation_id: str,
        task_id: str | None,
        signal: CancelSignal,
        interval: float,
    ) -> None:
        if interval <= 0:
            raise ValueError("cancel poll interval must be positive")
        self.cancellations = cancellations
        self.operation_id = operation_id
        self.task_id = task_id
        self.signal = signal
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cancel-watch-{operation_id}", daemon=True)

    def __enter__(self) -> CancelWatch:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with logs.bound_operation(self.operation_id):
            self._watch()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                found = self.cancellations.find(self.operation_id, self.task_id)
            except redis.RedisError:
                log.warning(
                    "looking for a cancellation of %s failed; retrying", self.operation_id, exc_info=True
                )
                continue
            if found is not None:
                log.warning(
                    "operation cancelled by %s (%s); stopping",
                    found.requested_by,
                    found.via,
                    extra={"lifecycle": "cancelling"},
                )
                self.signal.set(found)
                return
