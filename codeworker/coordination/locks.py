"""File locks in Redis, so two operations never edit the same file of a repository at once.

A lock is a hash at :meth:`Keys.lock` holding the owner token, the operation id, the repo and the
path, with a PX TTL: a worker that dies leaks nothing for longer than one TTL. The owner token is
unique per attempt (``{operation_id}:{hex}``) so the re-run of a crashed operation never mistakes
the stale lock of its previous attempt for its own: it takes that lock over (a new owner, a new
fencing token), and the previous attempt, if it still runs, finds the lock lost. Every compare is
exact on that token.

Acquisition of all the files of a job is one Lua step (all or none) that also hands out a fencing
token from the repository's counter; release is one step too, whatever the number of files. A
release publishes on the repository's channel (:meth:`Keys.released`), so a job waiting for a lock
tries again the moment it is freed rather than on a polling tick; a lock that expires (its holder
died) publishes nothing, so the waiter also tries again when the conflicting lock's TTL runs out.

A :class:`~codeworker.coordination.watchdog.LockWatchdog` renews the locks every TTL/3; a job
whose lock was lost (expired, or taken by someone else after expiry) sees it through
:meth:`FileLocks.verify` and stops before it pushes.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from codeworker.coordination.attempts import Attempt, GuardedScript
from codeworker.coordination.keys import Keys
from codeworker.coordination.scripts import LuaScript
from codeworker.names import relative_path

log = logging.getLogger(__name__)

ACQUIRE_SCRIPT = GuardedScript(
    """
-- KEYS[1] fence counter, KEYS[2..] lock keys
-- ARGV[1] owner, ARGV[2] ttl ms, ARGV[3] operation id, ARGV[4] repo, ARGV[5..] paths
local owner = ARGV[1]
for i = 2, #KEYS do
    local current = redis.call('HGET', KEYS[i], 'owner')
    if current and current ~= owner and redis.call('HGET', KEYS[i], 'operation_id') ~= ARGV[3] then
        return {0, i - 1, current, redis.call('PTTL', KEYS[i])}
    end
end
for i = 2, #KEYS do
    redis.call('HSET', KEYS[i], 'owner', owner, 'operation_id', ARGV[3], 'repo', ARGV[4],
               'path', ARGV[i + 3])
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return {1, redis.call('INCR', KEYS[1])}
"""
)
"""Take every lock or none; answer ``{1, token}`` or ``{0, index of the conflict, its owner, its
TTL in ms}``.

A lock held by an earlier attempt of the same operation is taken over rather than waited for: only
the attempt holding the operation's claim acquires locks (the guard checks it in the same step), so
the earlier one is dead or superseded, and its watchdog finds the lock gone before it could push."""

RENEW_SCRIPT = LuaScript(
    """
-- KEYS lock keys; ARGV[1] owner, ARGV[2] ttl ms
local lost = {}
for i = 1, #KEYS do
    if redis.call('HGET', KEYS[i], 'owner') == ARGV[1] then
        redis.call('PEXPIRE', KEYS[i], ARGV[2])
    else
        table.insert(lost, i)
    end
end
return lost
"""
)
"""Extend the locks still ours; answer the 1-based indexes of those that are not."""

RELEASE_SCRIPT = LuaScript(
    """
-- KEYS lock keys; ARGV[1] owner, ARGV[2] the repository's release channel
local released = 0
for i = 1, #KEYS do
    if redis.call('HGET', KEYS[i], 'owner') == ARGV[1] then
        redis.call('DEL', KEYS[i])
        released = released + 1
    end
end
if released > 0 then redis.call('PUBLISH', ARGV[2], released) end
return released
"""
)
"""Delete only the locks whose owner is ours, waking whoever waits for a lock of the repository;
answer how many were deleted."""


class LockError(Exception):
    """Base of every lock failure."""


class LockHeld(LockError):
    """Another operation holds a file we need."""

    def __init__(self, path: str, holder: str, expires_in: float | None = None) -> None:
        super().__init__(f"{path} is locked by operation {holder}")
        self.path = path
        self.holder = holder
        self.expires_in = expires_in
        """Seconds until the holder's lock expires unless renewed (None: unknown)."""


class LockLost(LockError):
    """Locks we held expired or were taken over; whatever we wrote must not be pushed."""

    def __init__(self, paths: Sequence[str]) -> None:
        super().__init__(f"lost the lock on {', '.join(paths)}")
        self.paths = list(paths)


@dataclass(frozen=True)
class LockInfo:
    """One lock as an operator sees it (``codeworker locks``)."""

    repo: str
    path: str
    holder: str
    """Operation id of the holder."""
    owner: str
    """The holder's per-attempt owner token."""
    ttl: float | None
    """Seconds until the lock expires unless renewed; None when it has no TTL."""


def holder_of(owner: str) -> str:
    """The operation id part of an owner token."""
    return owner.rsplit(":", 1)[0]


class FileLocks:
    """The locks one attempt of one operation holds on files of one repository.

    Thread-safe: a :class:`~codeworker.coordination.watchdog.LockWatchdog` renews from its own
    thread while the job acquires more.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        repo: str,
        operation_id: str,
        ttl: float,
        adopt: tuple[str, Sequence[str]] | None = None,
        attempt: Attempt | None = None,
    ) -> None:
        """``adopt=(owner, paths)`` takes over the locks of an attempt whose process is gone, so
        another process can release exactly those (and nothing a re-run took since). With an
        ``attempt``, locks are taken only while it holds its operation's claim (:class:`ClaimLost`
        otherwise)."""
        if ttl <= 0:
            raise ValueError("lock ttl must be positive")
        self.client = client
        self.keys = keys
        self.repo = repo
        self.operation_id = operation_id
        self.ttl = ttl
        self.attempt = attempt
        self.owner = adopt[0] if adopt else f"{operation_id}:{uuid.uuid4().hex}"
        self._held: list[str] = [relative_path(path) for path in adopt[1]] if adopt else []
        self._lost: set[str] = set()
        self._token: int | None = None
        self._mutex = threading.RLock()

    # -- public API ---------------------------------------------------------------------------

    @property
    def held(self) -> list[str]:
        """Paths we took and have not released (including any since lost)."""
        with self._mutex:
            return list(self._held)

    @property
    def fencing_token(self) -> int | None:
        """The latest fencing token handed to us."""
        return self._token

    def acquire(self, paths: Sequence[str], wait: float) -> int:
        """Lock every path or none, waiting up to ``wait`` seconds; answer a fencing token.

        Paths we already hold count as free (re-entrant) and get their TTL refreshed. A wait
        listens on the repository's release channel, subscribed before the next try so that no
        release between a try and the wait is missed, and tries again on every release and when
        the conflicting lock would expire.
        """
        wanted = list(dict.fromkeys(relative_path(path) for path in paths))
        conflict = self._try_acquire(wanted)
        if isinstance(conflict, int) or wait <= 0:
            return self._token_or_raise(conflict)
        deadline = time.monotonic() + wait
        with contextlib.closing(self.client.pubsub(ignore_subscribe_messages=True)) as releases:
            releases.subscribe(self.keys.released(self.repo))
            while True:
                conflict = self._try_acquire(wanted)
                remaining = deadline - time.monotonic()
                if isinstance(conflict, int) or remaining <= 0:
                    return self._token_or_raise(conflict)
                expiry = conflict.expires_in if conflict.expires_in is not None else remaining
                # Jitter on the expiry keeps waiters of a dead holder from retrying in lock step.
                timeout = min(remaining, expiry + random.uniform(0, 0.05))  # noqa: S311 (jitter)
                releases.get_message(timeout=max(timeout, 0.001))

    @staticmethod
    def _token_or_raise(outcome: int | LockHeld) -> int:
        if isinstance(outcome, LockHeld):
            raise outcome
        return outcome

    def acquire_one(self, path: str) -> int:
        """Lock one more file while the job runs, without waiting; answer a new fencing token."""
        return self.acquire([path], wait=0)

    def renew(self) -> list[str]:
        """Extend every held lock still ours; answer the paths that were lost."""
        with self._mutex:
            if not self._held:
                return []
            held = list(self._held)
            indexes = RENEW_SCRIPT(
                keys=[self._key(path) for path in held],
                args=[self.owner, self._ttl_ms],
                client=self.client,
            )
            lost = [held[int(index) - 1] for index in indexes]
            self._lost.update(lost)
            return lost

    def verify(self) -> None:
        """Raise :class:`LockLost` unless every held lock is still ours (call right before push)."""
        with self._mutex:
            held = list(self._held)
            owners = self._owners(held)
            lost = [path for path, owner in zip(held, owners, strict=True) if owner != self.owner]
            self._lost.update(lost)
            if self._lost:
                raise LockLost([path for path in held if path in self._lost])

    def release(self) -> None:
        """Delete the locks still ours, leaving any taken over by someone else; idempotent."""
        with self._mutex:
            if self._held:
                RELEASE_SCRIPT(
                    keys=[self._key(path) for path in self._held],
                    args=[self.owner, self.keys.released(self.repo)],
                    client=self.client,
                )
            self._held.clear()
            self._lost.clear()

    # -- Redis calls ----------------------------------------------------------------------------

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    def _key(self, path: str) -> str:
        return self.keys.lock(self.repo, path)

    def _try_acquire(self, paths: list[str]) -> int | LockHeld:
        """One atomic attempt: the fencing token, or the conflict to raise when out of time."""
        with self._mutex:
            reply = ACQUIRE_SCRIPT(
                attempt=self.attempt,
                what=f"the lock on {', '.join(paths)}",
                keys=[self.keys.fence(self.repo), *(self._key(path) for path in paths)],
                args=[self.owner, self._ttl_ms, self.operation_id, self.repo, *paths],
                client=self.client,
            )
            if int(reply[0]) == 0:
                pttl = int(reply[3])
                expires_in = pttl / 1000 if pttl >= 0 else None
                return LockHeld(paths[int(reply[1]) - 1], holder_of(reply[2]), expires_in)
            self._token = int(reply[1])
            for path in paths:
                self._lost.discard(path)
                if path not in self._held:
                    self._held.append(path)
            return self._token

    def _owners(self, paths: list[str]) -> list[str | None]:
        pipe = self.client.pipeline(transaction=True)
        for path in paths:
            pipe.hget(self._key(path), "owner")
        return [None if owner is None else owner for owner in pipe.execute()]

    def __repr__(self) -> str:
        return f"<FileLocks {self.repo} owner={self.owner} held={self.held}>"


def list_locks(client: redis.Redis, keys: Keys) -> list[LockInfo]:
    """Every file lock in Redis, by repo and path (for ``codeworker locks``)."""
    names = list(client.scan_iter(match=keys.lock_pattern(), count=500))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
        pipe.pttl(name)
    replies = pipe.execute()
    infos = []
    for fields, pttl in zip(replies[::2], replies[1::2], strict=True):
        record = dict(fields)
        if "owner" not in record:
            continue  # expired between SCAN and HGETALL
        infos.append(
            LockInfo(
                repo=record.get("repo", ""),
                path=record.get("path", ""),
                holder=record.get("operation_id") or holder_of(record["owner"]),
                owner=record["owner"],
                ttl=pttl / 1000 if pttl >= 0 else None,
            )
        )
    return sorted(infos, key=lambda info: (info.repo, info.path))
