"""A private redis-server on a free loopback port, for tests, the demo and benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


NO_PERSISTENCE = ("--save", "", "--appendonly", "no")
"""Everything is lost when the server stops (the default)."""

RDB_PERSISTENCE = ("--save", "3600 1", "--appendonly", "no")
"""A snapshot (``dump.rdb``) is written when the server shuts down, and loaded when it starts."""

AOF_PERSISTENCE = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")
"""Every write is appended to the AOF (and fsynced) before the reply, and replayed at start."""


class RedisServer:
    """Starts ``redis-server``; ``stop()``/``start()`` simulate an outage, ``restart()`` a restart
    on the same port and directory. ``persistence``: the server's ``--save``/``--appendonly``
    options, :data:`NO_PERSISTENCE` unless given."""

    def __init__(self, persistence: Sequence[str] = NO_PERSISTENCE, options: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.persistence = tuple(persistence)
        self.options = tuple(options)
        """More of the server's options (``--replicaof host port``)."""
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cw-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                *self.persistence,
                *self.options,
                "--dir",
                str(self.dir),
                "--loglevel",
                "notice",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        # Readiness is the server's own log line, not a timed wait.
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server exited with {self.process.wait()}")
        # Keep draining its log so a full pipe never blocks the server.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        redis.Redis.from_url(self.url).ping()

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (with persistence, the data is saved first); every client's
        connection is closed."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port: what clients see of ``systemctl restart``."""
        self.stop()
        self.start()

    def clients(self) -> list[dict]:
        """``CLIENT LIST``: every connection with its ``id`` (in order of connection since the
        server started) and last command ``cmd``."""
        with redis.Redis.from_url(self.url, decode_responses=True) as client:
            return client.client_list()

    def drop_connections(self) -> None:
        """Close every client's connection, as a failing network or proxy would; the server and
        its data stay."""
        with redis.Redis.from_url(self.url) as client:
            for kind in ("normal", "pubsub"):
                client.client_kill_filter(_type=kind)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class CountingConnection(redis.Connection):
    """A client connection that counts what it sends, in :attr:`sent`, across every instance: one
    packed send is one round trip (a pipeline's or a script's too)."""

    sent = 0

    def send_packed_command(self, command: object, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)  # type: ignore[arg-type]
