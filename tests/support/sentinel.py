"""A Redis group that survives the loss of its primary: a primary, a replica and three sentinels,
all real ``redis-server`` processes on loopback (``--sentinel`` is what Debian's redis-sentinel
runs), with down-after and failover times short enough for a test."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import redis

from codeworker.loopback.redis_server import RedisServer, free_port
from codeworker.loopback.waiting import wait_until

MASTER = "cwmaster"
"""The group's name (CODEWORKER_REDIS_MASTER_NAME)."""

DOWN_AFTER_MS = 1000
"""How long a primary may not answer before a sentinel holds it down."""

QUORUM = 2


class Sentinel:
    """One ``redis-server --sentinel`` with a config file of its own (sentinels rewrite it)."""

    def __init__(self, primary_port: int, root: Path) -> None:
        self.port = free_port()
        self.config = root / f"sentinel-{self.port}.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {root}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        self.process = subprocess.Popen(
            ["redis-server", str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, 10, f"sentinel on {self.port} answering")

    def _answers(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=2)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


class SentinelGroup:
    """Primary, replica and three sentinels; :meth:`fail_primary` kills the primary the way a
    crashed host would and returns once the sentinels promoted the replica."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cw-sentinel-"))
        self.primary = RedisServer()
        self.primary.start()
        self.replica = RedisServer(options=("--replicaof", "127.0.0.1", str(self.primary.port)))
        self.replica.start()
        wait_until(self._replicating, 20, "the replica in sync with the primary")
        self.sentinels = [Sentinel(self.primary.port, self.root) for _ in range(3)]
        wait_until(self._sentinels_see_everyone, 30, "every sentinel knowing the replica and the others")

    def url(self, db: int = 0) -> str:
        """REDIS_URL for the group (db in the first URL, as kombu and Celery read it)."""
        first, *rest = self.sentinels
        others = [f"sentinel://127.0.0.1:{sentinel.port}" for sentinel in rest]
        return ";".join([f"sentinel://127.0.0.1:{first.port}/{db}", *others])

    def _promoted(self, old: int) -> int | None:
        """The new primary's port once every sentinel names it, it is not ``old``, it answers as a
        primary and no sentinel holds it down; else None."""
        ports = set()
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state = client.sentinel_master(MASTER)
                if state.get("is_sdown") or state.get("is_odown"):
                    return None
                ports.add(int(state["port"]))
        if len(ports) != 1 or old in ports:
            return None
        (port,) = ports
        with redis.Redis(port=port, decode_responses=True, socket_timeout=2) as client:
            return port if client.info("replication").get("role") == "master" else None

    def _replicating(self) -> bool:
        with redis.Redis(port=self.replica.port, decode_responses=True) as client:
            return client.info("replication").get("master_link_status") == "up"

    def _sentinels_see_everyone(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                if not client.sentinel_slaves(MASTER) or len(client.sentinel_sentinels(MASTER)) < 2:
                    return False
        return True

    def synced(self) -> None:
        """Return once the replica acknowledged every write the primary took so far (WAIT)."""
        with redis.Redis(port=self.primary.port) as client:
            if client.execute_command("WAIT", 1, 10_000) < 1:
                raise TimeoutError("the replica did not acknowledge the primary's writes")

    def lose_on_replica(self, keys: list[str], patterns: list[str]) -> None:
        """Delete ``keys`` and the keys matching ``patterns`` on the replica alone: what an
        asynchronous replica that had not yet received them holds when it is promoted. (Pausing
        the replica does not do it: the kernel buffers the replication stream meanwhile.)"""
        with redis.Redis(port=self.replica.port, decode_responses=True) as client:
            client.config_set("replica-read-only", "no")
            doomed = [*keys, *(key for pattern in patterns for key in client.scan_iter(pattern))]
            client.delete(*doomed)
            client.config_set("replica-read-only", "yes")

    def fail_primary(self) -> int:
        """SIGKILL the primary; returns the new primary's port once the sentinels promoted the
        replica."""
        old = self.primary.port
        assert self.primary.process is not None
        self.primary.process.kill()
        self.primary.process.wait()
        self.primary.process = None
        return wait_until(lambda: self._promoted(old), 60, "every sentinel naming the promoted replica")

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.close()
        self.primary.close()
