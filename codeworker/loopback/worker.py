"""A real ``codeworker worker`` process (Celery prefork), for end-to-end tests, the demo and bench."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from codeworker.loopback.waiting import wait_until

BIN = Path(sys.executable).parent


class WorkerProcess:
    """Starts ``codeworker worker`` with ``env`` and keeps every line it prints."""

    def __init__(
        self,
        env: Mapping[str, str],
        name: str = "w1",
        concurrency: int = 2,
        echo: str | None = None,
        pythonpath: Sequence[Path] = (),
        celery_args: Sequence[str] = (),
    ) -> None:
        """``echo``: print each line the worker prints with this prefix (the demo shows its log);
        ``pythonpath``: directories put first on the worker's PYTHONPATH (executor plugins);
        ``celery_args``: more of Celery's worker options (``--include`` a module of tasks)."""
        self.env = {**os.environ, **env}
        if pythonpath:
            paths = [*map(str, pythonpath), self.env.get("PYTHONPATH")]
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        self.name = name
        self.concurrency = concurrency
        self.echo = echo
        self.celery_args = tuple(celery_args)
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        """Set when the worker said it is ready, or its output ended (it died starting)."""
        self._came_up = False
        self._changed = threading.Condition()

    def start(self, timeout: float = 60) -> WorkerProcess:
        self.process = subprocess.Popen(
            [
                str(BIN / "codeworker"),
                "worker",
                "-c",
                str(self.concurrency),
                "-n",
                f"{self.name}@%h",
                "--without-mingle",
                "--without-gossip",
                *self.celery_args,
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own process group, so a test can kill the worker and its pool at once, as a
            # machine that dies would.
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        # Not the exit status: a worker that died starting can have closed its output a moment
        # before the operating system reports it gone.
        if not self._ready.wait(timeout) or not self._came_up or self.process.poll() is not None:
            self.stop()
            raise RuntimeError("worker did not become ready:\n" + "\n".join(self.lines[-40:]))
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
            if self.echo is not None:
                print(f"{self.echo}{line}", end="", flush=True)
            # Celery prints "<name>@<host> ready." once the consumer is up.
            if " ready." in line:
                self._came_up = True
                self._ready.set()
        self._ready.set()

    def wait_for_line(self, text: str, timeout: float = 60) -> str:
        """Block until the worker prints a line containing ``text``."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((line for line in self.lines if text in line), None), timeout
            )
        if not found:
            raise TimeoutError(f"worker never printed {text!r}")
        return found

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        """SIGKILL the whole worker, pool children included (its process group), and return once
        none of them runs any more (a dying child could still hold a file or a FIFO open)."""
        assert self.process is not None
        group = self.process.pid
        os.killpg(group, signal.SIGKILL)
        self.process.wait()
        self.process = None
        wait_until(lambda: not running_in_group(group), timeout=30, what=f"process group {group} to die")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # Every thread's stack into the log (faulthandler, `codeworker worker`), then SIGKILL.
            self.process.send_signal(signal.SIGUSR2)
            with contextlib.suppress(TimeoutError):
                self.wait_for_line("most recent call first", timeout=5)
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code


def running_in_group(group: int) -> list[int]:
    """Pids of the processes of process group ``group`` that still run (zombies excluded)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            pids.append(int(entry.name))
    return pids


def get(port: int, path: str) -> tuple[int, Any]:
    """Status and body (JSON when it is JSON) of GET ``path``; a 503 is an answer, not an error."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body
