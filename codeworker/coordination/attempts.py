"""Attempts: every run of an operation holds its claim under a token of its own, and every write it
makes to shared state in Redis is conditional on still holding it.

The condition is checked in the same Lua step as the write (:class:`GuardedScript`), so an attempt
that was superseded (its heartbeat lapsed and another attempt claimed the operation) cannot change
the live attempt's branch record or take its locks back, however late it wakes up. Callers that
are no attempt (an operator's command, the webhook) pass no :class:`Attempt` and write
unconditionally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from codeworker.coordination.scripts import LuaScript


@dataclass(frozen=True)
class Attempt:
    """One attempt of one operation: the owner token it claimed the operation with."""

    operation_id: str
    owner: str
    claim_key: str
    """The operation's claim record (:meth:`Keys.claim`), where the guard reads the owner."""

    @property
    def token(self) -> str:
        return attempt_token(self.owner)


def attempt_token(owner: str) -> str:
    """A short name of the attempt holding a claim as ``owner`` (whose last part is a random hex
    id), unique enough to name its worktree, its local branch and its journal entry."""
    return owner.rsplit(":", 1)[-1][:12]


class ClaimLost(Exception):
    """Another attempt took the operation over (or the record expired); ours must not write."""

    def __init__(self, operation_id: str, owner: str, what: str = "its result") -> None:
        super().__init__(f"operation {operation_id} is no longer claimed by {owner}; {what} not written")
        self.operation_id = operation_id
        self.owner = owner


ATTEMPT_GUARD = """
-- The guard, taken off the front of KEYS and ARGV so the script below reads its own from 1:
-- the operation's claim record, and the attempt's owner token ('' when the caller is no attempt).
local guard_key = table.remove(KEYS, 1)
local guard_owner = table.remove(ARGV, 1)
if guard_owner ~= '' and (redis.call('HGET', guard_key, 'owner') ~= guard_owner
        or redis.call('HGET', guard_key, 'state') ~= 'running') then
    return {'superseded'}
end
"""
"""Lua run before every guarded script: answer ``{'superseded'}`` unless the attempt holds the
running claim."""


class GuardedScript:
    """A Lua script that runs only while ``attempt`` holds its operation's running claim; raises
    :class:`ClaimLost` otherwise. Without an attempt it runs unconditionally."""

    def __init__(self, source: str) -> None:
        self.script = LuaScript(ATTEMPT_GUARD + source)

    def __call__(
        self,
        *,
        attempt: Attempt | None,
        what: str,
        keys: Sequence[Any],
        args: Sequence[Any],
        client: redis.Redis,
    ) -> Any:
        """``what`` names the write for the error (``"the branch record"``)."""
        # Without an attempt the guard key is never read; any key of the call will do.
        guard = [attempt.claim_key if attempt else keys[0]]
        reply = self.script(
            keys=[*guard, *keys], args=[attempt.owner if attempt else "", *args], client=client
        )
        if isinstance(reply, list) and reply and reply[0] == "superseded":
            assert attempt is not None
            raise ClaimLost(attempt.operation_id, attempt.owner, what)
        return reply
