"""The idempotency record of an operation, so a redelivered job is neither lost nor run twice.

The record is a hash at :meth:`Keys.claim` (state running / finished / abandoned, the owner token
of the attempt that claimed it, the result JSON once finished); who is alive is a separate string
at :meth:`Keys.heartbeat` holding the owner token with a PX TTL that the watchdog extends.

Ownership lives in the record: only :meth:`OperationClaims.claim` changes the owner, and it does
so only when the heartbeat has expired. So an attempt whose heartbeat lapsed (a long GC pause, a
Redis blip) but that nobody took over is still the owner, and its next heartbeat re-arms the
lease; an attempt that was taken over gets False from :meth:`~OperationClaims.heartbeat` and
:class:`ClaimLost` from :meth:`~OperationClaims.finish`.

An attempt whose branch reached the remote records a checkpoint (``pushed``) on the record, which
the next claim hands back: an attempt after a worker that died between its push and its pull
request delivers that push rather than pushing again (:mod:`codeworker.pipeline.checkpoint`).

A record without a finished result expires ``result_ttl`` after its last heartbeat, a finished
one ``result_ttl`` after it finished: nothing is kept forever.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from codeworker.coordination.attempts import Attempt, ClaimLost
from codeworker.coordination.keys import Keys
from codeworker.coordination.scripts import LuaScript
from codeworker.models import Cancellation

RUNNING = "running"
FINISHED = "finished"
ABANDONED = "abandoned"
"""States stored in the record."""

CLAIM_SCRIPT = LuaScript(
    """
-- KEYS[1] record, KEYS[2] heartbeat, KEYS[3..] where a cancellation of it would be
-- ARGV[1] new owner, ARGV[2] heartbeat ttl ms, ARGV[3] record ttl ms, ARGV[4] now, ARGV[5] operation id
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'finished' then
    local result = redis.call('HGET', KEYS[1], 'result') or 'null'
    -- A branch pushed whose pull request failed is completed by the next send: it resumes from the
    -- checkpoint (opens the PR, pushes nothing). Any other result is final.
    local ok, decoded = pcall(cjson.decode, result)
    local pushed_only = ok and type(decoded) == 'table' and decoded['status'] == 'pushed'
    if not (pushed_only and redis.call('HEXISTS', KEYS[1], 'pushed') == 1) then
        return {'finished', result}
    end
    state = 'resumable'
end
local holder = redis.call('GET', KEYS[2])
if holder then
    local waits = 0
    if state then waits = redis.call('HINCRBY', KEYS[1], 'busy_waits', 1) end
    return {'busy', holder, redis.call('PTTL', KEYS[2]), waits}
end
local stalled = 0
if state == 'running' then
    -- the owner's heartbeat ran out without a result: its worker died
    redis.call('HINCRBY', KEYS[1], 'stalls', 1)
    stalled = 1
end
redis.call('HSET', KEYS[1], 'operation_id', ARGV[5], 'state', 'running', 'owner', ARGV[1],
           'claimed_at', ARGV[4])
redis.call('HDEL', KEYS[1], 'result', 'finished_at')
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local counts = redis.call('HMGET', KEYS[1], 'stalls', 'deferrals', 'pushed', 'lock_waits', 'lock_wait_since')
local cancelled = ''
for i = 3, #KEYS do cancelled = cancelled ~= '' and cancelled or redis.call('GET', KEYS[i]) or '' end
return {'claimed', stalled, counts[1] or '0', counts[2] or '0', counts[3] or '', cancelled,
        counts[4] or '0', counts[5] or ''}
"""
)
"""Answer the stored result, or who is busy with it (counting the wait), or take it for ARGV[1]
(counting a stall when the previous owner's heartbeat ran out while it was running), with the
checkpoint an earlier attempt left when its branch reached the remote and the cancellation
recorded for it, if any, and how often and since when it has waited for files another operation
held. A finished operation whose result is ``pushed`` (the pull request
failed) and that has a checkpoint is taken again: sending it once more completes it."""

PROCEED_SCRIPT = LuaScript(
    """
-- KEYS[1] record, KEYS[2] heartbeat, KEYS[3..] where a cancellation of it would be
-- ARGV[1] owner, ARGV[2] heartbeat ttl ms, ARGV[3] record ttl ms, ARGV[4] checkpoint JSON or ''
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
    return {'lost'}
end
for i = 3, #KEYS do
    local cancelled = redis.call('GET', KEYS[i])
    if cancelled then return {'cancelled', cancelled} end
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'pushed', ARGV[4]) end
return {'proceed'}
"""
)
"""Let a running claim that is still ours and was not cancelled go on (renewing its lease), and
record, when it is about to push, the checkpoint of what it pushes."""

HEARTBEAT_SCRIPT = LuaScript(
    """
-- KEYS[1] record, KEYS[2] heartbeat; ARGV[1] owner, ARGV[2] heartbeat ttl ms, ARGV[3] record ttl ms
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
    return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)
"""Extend the lease of a running claim if it is still ours."""

SETTLE_SCRIPT = LuaScript(
    """
-- KEYS[1] record, KEYS[2] heartbeat
-- ARGV[1] owner, ARGV[2] new state, ARGV[3] result JSON or '', ARGV[4] record ttl ms, ARGV[5] now,
-- ARGV[6] counter to increment ('stalls', 'deferrals', 'lock_waits') or ''
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
    return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'finished_at', ARGV[5])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
if ARGV[6] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[6], 1) end
if ARGV[6] == 'lock_waits' then redis.call('HSETNX', KEYS[1], 'lock_wait_since', ARGV[5]) end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""
)
"""End a running claim that is still ours (finished with a result, or abandoned, counting why; a
wait for locks also records when the operation's waiting began, if it was not waiting already)."""


class ClaimState(StrEnum):
    """What :meth:`OperationClaims.claim` found."""

    CLAIMED = "claimed"
    """Ours to run: ``owner`` is our token."""
    FINISHED = "finished"
    """Already done: ``result`` is the stored result."""
    BUSY = "busy"
    """Running elsewhere: ``holder`` runs it; try again in ``retry_after`` seconds."""


class Abandoned(StrEnum):
    """Why an attempt gave its claim up without a result; each reason has its own count."""

    STALLED = "stalls"
    """Its process died (killed, out of memory, hard time limit)."""
    DEFERRED = "deferrals"
    """The executor asked to come back later (model API overloaded)."""
    LOCK_WAIT = "lock_waits"
    """Files it needs are locked by another operation; it gave its worker slot back."""
    REQUEUED = ""
    """A shutdown cancelled it; not held against the operation."""


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    owner: str | None = None
    result: dict[str, Any] | None = None
    holder: str | None = None
    retry_after: float = 0.0
    busy_waits: int = 0
    """Deliveries that found the operation running elsewhere (this one included)."""
    stalled: bool = False
    """The previous attempt's worker died while running it (its heartbeat ran out)."""
    stalls: int = 0
    """Attempts whose worker died, over the operation's life."""
    deferrals: int = 0
    """Attempts the executor deferred, over the operation's life."""
    pushed: str | None = None
    """The checkpoint (JSON) an earlier attempt recorded when its branch reached the remote."""
    cancellation: Cancellation | None = None
    """The operation was cancelled before this attempt claimed it: it ends without running."""
    lock_waits: int = 0
    """Attempts that gave their slot back because another operation held files they needed."""
    lock_wait_since: float | None = None
    """When the operation began waiting for locks (wall clock), while it waits; else None."""


class OperationClaims:
    """Claims on operation ids: at most one live attempt per operation, and results kept for reuse."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl: float, result_ttl: float) -> None:
        if ttl <= 0 or result_ttl <= 0:
            raise ValueError("claim ttl and result_ttl must be positive")
        self.client = client
        self.keys = keys
        self.ttl = ttl
        self.result_ttl = result_ttl

    def claim(self, operation_id: str, task_id: str | None = None) -> Claim:
        """Take the operation, or learn that it is finished or that someone else runs it.
        ``task_id``: the Celery task carrying it, whose revoke cancels it too."""
        owner = self._new_owner()
        reply = CLAIM_SCRIPT(
            keys=[*self._keys(operation_id), *self.keys.cancellations(operation_id, task_id)],
            args=[owner, self._ms(self.ttl), self._record_ttl_ms, time.time(), operation_id],
            client=self.client,
        )
        state = ClaimState(reply[0])
        if state is ClaimState.FINISHED:
            return Claim(state, result=json.loads(reply[1]))
        if state is ClaimState.BUSY:
            return Claim(
                state, holder=reply[1], retry_after=max(int(reply[2]), 0) / 1000, busy_waits=int(reply[3])
            )
        return Claim(
            state,
            owner=owner,
            stalled=bool(int(reply[1])),
            stalls=int(reply[2]),
            deferrals=int(reply[3]),
            pushed=reply[4] or None,
            cancellation=Cancellation.model_validate_json(reply[5]) if reply[5] else None,
            lock_waits=int(reply[6]),
            lock_wait_since=float(reply[7]) if reply[7] else None,
        )

    def attempt(self, operation_id: str, owner: str) -> Attempt:
        """The attempt holding the claim as ``owner``, to make shared writes conditional on it."""
        return Attempt(operation_id, owner, self.keys.claim(operation_id))

    def heartbeat(self, operation_id: str, owner: str) -> bool:
        """Extend our lease; False once another attempt took over (what the watchdog calls)."""
        return bool(
            HEARTBEAT_SCRIPT(
                keys=self._keys(operation_id),
                args=[owner, self._ms(self.ttl), self._record_ttl_ms],
                client=self.client,
            )
        )

    def proceed(
        self, attempt: Attempt, task_id: str | None, pushed: str | None = None
    ) -> Cancellation | None:
        """Ask, in one Redis step, whether ``attempt`` may send something off the machine: it still
        holds the claim (else :class:`ClaimLost`) and the operation was not cancelled (else the
        cancellation). ``pushed``: the checkpoint of the push it is about to make, recorded in the
        same step, so an attempt after it that finds the remote branch at that commit delivers it
        instead of running the job again."""
        reply = PROCEED_SCRIPT(
            keys=[
                *self._keys(attempt.operation_id),
                *self.keys.cancellations(attempt.operation_id, task_id),
            ],
            args=[attempt.owner, self._ms(self.ttl), self._record_ttl_ms, pushed or ""],
            client=self.client,
        )
        if reply[0] == "lost":
            raise ClaimLost(attempt.operation_id, attempt.owner, "its push" if pushed else "its delivery")
        return Cancellation.model_validate_json(reply[1]) if reply[0] == "cancelled" else None

    def finish(self, operation_id: str, owner: str, result: dict[str, Any]) -> None:
        """Store the result so redeliveries return it; :class:`ClaimLost` if no longer ours."""
        if not self._settle(operation_id, owner, FINISHED, json.dumps(result)):
            raise ClaimLost(operation_id, owner)

    def abandon(self, operation_id: str, owner: str, why: Abandoned = Abandoned.REQUEUED) -> None:
        """Give up without a result, so the next delivery runs at once, counting ``why``.

        Does nothing if the claim is no longer ours: it runs on failure and shutdown paths, where
        raising would hide the error that led here, and someone else's claim must stay.
        """
        self._settle(operation_id, owner, ABANDONED, "", why)

    def locks_taken(self, operation_id: str) -> None:
        """The operation's wait for locks is over: a later wait counts from its own start."""
        self.client.hdel(self.keys.claim(operation_id), "lock_wait_since")

    def get(self, operation_id: str) -> dict[str, Any] | None:
        """The record as an operator sees it (``codeworker status``), or None."""
        record_key, beat_key = self._keys(operation_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(record_key)
        pipe.pttl(record_key)
        pipe.pttl(beat_key)
        fields, record_pttl, beat_pttl = pipe.execute()
        if not fields:
            return None
        record: dict[str, Any] = dict(fields)
        if "result" in record:
            record["result"] = json.loads(record["result"])
        for name in ("claimed_at", "finished_at", "lock_wait_since"):
            if name in record:
                record[name] = float(record[name])
        for name in ("attempts", "stalls", "deferrals", "busy_waits", "lock_waits"):
            if name in record:
                record[name] = int(record[name])
        record["expires_in"] = record_pttl / 1000 if record_pttl >= 0 else None
        record["heartbeat_ttl"] = beat_pttl / 1000 if beat_pttl >= 0 else None
        return record

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _new_owner() -> str:
        """Unique per attempt, and says which worker process it is for operators."""
        return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, int(seconds * 1000))

    @property
    def _record_ttl_ms(self) -> int:
        return self._ms(max(self.result_ttl, self.ttl))

    def _keys(self, operation_id: str) -> list[str]:
        return [self.keys.claim(operation_id), self.keys.heartbeat(operation_id)]

    def _settle(
        self, operation_id: str, owner: str, state: str, result: str, why: Abandoned = Abandoned.REQUEUED
    ) -> bool:
        return bool(
            SETTLE_SCRIPT(
                keys=self._keys(operation_id),
                args=[owner, state, result, self._ms(self.result_ttl), time.time(), why.value],
                client=self.client,
            )
        )
