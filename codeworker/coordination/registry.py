"""The branch registry: every branch codeworker creates, its owner and where it is in its life.

A record is a hash at :meth:`Keys.branch`; its key is also a member of the index sets of its
repository, of its status and of all branches, so operators can list by repository and status
without scanning. Status changes follow :data:`TRANSITIONS` and happen in one Lua step that
compares the current status, so two workers (or a worker and a shutdown hook) racing to move the
same branch cannot both win. The allowed sources are computed here in Python from the state
machine; the script only compares. A job's writes carry its :class:`Attempt` and happen only while
it holds the operation's claim (:mod:`codeworker.coordination.attempts`): a superseded attempt
cannot change the record of the attempt that replaced it.

Values are stored as strings: lists as JSON, numbers as decimal text, None as an absent field.
Timestamps are float epoch seconds.
"""

from __future__ import annotations

import builtins
import json
import time
from enum import StrEnum
from functools import cache
from typing import Any

import redis
from pydantic import BaseModel, Field, TypeAdapter

from codeworker.coordination.attempts import Attempt, GuardedScript
from codeworker.coordination.keys import Keys
from codeworker.coordination.scripts import LuaScript


class BranchStatus(StrEnum):
    ACTIVE = "active"
    PUSHED = "pushed"
    PR_OPEN = "pr_open"
    REVISING = "revising"
    MERGING = "merging"
    MERGED = "merged"
    CLOSED = "closed"
    FAILED = "failed"
    ABANDONED = "abandoned"
    CANCELLED = "cancelled"


LIVE_STATUSES = frozenset(
    {BranchStatus.ACTIVE, BranchStatus.PUSHED, BranchStatus.PR_OPEN, BranchStatus.MERGING}
)
"""Statuses from which a branch can still fail or be abandoned."""

_FORWARD: dict[BranchStatus, frozenset[BranchStatus]] = {
    BranchStatus.ACTIVE: frozenset({BranchStatus.PUSHED}),
    BranchStatus.PUSHED: frozenset({BranchStatus.PR_OPEN, BranchStatus.MERGING}),
    BranchStatus.PR_OPEN: frozenset({BranchStatus.MERGED, BranchStatus.CLOSED, BranchStatus.REVISING}),
    BranchStatus.MERGING: frozenset({BranchStatus.MERGED}),
    # A revision (codeworker.follow_up) ends back at pr_open whatever happened to it: the pull
    # request stays open and the next comment can ask again.
    BranchStatus.REVISING: frozenset({BranchStatus.PR_OPEN, BranchStatus.MERGED, BranchStatus.CLOSED}),
}

TRANSITIONS: dict[BranchStatus, frozenset[BranchStatus]] = {
    status: _FORWARD.get(status, frozenset())
    | (
        frozenset({BranchStatus.FAILED, BranchStatus.ABANDONED, BranchStatus.CANCELLED})
        if status in LIVE_STATUSES
        else frozenset()
    )
    for status in BranchStatus
}
"""Status -> statuses it may move to: the happy path, plus failed, abandoned or cancelled from any
live status."""


def sources_of(to: BranchStatus) -> list[BranchStatus]:
    """Statuses from which a branch may move to ``to``."""
    return [status for status in BranchStatus if to in TRANSITIONS[status]]


REGISTER_SCRIPT = GuardedScript(
    """
-- KEYS[1] record, KEYS[2] repo index, KEYS[3] all index, KEYS[4] active index,
-- KEYS[5] operation -> record hash, KEYS[6..] every status index (to leave the old one on a reset)
-- ARGV[1] operation id, ARGV[2..] field, value pairs of the new record
local existing = redis.call('HGET', KEYS[1], 'operation_id')
if existing and existing ~= ARGV[1] then
    return {'exists', existing, redis.call('HGET', KEYS[1], 'status') or ''}
end
local created_at = redis.call('HGET', KEYS[1], 'created_at')
for i = 6, #KEYS do
    redis.call('SREM', KEYS[i], KEYS[1])
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if created_at then
    redis.call('HSET', KEYS[1], 'created_at', created_at)
end
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('SADD', KEYS[3], KEYS[1])
redis.call('SADD', KEYS[4], KEYS[1])
redis.call('HSET', KEYS[5], ARGV[1], KEYS[1])
local reply = {'ok'}
for _, item in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(reply, item) end
return reply
"""
)
"""Create the record, or reset it when the same operation registers again after a crash."""

TRANSITION_SCRIPT = GuardedScript(
    """
-- KEYS[1] record, KEYS[2] index of the new status, KEYS[3..] indexes of the allowed sources
-- ARGV[1] new status, ARGV[2] JSON list of allowed sources (aligned with KEYS[3..]),
-- ARGV[3] JSON object of fields to set, ARGV[4] JSON list of fields to delete
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {'unknown'} end
local from = nil
for i, source in ipairs(cjson.decode(ARGV[2])) do
    if source == current then from = i end
end
if not from then return {'invalid', current} end
redis.call('SREM', KEYS[2 + from], KEYS[1])
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for field, value in pairs(cjson.decode(ARGV[3])) do redis.call('HSET', KEYS[1], field, value) end
for _, field in ipairs(cjson.decode(ARGV[4])) do redis.call('HDEL', KEYS[1], field) end
local reply = {'ok'}
for _, item in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(reply, item) end
return reply
"""
)
"""Move a record to a new status if its current status is one of the allowed sources."""

UPDATE_SCRIPT = GuardedScript(
    """
-- KEYS[1] record; ARGV[1] JSON object of fields to set, ARGV[2] JSON list of fields to delete
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
for field, value in pairs(cjson.decode(ARGV[1])) do redis.call('HSET', KEYS[1], field, value) end
for _, field in ipairs(cjson.decode(ARGV[2])) do redis.call('HDEL', KEYS[1], field) end
local reply = {'ok'}
for _, item in ipairs(redis.call('HGETALL', KEYS[1])) do table.insert(reply, item) end
return reply
"""
)
"""Change non-status fields of an existing record."""

COUNT_SCRIPT = LuaScript(
    """
-- KEYS[1] record; ARGV[1] counter field, ARGV[2] increment
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
"""
)
"""Add to a counter of an existing record (never creating a record of one field)."""

REVISION_NUMBER_SCRIPT = LuaScript(
    """
-- KEYS[1] record, KEYS[2] the task's revision number; ARGV[1] its TTL, ARGV[2] 1 if there is a task
if ARGV[2] == '1' then
    local known = redis.call('GET', KEYS[2])
    if known then return known end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local number = redis.call('HINCRBY', KEYS[1], 'revision_requests', 1)
if ARGV[2] == '1' then redis.call('SET', KEYS[2], number, 'EX', ARGV[1]) end
return number
"""
)
"""Hand out the next revision number of a branch, once per Celery task."""

COUNTERS = frozenset({"revision_requests", "ci_follow_ups"})
"""Record fields that :meth:`BranchRegistry.count` may add to."""


class RegistryError(Exception):
    """Base of every branch registry failure."""


class BranchExists(RegistryError):
    """The branch is registered to another operation."""

    def __init__(self, repo: str, branch: str, operation_id: str, status: str) -> None:
        super().__init__(f"branch {branch} of {repo} belongs to operation {operation_id} ({status})")
        self.repo = repo
        self.branch = branch
        self.operation_id = operation_id
        self.status = status


class UnknownBranch(RegistryError):
    """No record for this branch."""

    def __init__(self, repo: str, branch: str) -> None:
        super().__init__(f"branch {branch} of {repo} is not registered")
        self.repo = repo
        self.branch = branch


class InvalidTransition(RegistryError):
    """The state machine does not allow this status change."""

    def __init__(self, from_status: BranchStatus | str, to_status: BranchStatus | str) -> None:
        super().__init__(f"cannot move a branch from {from_status} to {to_status}")
        self.from_status = from_status
        self.to_status = to_status


class BranchRecord(BaseModel):
    """One branch codeworker created."""

    repository: str
    """Repository URL as the job gave it."""
    repo: str
    """Repository id (``keys.repo_id(repository)``)."""
    branch: str
    operation_id: str
    operation_type: str
    files: list[str] = Field(default_factory=list)
    """Files the operation locked or modified."""
    status: BranchStatus = BranchStatus.ACTIVE
    created_at: float = 0.0
    """Epoch seconds of the first registration."""
    updated_at: float = 0.0
    """Epoch seconds of the last change."""
    pr_number: int | None = None
    pr_url: str | None = None
    fencing_token: int | None = None
    error: str | None = None
    job: str | None = None
    """The operation's job as it ran (JSON), so a follow-up can run it again with new instructions."""
    head: str | None = None
    """The last commit codeworker pushed to the branch (a failing check on it triggers a follow-up)."""
    revisions: int = 0
    """Follow-ups that ended (pushed or not); ``revision_requests`` counts those asked for."""
    revision_requests: int = 0
    """Follow-up numbers handed out: the next one is ``{operation_id}.r{revision_requests + 1}``."""
    revising: str | None = None
    """The operation id of the revision running now (status revising)."""
    ci_follow_ups: int = 0
    """Follow-ups that failing checks started (capped by CODEWORKER_MAX_CI_FOLLOW_UPS)."""
    cost_usd: float = 0.0
    """Model cost of the operation and all its revisions (capped by CODEWORKER_PR_BUDGET_USD)."""
    progress_comment: int | None = None
    """The one PR comment codeworker edits as revisions run."""

    @classmethod
    def new(cls, **fields: Any) -> BranchRecord:
        """A record for a branch just created: active, stamped now (``register`` stamps it again)."""
        now = time.time()
        return cls.model_validate(
            {"status": BranchStatus.ACTIVE, "created_at": now, "updated_at": now, **fields}
        )


IDENTITY_FIELDS = frozenset({"repository", "repo", "branch", "operation_id", "status", "created_at"})
"""Fields that ``update`` and ``transition`` may not change."""


@cache
def _adapter(field: str) -> TypeAdapter[Any]:
    return TypeAdapter(BranchRecord.model_fields[field].annotation)


def _encode(value: Any) -> str:
    if isinstance(value, builtins.list):
        return json.dumps(value)
    return str(value)


def _decode(flat: builtins.list[Any]) -> BranchRecord:
    """A record from HGETALL as a flat ``field, value, ...`` list."""
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    fields["files"] = json.loads(fields.get("files", "[]"))
    return BranchRecord.model_validate(fields)


class BranchRegistry:
    """Branch records in Redis, their status state machine and the indexes to list them."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def register(self, record: BranchRecord, attempt: Attempt | None = None) -> BranchRecord:
        """Store a new record in status active.

        The same operation registering again (a re-run after a crash) resets its record to active
        and keeps ``created_at``; a branch of another operation raises :class:`BranchExists`.
        """
        now = time.time()
        fresh = record.model_copy(
            update={"status": BranchStatus.ACTIVE, "created_at": now, "updated_at": now}
        )
        key = self.keys.branch(fresh.repo, fresh.branch)
        pairs = [
            item
            for field, value in fresh.model_dump(mode="json").items()
            if value is not None
            for item in (field, _encode(value))
        ]
        reply = REGISTER_SCRIPT(
            attempt=attempt,
            what=f"branch record {fresh.branch}",
            keys=[
                key,
                self.keys.branches_by_repo(fresh.repo),
                self.keys.all_branches(),
                self.keys.branches_by_status(BranchStatus.ACTIVE),
                self.keys.operation_branches(),
                *(self.keys.branches_by_status(status) for status in BranchStatus),
            ],
            args=[fresh.operation_id, *pairs],
            client=self.client,
        )
        if reply[0] == "exists":
            raise BranchExists(fresh.repo, fresh.branch, reply[1], reply[2])
        return _decode(reply[1:])

    def transition(
        self, repo: str, branch: str, to: BranchStatus, attempt: Attempt | None = None, **fields: Any
    ) -> BranchRecord:
        """Move a branch to status ``to`` if the state machine allows it, setting ``fields`` too;
        only while ``attempt`` (when given) holds its claim."""
        to = BranchStatus(to)
        sources = sources_of(to)
        set_fields, delete_fields = self._changes(fields)
        key = self.keys.branch(repo, branch)
        reply = TRANSITION_SCRIPT(
            attempt=attempt,
            what=f"branch record {branch}",
            keys=[
                key,
                self.keys.branches_by_status(to),
                *(self.keys.branches_by_status(source) for source in sources),
            ],
            args=[
                to.value,
                json.dumps([s.value for s in sources]),
                json.dumps(set_fields),
                json.dumps(delete_fields),
            ],
            client=self.client,
        )
        outcome = reply[0]
        if outcome == "unknown":
            raise UnknownBranch(repo, branch)
        if outcome == "invalid":
            raise InvalidTransition(BranchStatus(reply[1]), to)
        return _decode(reply[1:])

    def update(self, repo: str, branch: str, attempt: Attempt | None = None, **fields: Any) -> BranchRecord:
        """Change fields other than the status and identity (fencing_token, pr_number, files...);
        only while ``attempt`` (when given) holds its claim."""
        set_fields, delete_fields = self._changes(fields)
        reply = UPDATE_SCRIPT(
            attempt=attempt,
            what=f"branch record {branch}",
            keys=[self.keys.branch(repo, branch)],
            args=[json.dumps(set_fields), json.dumps(delete_fields)],
            client=self.client,
        )
        if reply[0] == "unknown":
            raise UnknownBranch(repo, branch)
        return _decode(reply[1:])

    def count(self, repo: str, branch: str, field: str, by: int = 1) -> int:
        """Add ``by`` to counter ``field`` of an existing record (HINCRBY: two callers never get
        the same number); the new value. A record deleted meanwhile raises :class:`UnknownBranch`."""
        if field not in COUNTERS:
            raise ValueError(f"{field} is not a counter of the branch record")
        reply = COUNT_SCRIPT(
            keys=[self.keys.branch(repo, branch)],
            args=[field, by],
            client=self.client,
        )
        if reply is None:
            raise UnknownBranch(repo, branch)
        return int(reply)

    def revision_number(self, repo: str, branch: str, task_id: str | None, ttl: float) -> int:
        """The revision number of the follow-up carried by Celery task ``task_id``: handed out
        (``revision_requests`` + 1) the first time, the same one for every later delivery of it."""
        reply = REVISION_NUMBER_SCRIPT(
            keys=[self.keys.branch(repo, branch), self.keys.revision_of_task(task_id or "")],
            args=[int(ttl), 1 if task_id else 0],
            client=self.client,
        )
        if reply is None:
            raise UnknownBranch(repo, branch)
        return int(reply)

    def of_operation(self, operation_id: str) -> BranchRecord | None:
        """The branch record of operation ``operation_id`` (None: it registered no branch)."""
        key = self.client.hget(self.keys.operation_branches(), operation_id)
        found = self._hgetall([key]) if key else []
        return found[0] if found and found[0].operation_id == operation_id else None

    def of_pull_request(self, repo: str, number: int) -> BranchRecord | None:
        """The record of the pull request ``number`` of ``repo``, if codeworker opened it."""
        return next((r for r in self.list(repo=repo) if r.pr_number == number), None)

    def get(self, repo: str, branch: str) -> BranchRecord | None:
        flat = self._hgetall([self.keys.branch(repo, branch)])
        return flat[0] if flat else None

    def list(
        self, repo: str | None = None, status: BranchStatus | None = None
    ) -> builtins.list[BranchRecord]:
        """Records of one repository, in one status, or both (oldest first)."""
        indexes = []
        if repo is not None:
            indexes.append(self.keys.branches_by_repo(repo))
        if status is not None:
            indexes.append(self.keys.branches_by_status(BranchStatus(status)))
        if not indexes:
            indexes.append(self.keys.all_branches())
        members = self.client.sinter(indexes)
        records = self._hgetall(sorted(members))
        return sorted(records, key=lambda record: (record.created_at, record.repo, record.branch))

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _changes(fields: dict[str, Any]) -> tuple[dict[str, str], builtins.list[str]]:
        """Validated fields to set (with ``updated_at``) and the fields set to None to delete."""
        refused = [
            name for name in fields if name in IDENTITY_FIELDS or name not in BranchRecord.model_fields
        ]
        if refused:
            raise ValueError(f"cannot set branch record field(s): {', '.join(sorted(refused))}")
        set_fields = {"updated_at": _encode(time.time())}
        delete_fields = []
        for name, value in fields.items():
            checked = _adapter(name).validate_python(value)
            if checked is None:
                delete_fields.append(name)
            else:
                set_fields[name] = _encode(_adapter(name).dump_python(checked, mode="json"))
        return set_fields, delete_fields

    def _hgetall(self, keys: builtins.list[str]) -> builtins.list[BranchRecord]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        records = []
        for fields in pipe.execute():
            if fields:  # an index may outlive a record deleted by hand
                records.append(_decode([item for pair in fields.items() for item in pair]))
        return records
