"""Setup's isolated network: slirp4netns attached to the empty network namespace of bubblewrap.

With the host's network a setup command reaches everything the worker reaches, loopback included:
a passwordless Redis (forge jobs, drop locks), the worker's own HTTP port and, through the host's
routes, the cloud metadata endpoint. So setup gets a network namespace of its own
(``--unshare-net``, like every other command), and slirp4netns, a process of the worker outside
the sandbox, gives it a tap device whose connections it makes again as ordinary sockets of the
host. Why each piece is there:

- ``--disable-host-loopback``: the gateway (10.0.2.2) does not lead to the host's 127.0.0.1, and
  127.0.0.1 inside is the sandbox's own, empty loopback.
- An ``unreachable`` route for 169.254.0.0/16, added inside the namespace before the command
  starts: the metadata endpoint (169.254.169.254) is refused by the sandbox's own kernel, before
  slirp4netns sees a packet, and the command has no capability left to remove the route.
- ``nameserver 10.0.2.3`` as the sandbox's ``/etc/resolv.conf``: slirp4netns's DNS forwarder,
  because the host's resolver may listen on loopback (systemd-resolved's 127.0.0.53).
- ``--enable-sandbox`` when the worker runs as root: slirp4netns, which parses whatever the
  command sends, runs in an empty mount namespace without capabilities. Unprivileged it has no
  capability to drop, and slirp4netns 1.2.0's sandbox fails there (``setegid(0)``).
- ``--exit-fd``: slirp4netns ends when the worker closes its end, or dies, so it never outlives
  the command.

bubblewrap reports its sandbox's pid on ``--info-fd``; the command's first step inside the sandbox
waits on a pipe until the network is up (:meth:`UserNetwork.gated`). bubblewrap's own
``--block-fd`` waits before ``--die-with-parent`` is in force: a worker killed then would leave the
command to run on, orphaned; a gate that reads end of file exits instead. When bubblewrap runs
unprivileged the network namespace belongs to a user namespace of bubblewrap's that no process is
left in (``/proc/<pid>/ns/user`` shows a second one, nested in it), so slirp4netns and nsenter join
the namespace's owner, asked of the kernel with NS_GET_USERNS.

Every other address the host can reach stays reachable, the host's own non-loopback addresses and
private networks included.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from codeworker.sandbox.commands import Spawned

TAP = "tap0"
"""The interface slirp4netns creates in the sandbox (10.0.2.100/24, default route via 10.0.2.2)."""

RESOLV_CONF = "nameserver 10.0.2.3\n"
"""The sandbox's resolver: slirp4netns's DNS forwarder."""

BLOCKED = "169.254.0.0/16"
"""Link-local, where cloud metadata endpoints live: unreachable from the sandbox."""

HELPER_ENV = {"PATH": os.environ.get("PATH", os.defpath)}
"""The whole environment of slirp4netns and nsenter: slirp4netns parses whatever the sandbox sends,
so it must not hold the worker's credentials, not even in its environ."""

START_TIMEOUT = 30.0
"""Most seconds the network may take to come up (it takes milliseconds)."""

STOP_TIMEOUT = 5.0
"""Seconds slirp4netns gets to exit after its exit fd is closed, before it is killed."""

NS_GET_USERNS = 0xB701
"""ioctl on a namespace file: a file of the user namespace that owns it (linux/nsfs.h)."""


class NetworkUnavailable(RuntimeError):
    """slirp4netns could not give the sandbox its network; the command did not run."""


class UserNetwork:
    """One command's isolated network, from the pipes bubblewrap is started with to slirp4netns's
    end. Use as a context manager around the command: leaving it stops slirp4netns."""

    def __init__(self, slirp4netns: str) -> None:
        self._slirp4netns = shutil.which(slirp4netns) or slirp4netns
        self._info, self._info_bwrap = os.pipe()
        self._gate_bwrap, self._gate = os.pipe()
        self._resolv_bwrap, resolv = os.pipe()
        os.write(resolv, RESOLV_CONF.encode())  # far below a pipe's buffer: never blocks
        os.close(resolv)
        self._open = {self._info, self._info_bwrap, self._gate_bwrap, self._gate, self._resolv_bwrap}
        self._exit: int | None = None
        self._slirp: subprocess.Popen[bytes] | None = None

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """What bubblewrap inherits: the pipes of :meth:`bwrap_args` and :meth:`gated`."""
        return (self._info_bwrap, self._gate_bwrap, self._resolv_bwrap)

    def bwrap_args(self) -> list[str]:
        """bubblewrap's part (``--unshare-net`` is the caller's): report the pid, the resolver."""
        return [
            *("--info-fd", str(self._info_bwrap)),
            # Readable by everyone: bubblewrap makes such files 0600, its user's alone, by default.
            *("--perms", "0644", "--ro-bind-data", str(self._resolv_bwrap), "/etc/resolv.conf"),
        ]

    def gated(self, argv: list[str]) -> list[str]:
        """``argv`` behind the gate: it runs once :meth:`attach` brought the network up, never if
        the worker died first (the gate reads end of file then). The pipe is reopened through
        /proc because the shell's redirections take one-digit fds only."""
        gate = f'read -r go < /proc/self/fd/{self._gate_bwrap} && exec "$@"'
        return ["/bin/sh", "-c", gate, "gate", *argv]

    def attach(self, bwrap: Spawned, timeout: float) -> None:
        """Bring the network up in ``bwrap``'s sandbox, then let its command start.

        Returns without a network when bubblewrap failed on its own (its output says why, and the
        command never runs); raises :class:`NetworkUnavailable` when the network failed.
        """
        for fd in self.pass_fds:
            self._close(fd)  # bubblewrap has its copies: the info pipe ends when bubblewrap exits
        deadline = time.monotonic() + min(timeout, START_TIMEOUT)
        info = _read_to_end(self._info, deadline)
        if not info:
            return
        try:
            pid = int(json.loads(info)["child-pid"])
        except (ValueError, KeyError, TypeError):
            raise NetworkUnavailable(f"bubblewrap reported no sandbox pid: {info[:200]!r}") from None
        netns = f"/proc/{pid}/ns/net"
        try:
            owner = _foreign_owner(netns)
        except OSError as exc:
            if bwrap.poll() is not None:
                return
            raise NetworkUnavailable(f"cannot open the sandbox's network namespace: {exc}") from None
        try:
            failure = self._start(pid, owner, deadline)
            if failure is not None:
                if bwrap.poll() is not None:
                    return  # the sandbox died first, which is why slirp4netns failed
                raise NetworkUnavailable(f"slirp4netns failed: {failure}")
            _block_link_local(netns, owner, deadline)
        finally:
            if owner is not None:
                os.close(owner)
        with contextlib.suppress(BrokenPipeError):  # bubblewrap is gone: its output tells why
            os.write(self._gate, b"go\n")
        self._close(self._gate)

    def _start(self, pid: int, owner: int | None, deadline: float) -> str | None:
        """Start slirp4netns on ``pid``'s namespace; None once it is up, else what it said."""
        ready, ready_slirp = os.pipe()
        exit_slirp, self._exit = os.pipe()
        argv = [self._slirp4netns, "--configure", "--mtu=65520", "--disable-host-loopback"]
        argv += [f"--ready-fd={ready_slirp}", f"--exit-fd={exit_slirp}"]
        if os.geteuid() == 0:
            argv.append("--enable-sandbox")
        pass_fds = [ready_slirp, exit_slirp]
        if owner is not None:
            argv.append(f"--userns-path=/proc/self/fd/{owner}")
            pass_fds.append(owner)
        with tempfile.TemporaryFile() as log:
            try:
                self._slirp = subprocess.Popen(
                    [*argv, str(pid), TAP],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=pass_fds,
                    env=HELPER_ENV,
                )
            except OSError as exc:
                os.close(ready)
                return str(exc)
            finally:
                os.close(ready_slirp)
                os.close(exit_slirp)
            try:
                up = _read_to_end(ready, deadline, limit=1)
            finally:
                os.close(ready)
            if up == b"1":
                return None
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._slirp.wait(STOP_TIMEOUT)  # it exits when it fails; then its log is complete
            log.seek(0)
            said = log.read().decode(errors="replace").strip().splitlines()
            return " / ".join(said[-3:]) or f"exit status {self._slirp.returncode}"

    def close(self) -> None:
        """Stop slirp4netns (closing its exit fd is the request) and close every pipe left."""
        for fd in list(self._open):
            self._close(fd)
        if self._exit is not None:
            os.close(self._exit)
            self._exit = None
        if self._slirp is not None:
            try:
                self._slirp.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._slirp.kill()
                self._slirp.wait()
            self._slirp = None

    def _close(self, fd: int) -> None:
        if fd in self._open:
            self._open.discard(fd)
            os.close(fd)

    def __enter__(self) -> UserNetwork:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _read_to_end(fd: int, deadline: float, limit: int = 65536) -> bytes:
    """What the writers of ``fd`` write until they close it (or ``limit`` bytes), by ``deadline``."""
    data = b""
    while len(data) < limit:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise NetworkUnavailable("the sandbox's network did not come up in time")
        chunk = os.read(fd, limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _foreign_owner(netns: str) -> int | None:
    """An fd of the user namespace owning ``netns`` when it is not ours (bubblewrap unprivileged);
    None when it is (the worker runs as root and bubblewrap made no user namespace)."""
    with open(netns, "rb") as namespace:
        owner = fcntl.ioctl(namespace.fileno(), NS_GET_USERNS)
    theirs, ours = os.fstat(owner), Path("/proc/self/ns/user").stat()
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        os.close(owner)
        return None
    return owner


def _block_link_local(netns: str, owner: int | None, deadline: float) -> None:
    """Add the ``unreachable`` route for :data:`BLOCKED` in ``netns`` (nsenter and ip, outside the
    sandbox: the command itself never holds CAP_NET_ADMIN)."""
    nsenter, ip = shutil.which("nsenter"), shutil.which("ip")
    if nsenter is None or ip is None:
        raise NetworkUnavailable("nsenter (util-linux) and ip (iproute2) are needed to block 169.254.0.0/16")
    argv = [nsenter, f"--net={netns}"]
    if owner is not None:
        argv += [f"--user=/proc/self/fd/{owner}", "--preserve-credentials"]
    argv += [ip, "route", "add", "unreachable", BLOCKED]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=max(deadline - time.monotonic(), 0.1),
            pass_fds=() if owner is None else (owner,),
            env=HELPER_ENV,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkUnavailable(f"cannot block {BLOCKED} in the sandbox: {exc}") from None
    if done.returncode != 0:
        raise NetworkUnavailable(f"cannot block {BLOCKED} in the sandbox: {done.stderr.strip()[-300:]}")
