"""Running a process for a checkout: its result, its reduced environment, its group kill.

:mod:`codeworker.sandbox.bubblewrap` wraps every repository command in bubblewrap and runs it through
:func:`run_process`. Commands get a reduced environment, never the worker's credentials, and a
timeout that kills the whole process group, so a test suite that forks cannot outlive its job.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import locale
import os
import select
import shlex
import signal
import sys
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
"""Bytes read from a command's output at a time."""


class BoundedOutput:
    """A command's output as it is read, keeping only the head and the tail (``limit`` characters
    in all) and counting what falls between: a command that prints without end costs the worker
    a bounded amount of memory, not all it printed.

    Bytes are decoded as ``subprocess``'s text mode would: the locale's encoding, undecodable bytes
    replaced, every line ending turned into ``\\n``."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self.half = limit // 2
        self.head = ""
        self.tail = ""
        self.cut = 0
        decoder = codecs.getincrementaldecoder(locale.getpreferredencoding(False))("replace")
        self._decoder = io.IncrementalNewlineDecoder(decoder, translate=True)

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

    def read(self, fd: int) -> bool:
        """Add one chunk read from ``fd``; False at end of file."""
        data = os.read(fd, READ_CHUNK)
        self.add(self._decoder.decode(data, final=not data))
        return bool(data)

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
preexec_fn, which is unsafe in a process with threads. :func:`run_process` needs no prefix: it
starts its processes with every signal at its default."""


def with_default_signals(argv: Sequence[str]) -> list[str]:
    return [*DEFAULT_SIGNALS, *argv]


CHDIR = ("/usr/bin/env", "--chdir")
"""Prefix that runs a command in a directory: ``posix_spawn`` has no working directory of its own."""


@dataclass
class Spawned:
    """A process :func:`run_process` started: its pid, and its exit code once it has been reaped."""

    pid: int
    returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code if the process has ended (reaping it), else None."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill_group(self) -> None:
        # The leader may be gone (and reaped) while the rest of its group lives on.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


def run_process(
    argv: Sequence[str],
    shown: str,
    cwd: Path | None,
    env: dict[str, str],
    timeout: float,
    pass_fds: Sequence[int] = (),
    started: Callable[[Spawned, float], None] | None = None,
    interrupts: Interrupts | None = None,
) -> CommandResult:
    """Run ``argv`` in its own session and process group; on timeout, or when ``interrupts`` says
    so, the whole group is killed, so a command that forks cannot outlive its job.

    ``argv[0]`` is a path when ``cwd`` is None (bubblewrap changes directory itself); with a
    ``cwd``, a name is looked up on ``env``'s PATH. ``started`` is called with the process and
    the timeout before its output is read (setup's network is attached there); the time it takes
    counts against the timeout. If it raises, or anything does while the output is read, the process
    group is killed and the exception passes on."""
    begun = time.monotonic()
    if cwd is not None:
        argv = [*CHDIR, str(cwd), "--", *argv]
    output_fd, writer = os.pipe()
    try:
        process = Spawned(_spawn(argv, env, writer, pass_fds))
    except BaseException:
        os.close(output_fd)
        raise
    finally:
        os.close(writer)
    output = BoundedOutput()
    try:
        try:
            if started is not None:
                started(process, timeout)
            with interrupts.killing(process.kill_group) if interrupts else nullcontext():
                # Done when the output ends (every writer in the group exited), not when the leader does.
                ended = _read_until(output_fd, output, begun + timeout)
        except BaseException:  # a failed start, or the job itself stopped (a Celery time limit)
            process.kill_group()
            process.wait()
            raise
        if not ended:
            process.kill_group()
            while output.read(output_fd):  # the group is gone, so the pipe's writers are too
                pass
        code = process.wait()
    finally:
        os.close(output_fd)
    return CommandResult(shown, code if ended else None, output.text(), timed_out=not ended)


def _read_until(fd: int, output: BoundedOutput, deadline: float) -> bool:
    """Read ``fd`` into ``output`` until end of file (True) or ``deadline`` (False)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while (left := deadline - time.monotonic()) > 0:
        if poller.poll(left * 1000) and not output.read(fd):
            return True
    return False


SIGNALS = signal.valid_signals()
"""Every signal, each set back to its default in a spawned process (see :data:`DEFAULT_SIGNALS`)."""


def _spawn(argv: Sequence[str], env: dict[str, str], output: int, pass_fds: Sequence[int]) -> int:
    """Start ``argv`` with stdin from /dev/null, stdout and stderr to ``output``, only ``pass_fds``
    besides, every signal at its default and none blocked, in a new session; its pid.

    ``posix_spawn`` rather than ``subprocess``: ``subprocess`` cannot reset signal dispositions
    without a preexec_fn (unsafe with threads) or an extra exec (``env --default-signal``), which
    costs a sandboxed command a millisecond. What ``close_fds`` does, it does here with file
    actions: ``pass_fds`` are duplicated onto themselves in the child alone, which clears their
    close-on-exec there (POSIX requires it; glibc and musl do it), so a command that another thread
    starts meanwhile never gets them; and every other descriptor the worker holds without
    close-on-exec is closed (Python opens none such, but a C library may have)."""
    actions: list[tuple[int | str, ...]] = [
        # stdin last: a worker whose own stdio is closed may get a pipe numbered 0, 1 or 2.
        (os.POSIX_SPAWN_DUP2, output, 1),
        (os.POSIX_SPAWN_DUP2, output, 2),
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        *((os.POSIX_SPAWN_DUP2, fd, fd) for fd in pass_fds),
        *((os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds(keep={0, 1, 2, *pass_fds})),
    ]
    return os.posix_spawn(
        argv[0], list(argv), env, file_actions=actions, setsid=True, setsigdef=SIGNALS, setsigmask=()
    )


def _inheritable_fds(keep: Collection[int]) -> list[int]:
    """This process's descriptors that an exec would pass on, other than ``keep``."""
    found = []
    for entry in Path("/proc/self/fd").iterdir():
        fd = int(entry.name)
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            if fd not in keep and os.get_inheritable(fd):
                found.append(fd)
    return found
