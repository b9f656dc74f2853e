"""Every repository command (the agent's, the verification's, setup's) runs inside bubblewrap.

Why each piece is there:

- An allowlist, not the host: the root starts empty and gets the system's executables and
  libraries, a minimal ``/etc``, the worker's Python and what the operator adds, all read-only
  (:mod:`codeworker.sandbox.rootfs` says exactly what), then is made read-only itself. With
  ``--cap-drop ALL`` nothing outside the checkout can be written, not even by root, and no
  capability is left to remount anything.
- ``--unshare-net``, ``--unshare-pid``, ``--unshare-ipc``, ``--unshare-uts``: no network, no view
  of the worker's processes (whose ``/proc/<pid>/environ`` holds the token), and a private pid 1
  whose death takes every process of the command with it.
- Setup alone gets a network (``CODEWORKER_SETUP_NETWORK``): by default an outbound-only one of its
  own, slirp4netns attached to that empty namespace (:mod:`codeworker.sandbox.network`), which does not
  reach the host's loopback (Redis, the worker's HTTP port) or 169.254.0.0/16 (cloud metadata).
- ``--clearenv`` plus an allowlist: the worker's credentials (GITHUB_TOKEN, ANTHROPIC_API_KEY,
  REDIS_URL, ...) never reach a command, whatever the worker's environment holds.
- Bound on top: the checkout read-write, its repository's mirror read-only (git's objects, refs,
  config, hooks) with every worktree's admin dir hidden, and the job's setup cache (read-only,
  read-write for setup itself), with its ``node_modules`` also at the checkout's for a JavaScript
  repository (a mount, so nothing of it is in the checkout's files or a commit). Anything secret
  that lies inside something bound (the worker's HOME, the trajectory directory, the scanner's
  virtualenv, ``/run/secrets``, other jobs' checkouts, the setup cache root) is hidden behind an
  empty read-only tmpfs, so an operator's ``CODEWORKER_SANDBOX_EXTRA_RO=/opt`` does not bring the
  scanner under ``/opt`` with it.
- The worktree's admin directory (HEAD, index, commondir, gitdir) is shown as a private writable
  copy (:class:`GitView`): ``git status``, ``diff``, ``checkout --`` and ``restore`` work, but a
  command that moves HEAD, rewrites the index or commondir, or plants ``config.worktree`` or hooks
  changes only its own view. The worker commits and pushes through the real admin dir, which no
  command can write, and never through the checkout's ``.git`` file, which any command can.
- Limits come from ``prlimit`` inside the sandbox (address space, CPU seconds, processes, file
  size, no core files), because rlimits are inherited by everything the command forks and need no
  privilege. Inside, not on bubblewrap: the kernel counts RLIMIT_NPROC per user namespace, and
  bubblewrap's namespace gives each command a count of its own, where a limit set before it would
  count every job's processes together; set from outside on the sandbox's pid 1 while it waits on
  ``--block-fd``, they would save prlimit's exec, but a worker that died meanwhile would let the
  command run without them. The private ``/tmp`` is a tmpfs of ``CODEWORKER_SANDBOX_TMP_MB``.
  The worker reads a command's output into a bounded buffer (head and tail), so one that prints
  without end costs it a few MB (:class:`~codeworker.sandbox.commands.BoundedOutput`).
  RLIMIT_NPROC is ignored by the kernel for uid 0, so the process limit only holds when the
  worker runs as an unprivileged user (as the container image does); the pid namespace still
  guarantees that every process dies with the command.
- The timeout kills bwrap's process group; ``--die-with-parent`` on the sandbox's pid 1 and the
  pid namespace then kill everything inside, including children that called ``setsid``.
- What a command costs over a bare ``subprocess.run`` (about 4 ms on two cores, ``bench/sandbox.py``)
  is bubblewrap's exec, its namespaces and mounts, and prlimit's exec, no more: an exec costs
  about a millisecond here and bubblewrap reads the whole mount table again for every mount. So
  ``/etc`` is one bind of a copy (:class:`~codeworker.sandbox.rootfs.EtcCopy`), not one per entry;
  what stays the same from one command to the next is worked out once per sandbox
  (:class:`Layout`); and bubblewrap is started by ``posix_spawn`` with every signal at its default
  (:func:`~codeworker.sandbox.commands.run_process`), not through ``env --default-signal``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from codeworker.config import Settings, SetupNetwork
from codeworker.sandbox.commands import CommandResult, Interrupts, command_env, run_process
from codeworker.sandbox.network import TAP, NetworkUnavailable, UserNetwork
from codeworker.sandbox.rootfs import SYSTEM_DIRS, EtcCopy, python_paths, system_args, visible
from codeworker.sandbox.setup_cache import CacheMount
from codeworker.secrets.scanner import SCANNER_VENV

log = logging.getLogger(__name__)

SECRET_MOUNTS = (Path("/run/secrets"), Path("/var/run/secrets"))
"""Where Docker and Kubernetes put secrets and service-account tokens."""

SANDBOX_TMP = "/tmp"  # noqa: S108 - a private tmpfs inside the sandbox, not the host's /tmp
"""The sandbox's private /tmp, also its HOME: empty at every command, gone after it."""

SEARCH_PATHS = ("PATH", "PYTHONPATH")
"""Variables that a caller's ``env`` prepends to instead of replacing."""

PROBE_TIMEOUT = 15.0
"""Seconds the start-up probe of bubblewrap may take."""


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces, and unsandboxed commands are not allowed."""


PROBE_SANDBOX = (
    *system_args(),
    *("--dir", "/etc", "--dev", "/dev", "--proc", "/proc", "--tmpfs", SANDBOX_TMP),
    *("--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--cap-drop", "ALL"),
    *("--die-with-parent", "--new-session", "--clearenv"),
)
"""The start-up probes' sandbox: every namespace and restriction a command gets."""


@lru_cache(maxsize=8)
def sandbox_problem(bwrap: str) -> str | None:
    """None when ``bwrap`` can build the sandbox we use; otherwise why not (cached per process)."""
    executable = shutil.which(bwrap)
    if executable is None:
        return f"bubblewrap ({bwrap!r}) is not installed or not on PATH"
    argv = [executable, *PROBE_SANDBOX, "/bin/sh", "-c", "exit 0"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap ({executable}) cannot run: {exc}"
    if done.returncode != 0:
        return f"bubblewrap ({executable}) cannot create its namespaces: {done.stderr.strip()[-300:]}"
    return None


@lru_cache(maxsize=8)
def _probe_network(bwrap: str, slirp4netns: str) -> str | None:
    """None when ``slirp4netns`` can give a sandbox of ``bwrap`` (which works) the isolated setup
    network; otherwise why not (cached per process)."""
    executable = shutil.which(slirp4netns)
    if executable is None:
        return f"slirp4netns ({slirp4netns!r}) is not installed or not on PATH"
    # The tap device is up and routed (shell builtins only: the probe's environment has no PATH).
    command = f'while read -r device _; do [ "$device" = {TAP} ] && exit 0; done < /proc/net/route; exit 1'
    try:
        with UserNetwork(executable) as network:
            argv = [
                shutil.which(bwrap) or bwrap,
                *PROBE_SANDBOX,
                *network.bwrap_args(),
                *network.gated(["/bin/sh", "-c", command]),
            ]
            done = run_process(
                argv,
                command,
                None,
                {"PATH": "/usr/bin:/bin"},
                PROBE_TIMEOUT,
                network.pass_fds,
                network.attach,
            )
    except NetworkUnavailable as exc:
        return f"slirp4netns ({executable}) cannot give setup its network: {exc}"
    if not done.ok:
        return f"slirp4netns ({executable}) gave setup no network: {done.output.strip()[-300:]}"
    return None


def check_sandbox(settings: Settings) -> None:
    """Refuse to start a worker whose commands could not be confined (call at worker start).

    With ``allow_unsandboxed`` the worker starts anyway and says so once, loudly.
    """
    problem = sandbox_problem(settings.bwrap)
    if problem is not None:
        if not settings.allow_unsandboxed:
            raise SandboxUnavailable(
                f"{problem}; install bubblewrap or set CODEWORKER_ALLOW_UNSANDBOXED=true (unsafe)"
            )
        _warn_unsandboxed(problem)
        return
    missing = [str(path) for path in settings.sandbox_extra_ro if not path.exists()]
    if missing:
        named = ", ".join(missing)
        raise SandboxUnavailable(f"CODEWORKER_SANDBOX_EXTRA_RO names paths that do not exist: {named}")
    problem = network_problem(settings)
    if problem is None:
        return
    if not settings.allow_unsandboxed:
        raise SandboxUnavailable(
            f"{problem}; install slirp4netns, set CODEWORKER_SETUP_NETWORK=none (setup without network)"
            " or CODEWORKER_ALLOW_UNSANDBOXED=true (setup with the host's network: unsafe)"
        )
    _warn_host_network(problem)


def network_problem(settings: Settings) -> str | None:
    """Why setup cannot have the isolated network it is configured for; None when it can (or
    need not)."""
    if settings.setup_network != "isolated":
        return None
    return _probe_network(settings.bwrap, settings.slirp4netns)


@lru_cache(maxsize=1)
def _warn_unsandboxed(problem: str) -> None:
    log.warning("repository commands run WITHOUT a sandbox (CODEWORKER_ALLOW_UNSANDBOXED): %s", problem)


@lru_cache(maxsize=1)
def _warn_host_network(problem: str) -> None:
    log.warning("setup commands run with the HOST's network (CODEWORKER_ALLOW_UNSANDBOXED): %s", problem)


@dataclass(frozen=True)
class Mounts:
    """What one command may see beyond the read-only host: paths bound read-write or read-only."""

    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()
    replaced: tuple[tuple[Path, Path], ...] = ()
    """(source, target): a writable ``source`` shown at ``target``, in place of what is there."""


@dataclass(frozen=True)
class GitView:
    """A worktree's admin directory in the mirror and the job's private, writable copy of it."""

    admin: Path
    copy: Path

    @classmethod
    def of(cls, admin: Path) -> GitView:
        """Copy ``admin`` (a few small files: HEAD, index, commondir, gitdir) to a new directory."""
        copy = Path(tempfile.mkdtemp(prefix="cw-git-"))
        shutil.copytree(admin, copy, symlinks=True, dirs_exist_ok=True)
        return cls(admin, copy)

    def remove(self) -> None:
        shutil.rmtree(self.copy, ignore_errors=True)


@dataclass(frozen=True)
class Sandbox:
    """Runs commands for one checkout; ``hidden`` paths are replaced by empty read-only dirs."""

    settings: Settings
    checkout: Path
    mounts: Mounts = Mounts()
    hidden: tuple[Path, ...] = ()
    limits: bool = True
    """Apply prlimit's CPU/memory/process limits (setup too: pip is a command like any other)."""
    fallback_home: Path = Path(SANDBOX_TMP)
    """HOME and TMPDIR of commands when running unsandboxed (a private directory of the job)."""
    cache: CacheMount | None = None
    """The setup result commands use (read-only), or that setup is writing (read-write)."""
    interrupts: Interrupts | None = None
    """What kills a running command before its timeout (the job's cancellation)."""
    etc: EtcCopy = field(default_factory=EtcCopy, compare=False, repr=False)
    """The ``/etc`` its commands see, copied at the first command (shared by :meth:`with_cache` and
    by the other sandboxes of a job)."""

    @classmethod
    def for_checkout(
        cls,
        settings: Settings,
        checkout: Path,
        workspace_roots: Sequence[Path],
        git: GitView | None = None,
        scratch: Path | None = None,
        interrupts: Interrupts | None = None,
        etc: EtcCopy | None = None,
    ) -> Sandbox:
        """The sandbox of a worktree: the checkout writable, the mirror readable with every
        worktree's admin dir hidden and this one's private copy in its place, ``scratch`` writable;
        its ``/etc`` is ``etc`` when another sandbox of the same job has one."""
        writable = [checkout]
        readable: list[Path] = []
        replaced: list[tuple[Path, Path]] = []
        hidden = [*workspace_roots, settings.cache_root]
        if git is not None:
            mirror = git.admin.parent.parent
            readable.append(mirror)
            hidden.append(mirror / "worktrees")  # other jobs' index files and HEADs
            replaced.append((git.copy, git.admin))
        if scratch is not None:
            writable.append(scratch)
        mounts = Mounts(tuple(writable), tuple(readable), tuple(replaced))
        return cls(
            settings,
            checkout,
            mounts,
            tuple(hidden),
            fallback_home=scratch or Path(SANDBOX_TMP),
            interrupts=interrupts,
            etc=etc or EtcCopy(),
        )

    def with_cache(self, cache: CacheMount | None) -> Sandbox:
        """The same sandbox with a setup cache entry bound (read-only unless setup is writing it)."""
        return dataclasses.replace(self, cache=cache)

    @property
    def confined(self) -> bool:
        """False only when bubblewrap is unusable and the operator allowed running without it."""
        problem = sandbox_problem(self.settings.bwrap)
        if problem is None:
            return True
        check_sandbox(self.settings)  # raises unless allowed
        return False

    def run(
        self,
        command: str | Sequence[str],
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        network: SetupNetwork = "none",
    ) -> CommandResult:
        """Run ``command`` (a shell string or an argv) in the checkout; never raises for its failure.

        ``network`` is for setup alone. Raises :class:`~codeworker.sandbox.network.NetworkUnavailable` when
        the isolated network cannot be attached (the command has not run then)."""
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        shown = command if isinstance(command, str) else subprocess.list2cmdline(argv)
        environment = self.environment(env)
        argv = self._limited(argv)
        timeout = timeout or self.settings.command_timeout
        if not self.confined:
            return run_process(argv, shown, self.checkout, environment, timeout, interrupts=self.interrupts)
        outer_env = {"PATH": "/usr/bin:/bin"}
        if network == "isolated" and network_problem(self.settings) is not None:
            check_sandbox(self.settings)  # raises unless allowed
            network = "host"
        if network != "isolated":
            argv = self.bwrap_argv(argv, environment, network)
            return run_process(argv, shown, None, outer_env, timeout, interrupts=self.interrupts)
        with UserNetwork(self.settings.slirp4netns) as user_network:
            argv = self.bwrap_argv(user_network.gated(argv), environment, network, user_network.bwrap_args())
            return run_process(
                argv,
                shown,
                None,
                outer_env,
                timeout,
                user_network.pass_fds,
                user_network.attach,
                self.interrupts,
            )

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The allowlisted environment with HOME and TMPDIR in the private /tmp, plus ``extra``."""
        home = Path(SANDBOX_TMP) if self.confined else self.fallback_home
        env = command_env(home)
        env.update(TMPDIR=str(home), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
        if self.cache is not None:
            env.update(self.cache.environment(env["PATH"], self.confined))
        for name, value in (extra or {}).items():
            # Search paths are extended, not replaced: the setup cache stays importable.
            joined = name in SEARCH_PATHS and env.get(name)
            env[name] = f"{value}{os.pathsep}{env[name]}" if joined else value
        return env

    def bwrap_argv(
        self,
        argv: list[str],
        env: Mapping[str, str],
        network: SetupNetwork = "none",
        network_args: Sequence[str] = (),
    ) -> list[str]:
        """The full bubblewrap command line (public so tests and operators can read it).

        Only ``host`` keeps the host's network; ``isolated`` needs ``network_args`` from a
        :class:`~codeworker.sandbox.network.UserNetwork` to have any network at all."""
        layout = self._layout
        # Checked at every command: a directory to hide may appear mid-job (the trajectories).
        hidden = [str(path) for path in layout.hideable if path.is_dir()]
        args = [layout.bwrap, *layout.system]
        args += ["--ro-bind", str(self.etc.path(network if network != "none" else None)), "/etc"]
        args += ["--dev", "/dev", "--proc", "/proc"]
        args += ["--size", str(self.settings.sandbox_tmp_mb * 1024 * 1024), "--tmpfs", SANDBOX_TMP]
        for path in layout.readable:
            args += ["--ro-bind", path, path]
        for path in hidden:
            args += ["--tmpfs", path]
        for bound in self.mounts.writable:
            args += ["--bind", str(bound), str(bound)]
        for source, target in self.mounts.replaced:
            args += ["--bind", str(source), str(target)]
        if self.cache is not None:
            bind = "--bind" if self.cache.writable else "--ro-bind"
            args += [bind, str(self.cache.source), str(self.cache.target)]
            for name in self.cache.checkout_dirs:
                source, target = self.cache.source / name, self.checkout / name
                # Over a directory or nothing (bubblewrap makes the mount point), never through a
                # link the repository committed: the bind would land wherever it points.
                if source.is_dir() and not target.is_symlink() and (target.is_dir() or not target.exists()):
                    args += [bind, str(source), str(target)]
            for name in () if self.cache.writable else self.cache.private_dirs:
                # Mount points made by setup (the entry is read-only now); shown empty, per command.
                private = self.cache.source / name
                if private.is_dir() and not private.is_symlink():
                    size = str(self.settings.sandbox_tmp_mb * 1024 * 1024)
                    args += ["--size", size, "--tmpfs", str(self.checkout / name)]
        for path in hidden:
            args += ["--remount-ro", path]
        if network != "host":
            args += ["--unshare-net", *network_args]
        args += ["--remount-ro", "/"]
        args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        args += ["--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv"]
        for name, value in sorted(env.items()):
            args += ["--setenv", name, value]
        args += ["--chdir", str(self.checkout), "--", *argv]
        return args

    @cached_property
    def _layout(self) -> Layout:
        readable = [*python_paths(SYSTEM_DIRS), *self.settings.sandbox_extra_ro, *self.mounts.readable]
        return Layout(
            bwrap=shutil.which(self.settings.bwrap) or self.settings.bwrap,
            system=tuple(system_args()),
            readable=tuple(map(str, readable)),
            hideable=tuple(self._hideable([*SYSTEM_DIRS, *readable])),
            limits=tuple(self._limits()),
        )

    def _hideable(self, shown: Sequence[Path]) -> list[Path]:
        """Directories to hide (parents first) when they exist: those that lie inside something
        ``shown`` read-only, none that is bound itself."""
        home = Path(os.environ.get("HOME", "/root"))
        candidates = [*self.hidden, home, self.settings.trajectory_dir, SCANNER_VENV, *SECRET_MOUNTS]
        roots = [path.resolve() for path in shown]
        bound = {p.resolve() for p in (*self.mounts.writable, *self.mounts.readable)}
        found = {path.resolve() for path in candidates}
        hideable = [
            real for real in found if real not in bound and real not in roots and visible(real, roots)
        ]
        return sorted(hideable, key=lambda p: (len(p.parts), str(p)))

    def _limited(self, argv: list[str]) -> list[str]:
        return [*self._layout.limits, *argv]

    def _limits(self) -> list[str]:
        """prlimit and its arguments: address space, CPU time, processes, file size, no core dumps."""
        prlimit = shutil.which("prlimit")
        if not self.limits or prlimit is None:
            return []
        settings = self.settings
        return [
            prlimit,
            f"--as={settings.sandbox_memory_mb * 1024 * 1024}",
            f"--cpu={settings.sandbox_cpu_seconds}",
            f"--nproc={settings.sandbox_max_processes}",
            f"--fsize={settings.sandbox_file_mb * 1024 * 1024}",
            "--core=0",
            "--",
        ]


@dataclass(frozen=True)
class Layout:
    """What of a sandbox's bubblewrap command line stays the same from one command to the next,
    worked out at its first command: the host's file system is looked at once, not at every one."""

    bwrap: str
    system: tuple[str, ...]
    """:func:`~codeworker.sandbox.rootfs.system_args`."""
    readable: tuple[str, ...]
    """The worker's Python, ``CODEWORKER_SANDBOX_EXTRA_RO`` and the sandbox's own read-only mounts."""
    hideable: tuple[Path, ...]
    """Directories inside something shown, hidden whenever they exist."""
    limits: tuple[str, ...]
    """The prlimit prefix of every command (empty without limits)."""
