"""The worker's side of the long-lived scanner process (:mod:`codeworker.secrets.scand`).

One process per :class:`ScannerProcess`, started on the first request, replaced when it has died,
and killed after any request that fails (a timeout, a crash, an answer that is not one JSON
line): a process that misbehaved once is never trusted with the next job. Every request is bounded
by a deadline, the start of a process included: the pipes are non-blocking and driven by one
selector, so a scanner that stops reading or stops answering cannot block the worker past it.

The process runs in a session of its own (killing the session leaves nothing behind) with
:func:`~codeworker.sandbox.commands.with_default_signals` (Celery's pool processes ignore SIGTERM
and SIGINT, and an ignored signal survives exec). It ends by itself on end of input, so a worker
that dies without stopping it leaves no scanner behind for long.

A forked child (Celery's prefork pool) inherits the parent's handle: it is recognised by its
owner's pid, and the child starts a process of its own without touching the parent's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from codeworker.sandbox.commands import with_default_signals
from codeworker.secrets.findings import ScanError

DRIVER = Path(__file__).with_name("scand.py")
"""The module the scanner's interpreter runs; it imports only the standard library and trufflehog3."""

READ_CHUNK = 1 << 20
WRITE_CHUNK = 1 << 16
STDERR_TAIL = 4096
"""Bytes of the scanner's stderr kept for an error message."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def scanner_env() -> dict[str, str]:
    """The scanner's whole environment: no tokens, no Redis URL, nothing but what it needs.

    ``LANG`` is fixed to UTF-8 so that trufflehog3 and Python's own streams never fall back to ASCII.
    """
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", "/nonexistent"),
        "LANG": "C.UTF-8",
    }


class _TimedOut(ScanError):
    """No answer before the deadline (turned into a ScanError that names the timeout)."""


class ScannerProcess:
    """A running :mod:`~codeworker.secrets.scand` and the pipes to it. Not thread-safe: the
    caller holds a lock around :meth:`request`."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._owner = 0
        self._interpreter = ""
        self._stderr = b""

    @property
    def pid(self) -> int | None:
        """The running process's id, if this process started one that has not been stopped."""
        return self._process.pid if self._process is not None and self._owner == os.getpid() else None

    def request(
        self, interpreter: str, message: Mapping[str, Any], rules: str, timeout: float
    ) -> dict[str, Any]:
        """Send ``message`` and return the answer, first starting ``interpreter`` and sending it
        ``rules`` if no process of it is running. Raises ScanError, after killing the process, when
        there is no trustworthy answer within ``timeout`` seconds (the start included)."""
        deadline = time.monotonic() + timeout
        try:
            if not self._running(interpreter):
                self._start(interpreter)
                answer = self._exchange({"rules": rules}, deadline)
                if not isinstance(answer.get("ready"), int):
                    raise ScanError("secret scanner did not load the rule pack")
            return self._exchange(message, deadline)
        except _TimedOut:
            self.stop()
            raise ScanError(f"secret scan timed out after {timeout:g} s") from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the process, if this process started it; a forked child just lets go of the pipes."""
        process, self._process = self._process, None
        if process is None:
            return
        if self._owner == os.getpid():
            _kill_session(process)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        if self._owner == os.getpid():
            process.wait()

    def _running(self, interpreter: str) -> bool:
        """Whether a process of ``interpreter`` that this process started is still alive."""
        if self._process is None:
            return False
        if self._owner != os.getpid() or self._interpreter != interpreter or self._process.poll() is not None:
            self.stop()
            return False
        return True

    def _start(self, interpreter: str) -> None:
        argv = with_default_signals([interpreter, "-I", str(DRIVER)])
        try:
            process = subprocess.Popen(
                argv,
                cwd="/",
                env=scanner_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,
            )
        except OSError as exc:
            raise ScanError(f"secret scanner {interpreter} could not be started: {exc.strerror}") from exc
        for pipe in (process.stdin, process.stdout, process.stderr):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
        self._process, self._owner, self._interpreter, self._stderr = process, os.getpid(), interpreter, b""

    def _exchange(self, message: Mapping[str, Any], deadline: float) -> dict[str, Any]:
        """Write one request line and read one answer line, both before ``deadline``.

        The request is UTF-8 with errors replaced: a lone surrogate (a diff decoded with
        surrogateescape) becomes ``?``, as it did when the scanner read the text from a file.
        """
        request = json.dumps(message, ensure_ascii=False).encode("utf-8", "replace") + b"\n"
        line, in_turn = self._transfer(request, deadline)
        try:
            answer = json.loads(line)
        except ValueError:
            raise ScanError(f"secret scanner printed {len(line)} bytes that are not JSON") from None
        if not isinstance(answer, dict):
            raise ScanError("secret scanner printed JSON that is not an answer")
        if not in_turn:
            raise ScanError("secret scanner answered out of turn")
        if "error" in answer:
            raise ScanError(f"secret scanner failed: {str(answer['error'])[:100]}")
        return answer

    def _transfer(self, request: bytes, deadline: float) -> tuple[bytes, bool]:
        """The first line the scanner prints once ``request`` is written (without its newline), and
        whether that is all it printed, after the whole request: an answer cannot come earlier."""
        process = self._process
        assert process is not None and process.stdin and process.stdout and process.stderr
        pending = memoryview(request)
        answer = bytearray()
        answered = False
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdin, selectors.EVENT_WRITE)
            selector.register(process.stdout, selectors.EVENT_READ)
            selector.register(process.stderr, selectors.EVENT_READ)
            while not answered:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _TimedOut
                for key, _ in selector.select(remaining):
                    if key.fileobj is process.stdin:
                        try:
                            pending = pending[os.write(process.stdin.fileno(), pending[:WRITE_CHUNK]) :]
                        except BrokenPipeError:
                            pending = pending[:0]  # it died: its end of output says how
                        if not pending:
                            selector.unregister(process.stdin)
                    elif key.fileobj is process.stdout:
                        chunk = os.read(process.stdout.fileno(), READ_CHUNK)
                        if not chunk:
                            raise self._died(deadline)
                        answer += chunk
                        answered = b"\n" in chunk  # only the new bytes: an answer can be megabytes
                    else:
                        chunk = os.read(process.stderr.fileno(), READ_CHUNK)
                        if not chunk:
                            selector.unregister(process.stderr)
                        self._stderr = (self._stderr + chunk)[-STDERR_TAIL:]
        line, _, rest = bytes(answer).partition(b"\n")
        return line, not (pending or rest)

    def _died(self, deadline: float) -> ScanError:
        """The error for a scanner that closed its output: its exit status and last stderr line."""
        process = self._process
        assert process is not None
        try:
            status = process.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            return ScanError("secret scanner closed its output but did not exit")
        if status < 0:
            return ScanError(f"secret scanner was killed by signal {-status}")
        if status == 0:
            return ScanError("secret scanner exited without answering")
        return ScanError(f"secret scanner failed with exit status {status}: {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        """The last line the scanner printed on stderr (its error), for the ScanError message."""
        process = self._process
        assert process is not None and process.stderr is not None
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(process.stderr.fileno(), READ_CHUNK):
                self._stderr = (self._stderr + chunk)[-STDERR_TAIL:]
        text = _ANSI.sub("", self._stderr.decode("utf-8", "replace"))
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1][:300] if lines else "no error output"


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
