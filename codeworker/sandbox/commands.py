"""Running a process for a checkout: its result, its reduced environment, its group kill.

:mod:`codeworker.sandbox.bubblewrap` wraps every repository command in bubblewrap and runs it through
:func:`run_process`. Commands get a reduced environment, never the worker's credentials, and a
timeout that kills the whole process group, so a test suite that forks cannot outlive its job.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "TZ")
"""The only variables a repository command inherits from the worker."""

OUTPUT_LIMIT = 20_000
"""Characters of output kept (head and tail) per command."""


@dataclass(frozen=True)
class CommandResult:
    """What a command did: its exit code (None when killed by the timeout) and clipped output."""

    command: str
    exit_code: int | None
    output: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class Interrupts(Protocol):
    """What may stop a running command early: a cancelled job's
    :class:`~codeworker.coordination.cancellations.CancelSignal`."""

    def killing(self, kill: Callable[[], None]) -> AbstractContextManager[None]:
        """While inside, an interruption calls ``kill``."""


def command_env(home: Path) -> dict[str, str]:
    """The environment a repository command sees: the allowlist plus a private HOME."""
    env = {name: os.environ[name] for name in ENV_ALLOWLIST if name in os.environ}
    # "python" in a repository's command means the worker's interpreter until setup lands.
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    return env


def clip(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Head and tail of long output (a command's, a test's failure, an agent tool's), with a note of
    what was cut."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return _clipped(text[:half], len(text) - 2 * half, text[-half:])


def _clipped(head: str, cut: int, tail: str) -> str:
    return f"{head}\n[... {cut} characters cut ...]\n{tail}"


READ_CHUNK = 65_536
"""Characters read from a command's output at a time."""


class BoundedOutput:
    """A command's output as it is read, keeping only the head and the tail (``limit`` characters
    in all) and counting what falls between: a command that prints without end costs the worker
    a bounded amount of memory, not all it printed."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self.half = limit // 2
        self.head = ""
        self.tail = ""
        self.cut = 0

    def add(self, chunk: str) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        joined = self.tail + chunk
        if len(joined) > self.half:
            self.cut += len(joined) - self.half
            joined = joined[-self.half :]
        self.tail = joined

    def read_all(self, stream: TextIO) -> None:
        while chunk := stream.read(READ_CHUNK):
            self.add(chunk)

    def text(self) -> str:
        if not self.cut:
            return self.head + self.tail
        return _clipped(self.head, self.cut, self.tail)


def run_command(command: str | Sequence[str], cwd: Path, timeout: float, home: Path) -> CommandResult:
    """Run ``command`` (a shell string or an argv) in ``cwd`` WITHOUT a sandbox; never raises for
    the command's failure. Only :mod:`codeworker.sandbox.bubblewrap` calls this, when the operator
    allowed it."""
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    shown = command if isinstance(command, str) else shlex.join(command)
    return run_process(argv, shown, cwd, command_env(home), timeout)


DEFAULT_SIGNALS = ("/usr/bin/env", "--default-signal")
"""Prefix that restores every signal to its default before the command runs. Celery's pool
processes ignore SIGTERM and SIGINT, and an ignored signal survives exec: without this, every
command a job starts would ignore them too (trufflehog3's multiprocessing pool then hangs at exit
when its workers ignore the SIGTERM that should end them). coreutils' env does it without a
preexec_fn, which is unsafe in a process with threads."""


def with_default_signals(argv: Sequence[str]) -> list[str]:
    return [*DEFAULT_SIGNALS, *argv]


def run_process(
    argv: Sequence[str],
    shown: str,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    pass_fds: Sequence[int] = (),
    started: Callable[[subprocess.Popen[str], float], None] | None = None,
    interrupts: Interrupts | None = None,
) -> CommandResult:
    """Run ``argv`` in its own process group; on timeout, or when ``interrupts`` says so, the whole
    group is killed, so a command that forks cannot outlive its job.

    ``started`` is called with the process and the timeout before its output is read (setup's
    network is attached there); the time it takes counts against the timeout, and if it raises,
    the process group is killed and the exception passes on."""
    begun = time.monotonic()
    process = subprocess.Popen(
        with_default_signals(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
        pass_fds=tuple(pass_fds),
    )
    if started is not None:
        try:
            started(process, timeout)
        except BaseException:
            _kill_group(process)
            process.communicate()
            raise
    assert process.stdout is not None
    output = BoundedOutput()
    reader = threading.Thread(target=output.read_all, args=(process.stdout,), daemon=True)
    reader.start()
    with interrupts.killing(lambda: _kill_group(process)) if interrupts else nullcontext():
        # Done when the output ends (every writer in the group exited), not when the leader does.
        reader.join(max(timeout - (time.monotonic() - begun), 0))
    timed_out = reader.is_alive()
    if timed_out:
        _kill_group(process)
        reader.join()  # the group is gone, so the pipe's writers are too
    process.wait()
    process.stdout.close()
    return CommandResult(shown, None if timed_out else process.returncode, output.text(), timed_out=timed_out)


def _kill_group(process: subprocess.Popen[str]) -> None:
    # The leader may be gone (and reaped) while the rest of its group lives on.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
