"""The lease keeper of a running job: a thread that renews its file locks (and any other lease,
such as its idempotency claim) until the job ends, and tells the job when one is lost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import redis

from codeworker.coordination.locks import FileLocks

log = logging.getLogger(__name__)


class LockWatchdog:
    """A daemon thread that renews leases every ``interval`` seconds until stopped.

    The leases are the file locks of one :class:`FileLocks` and any ``also`` callables (such as an
    idempotency claim's heartbeat) that renew their own lease and answer False once it is lost.
    Losses are recorded in :attr:`lost` (file paths) and :attr:`lost_leases` (the callables), set
    :attr:`lost_event`, and call ``on_lost()``; the job checks them (or ``FileLocks.verify``) and
    stops before it pushes. A Redis error is logged and retried on the next beat: the lease TTL,
    not the watchdog, decides when a lease is gone.
    """

    def __init__(
        self,
        locks: FileLocks,
        interval: float | None = None,
        *,
        also: Iterable[Callable[[], bool]] = (),
        on_lost: Callable[[], Any] | None = None,
    ) -> None:
        self.locks = locks
        self.interval = locks.ttl / 3 if interval is None else interval
        if self.interval <= 0:
            raise ValueError("watchdog interval must be positive")
        self.also = list(also)
        self.on_lost = on_lost
        self.lost: list[str] = []
        self.lost_leases: list[Callable[[], bool]] = []
        self.lost_event = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_lost(self) -> bool:
        """Whether any lease was lost."""
        return self.lost_event.is_set()

    def start(self) -> LockWatchdog:
        if self._thread is not None:
            raise RuntimeError("watchdog already started")
        self._thread = threading.Thread(
            target=self._run, name=f"lock-watchdog-{self.locks.operation_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop renewing at once (the thread wakes from its wait) and wait for it to end."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def beat(self) -> None:
        """Renew every lease once; the thread calls this every interval."""
        newly_lost = self._renew_locks()
        lease_lost = self._renew_also()
        if newly_lost or lease_lost:
            self.lost_event.set()
            if self.on_lost is not None:
                try:
                    self.on_lost()
                except Exception:
                    log.exception("on_lost callback of %s failed", self.locks.operation_id)

    def __enter__(self) -> LockWatchdog:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def _renew_locks(self) -> list[str]:
        try:
            lost = self.locks.renew()
        except redis.RedisError:
            log.warning("renewing the locks of %s failed; retrying", self.locks.operation_id, exc_info=True)
            return []
        newly_lost = [path for path in lost if path not in self.lost]
        if newly_lost:
            log.error("operation %s lost the lock on %s", self.locks.operation_id, ", ".join(newly_lost))
            self.lost.extend(newly_lost)
        return newly_lost

    def _renew_also(self) -> bool:
        lost_any = False
        for renew in self.also:
            if renew in self.lost_leases:
                continue
            try:
                alive = renew()
            except Exception:
                log.warning("renewing %s failed; retrying", _name(renew), exc_info=True)
                continue
            if not alive:
                log.error("operation %s lost the lease renewed by %s", self.locks.operation_id, _name(renew))
                self.lost_leases.append(renew)
                lost_any = True
        return lost_any


def _name(renew: Callable[[], bool]) -> str:
    """A lease's renewal as a log line names it (``OperationRun.heartbeat_claim``)."""
    return getattr(renew, "__qualname__", repr(renew))
