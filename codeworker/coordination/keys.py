"""Every Redis key codeworker writes is built here, so the layout can be read in one place.

    {prefix}:lock:{repo}:{path}          hash    file lock: owner (per-attempt token), operation_id,
                                                 repo, path (PX = lock TTL)
    {prefix}:fence:{repo}                counter fencing tokens handed out per repository
    {prefix}:released:{repo}             channel published to when locks of a repository are released
    {prefix}:op:{operation_id}           hash    idempotency claim: state, owner, result, counts,
                                                 pushed (the checkpoint of a push)
    {prefix}:op:{operation_id}:beat      string  owner of a running claim (PX = claim TTL)
    {prefix}:cancel:op:{operation_id}    string  cancellation (JSON) of an operation
    {prefix}:cancel:task:{task_id}       string  cancellation (JSON) of a Celery task id (revoke)
    {prefix}:branch:{repo}:{branch}      hash    branch registry record
    {prefix}:branches:repo:{repo}        set     branch record keys of one repository
    {prefix}:branches:status:{status}    set     branch record keys in one status
    {prefix}:branches:all                set     every branch record key
    {prefix}:branches:operation          hash    operation id -> its branch record key
    {prefix}:revision:task:{task_id}     string  revision number a follow-up's Celery task got
    {prefix}:delivery:{delivery_id}      string  a GitHub webhook delivery already handled (EX a week)

``repo`` is :func:`repo_id` of the repository URL: host and path, lower-cased, without scheme,
credentials, trailing slash or ``.git``, so that two spellings of one repository share locks.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


def repo_id(url: str) -> str:
    """A stable identifier of a repository URL (``github.com/owner/name``)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.port:
        host = f"{host}:{parts.port}"
    path = parts.path.rstrip("/")
    path = path.removesuffix(".git")
    return f"{host}{path}".lower()


@dataclass(frozen=True)
class Keys:
    """Key builder bound to one prefix."""

    prefix: str = "codeworker"

    def lock(self, repo: str, path: str) -> str:
        return f"{self.prefix}:lock:{repo}:{path}"

    def lock_pattern(self) -> str:
        return f"{self.prefix}:lock:*"

    def fence(self, repo: str) -> str:
        return f"{self.prefix}:fence:{repo}"

    def released(self, repo: str) -> str:
        """Pub/sub channel (not a key) that wakes jobs waiting for a lock of ``repo``."""
        return f"{self.prefix}:released:{repo}"

    def claim(self, operation_id: str) -> str:
        return f"{self.prefix}:op:{operation_id}"

    def heartbeat(self, operation_id: str) -> str:
        return f"{self.prefix}:op:{operation_id}:beat"

    def cancellations(self, operation_id: str, task_id: str | None = None) -> list[str]:
        """Where a cancellation of the operation is recorded: by its id, and by the Celery task id
        of the message that carries it (all a revoke knows)."""
        keys = [self.operation_cancellation(operation_id)]
        if task_id:
            keys.append(self.task_cancellation(task_id))
        return keys

    def operation_cancellation(self, operation_id: str) -> str:
        return f"{self.prefix}:cancel:op:{operation_id}"

    def task_cancellation(self, task_id: str) -> str:
        return f"{self.prefix}:cancel:task:{task_id}"

    def branch(self, repo: str, branch: str) -> str:
        return f"{self.prefix}:branch:{repo}:{branch}"

    def branches_by_repo(self, repo: str) -> str:
        return f"{self.prefix}:branches:repo:{repo}"

    def branches_by_status(self, status: str) -> str:
        return f"{self.prefix}:branches:status:{status}"

    def delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}:delivery:{delivery_id}"

    def revision_of_task(self, task_id: str) -> str:
        return f"{self.prefix}:revision:task:{task_id}"

    def operation_branches(self) -> str:
        return f"{self.prefix}:branches:operation"

    def all_branches(self) -> str:
        return f"{self.prefix}:branches:all"
