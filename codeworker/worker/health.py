"""Is this worker alive, and is it really taking jobs?

A Celery worker can look healthy (process up, Redis up, pings answered) and still have stopped
consuming its queue after a Redis reconnect (Celery issues #8030, #8082). So liveness is proven
end to end: the worker's main process sends itself a probe message through Redis every
``health_probe_interval`` seconds, on a queue of its own that the task consumer reads with the
same BRPOP as the job queue; the consumer hands the probe to :meth:`ConsumerHeartbeat.received`
instead of the pool. A probe that comes back proves Redis -> kombu -> Celery consumer works.

Two cases are not the consumer's fault and do not count against it: every pool slot is busy (the
consumer then rightly takes no message, probes included), and Redis is down or came back less than
``health_stale_after`` seconds ago (readiness fails; liveness waits for the reconnect).

This module only keeps time and decides; sending and receiving the probe need Celery, which lives in
:mod:`codeworker.worker.bootsteps`. The Redis PING of ``/health`` is here, in one place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from codeworker.coordination.connection import redis_client

log = logging.getLogger(__name__)


@dataclass
class Health:
    """The answer of ``/health``: ``live`` for a liveness probe, ``ready`` for a readiness probe."""

    live: bool
    ready: bool
    reasons: list[str] = field(default_factory=list)
    """Why the worker is not ready (or not live); empty when all is well."""
    checks: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ready else "unavailable",
            "live": self.live,
            "ready": self.ready,
            "reasons": self.reasons,
            "checks": self.checks,
        }


class RedisPing:
    """PING with short timeouts, so an unreachable Redis answers ``/health`` in about a second."""

    def __init__(self, url: str, master_name: str, timeout: float = 1.0) -> None:
        self.client = redis_client(
            url, master_name, socket_connect_timeout=timeout, socket_timeout=timeout, health_check_interval=0
        )

    def __call__(self) -> str | None:
        """None when Redis answers, else why not."""
        try:
            self.client.ping()
        except redis.RedisError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def close(self) -> None:
        self.client.close()


class ConsumerHeartbeat:
    """Sends probes on a thread and keeps the time the consumer last received one."""

    def __init__(
        self,
        send_probe: Callable[[], None],
        saturated: Callable[[], bool],
        interval: float,
        stale_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``send_probe`` publishes one probe (raises when Redis does not take it); ``saturated``
        says whether every pool slot is busy."""
        self.send_probe = send_probe
        self.saturated = saturated
        self.interval = interval
        self.stale_after = stale_after
        self.clock = clock
        self.started = clock()
        self.last_received: float | None = None
        self.last_sent: float | None = None
        self.send_error: str | None = None
        self.redis_up_since: float | None = None
        """When probes could be sent again after an outage (or first could be)."""
        self.consumer_ready = threading.Event()
        """Set once the consumer reads the probe queue; probes sent before would only pile up."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the two sides ----------------------------------------------------------------------------

    def received(self) -> None:
        """Called by the consumer (its event loop) for each probe of this worker."""
        self.last_received = self.clock()

    def probe(self) -> None:
        """Send one probe now; remember whether Redis took it."""
        try:
            self.send_probe()
        except Exception as exc:  # any broker error: Redis down, connection reset, timeout
            if self.send_error is None:
                log.warning("health probe could not be sent: %s", exc)
            self.send_error = f"{type(exc).__name__}: {exc}"
            self.redis_up_since = None
            return
        now = self.clock()
        if self.redis_up_since is None:
            self.redis_up_since = now
        self.last_sent = now
        self.send_error = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="codeworker-health-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.consumer_ready.is_set():
                self.probe()
            self._stop.wait(self.interval)

    # -- the verdict -------------------------------------------------------------------------------

    def consuming(self) -> bool:
        """A probe sent after Redis was last (re)reached came back within ``stale_after``."""
        received = self.last_received
        if received is None or self.clock() - received > self.stale_after:
            return False
        return self.redis_up_since is None or received >= self.redis_up_since

    def check(self, redis_error: str | None) -> Health:
        """Liveness and readiness, given the result of a Redis PING just made."""
        now = self.clock()
        # The PING counts as a sighting of Redis too: after an outage, only a probe that comes
        # back afterwards proves the consumer reconnected.
        if redis_error is not None:
            self.redis_up_since = None
        elif self.redis_up_since is None:
            self.redis_up_since = now
        saturated = self.saturated()
        consuming = self.consuming()
        age = None if self.last_received is None else round(now - self.last_received, 3)
        checks: dict[str, Any] = {
            "redis": "ok" if redis_error is None else redis_error,
            "consumer": "consuming" if consuming else ("saturated" if saturated else "not proven"),
            "last_probe_age": age,
            "stale_after": self.stale_after,
        }
        reasons = []
        if redis_error is not None:
            reasons.append(f"redis does not answer: {redis_error}")
        if not consuming and not saturated:
            if age is None:
                reasons.append("no health probe has come back through the queue yet")
            else:
                reasons.append(f"no health probe has come back through the queue for {age:.1f}s")
        # Not live only when Redis has been reachable for a while and still nothing comes back:
        # restarting the worker would help then, and would not during a Redis outage.
        reachable_since = self.redis_up_since
        blamed = (
            not consuming
            and not saturated
            and redis_error is None
            and self.send_error is None
            and reachable_since is not None
            and now - max(reachable_since, self.started) > self.stale_after
        )
        return Health(live=not blamed, ready=not reasons, reasons=reasons, checks=checks)
