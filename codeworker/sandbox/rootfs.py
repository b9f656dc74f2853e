"""What a sandboxed command sees of the host: an allowlist, built up from an empty root.

A denylist (the host's ``/`` minus a list of known secret places) cannot know every place an
operator keeps a credential: an environment file under ``/etc``, a cloud CLI's configuration under
``/opt``, a secret mounted somewhere unusual. So a command's root starts empty (bubblewrap's own
tmpfs, read-only once built) and gets only:

- the system's executables and libraries: :data:`SYSTEM_DIRS`, read-only;
- a minimal ``/etc`` of :data:`ETC_ENTRIES` (loader, name service, certificates, time zone, git's
  and Python's own configuration), generated ``passwd`` and ``group`` files that name the
  sandbox's user alone, and for setup (the one command with a network) :data:`SETUP_ETC_ENTRIES`,
  all copied into one read-only directory (:class:`EtcCopy`);
- the worker's Python installation (a venv and its base, wherever they live), read-only;
- what the operator adds with ``CODEWORKER_SANDBOX_EXTRA_RO`` (a toolchain under ``/opt``),
  read-only; a repository can never add anything;
- and, bound by :class:`~codeworker.sandbox.bubblewrap.Sandbox`: the checkout and its private git
  view (writable), the repository's own mirror (read-only, for git's objects), the job's setup
  cache, a private ``/tmp``, ``/dev`` and ``/proc``.

Nothing else: no ``/opt``, ``/srv``, ``/var``, ``/run``, ``/home``, ``/root``, ``/mnt``, ``/media``,
no other job's checkout, no other repository's mirror.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import sys
import tempfile
import threading
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

from codeworker.config import SetupNetwork

SYSTEM_DIRS = tuple(Path(p) for p in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"))
"""Executables and libraries; on a merged-/usr system all but ``/usr`` are links into it."""

ETC_ENTRIES = (
    "alternatives",  # Debian's awk, editor, java... are links through /etc/alternatives
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "hosts",
    "host.conf",
    "gai.conf",
    "services",
    "protocols",
    "ssl/certs",
    "ssl/openssl.cnf",
    "pki/tls/certs",
    "pki/ca-trust/extracted",
    "localtime",
    "timezone",
    "os-release",
    "mime.types",
    "gitconfig",
    "python3",
    f"python{sys.version_info.major}.{sys.version_info.minor}",
)
"""What of ``/etc`` every command sees, where the host has it (``ssl/private`` is not in it)."""

SETUP_ETC_ENTRIES = ("resolv.conf", "pip.conf", "npmrc")
"""What of ``/etc`` setup also sees when it has the host's network: the resolver and the package
managers' host-wide configuration (an index mirror, its CA)."""

SANDBOX_HOME = "/tmp"  # noqa: S108 - the sandbox's private tmpfs
"""The home directory the generated ``passwd`` gives the sandbox's user."""

NOBODY = 65534
"""The overflow uid and gid: what files of unmapped owners show as."""


def visible(path: Path, roots: Iterable[Path]) -> bool:
    """Whether ``path`` lies in (or is) one of ``roots``."""
    return any(path == root or path.is_relative_to(root) for root in roots)


def system_args() -> list[str]:
    """Bubblewrap's arguments for :data:`SYSTEM_DIRS`: links kept as links, directories bound."""
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if path.is_symlink():
            args += ["--symlink", str(path.readlink()), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


def etc_entries(setup_network: SetupNetwork | None) -> list[str]:
    """The allowlisted entries of ``/etc`` for a command.

    ``setup_network`` is the network of a setup command ("host" adds :data:`SETUP_ETC_ENTRIES`,
    "isolated" adds the package managers' configuration, its resolver coming from
    :mod:`~codeworker.sandbox.network`); None for every other command."""
    names = list(ETC_ENTRIES)
    if setup_network == "host":
        names += SETUP_ETC_ENTRIES
    elif setup_network == "isolated":
        names += [name for name in SETUP_ETC_ENTRIES if name != "resolv.conf"]
    return names


class EtcCopy:
    """A sandbox's ``/etc``: one directory, bound read-only, holding a copy of each allowlisted
    entry the host has (:func:`etc_entries`) and the generated ``passwd`` and ``group``.

    One bind mount rather than one per entry: bubblewrap reads the whole mount table again for
    every mount it makes, so twenty entries of ``/etc`` cost each command about a millisecond. The
    copy is made at the first command (one per network: setup sees more of ``/etc``) and removed
    by :meth:`remove` (a job's :class:`~codeworker.sandbox.checkout.Checkout` does it when it
    closes), else when the last sandbox holding it is gone: a job's commands see ``/etc`` as it
    was when the job ran its first. A link whose target the sandbox shows stays a link; any other
    entry is copied as what it points to, and what the worker cannot read is left out (a command
    could not read it either).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[SetupNetwork | None, Path] = {}
        self._owner = os.getpid()
        weakref.finalize(self, _remove_copies, self._owner, self._made)

    def path(self, setup_network: SetupNetwork | None) -> Path:
        """The directory to bind at ``/etc`` for a command with ``setup_network``."""
        with self._lock:
            made = self._made.get(setup_network)
            if made is None:
                made = self._made[setup_network] = _copy_etc(setup_network)
            return made

    def remove(self) -> None:
        """Remove the copies made so far; a later command makes a new one."""
        with self._lock:
            _remove_copies(self._owner, self._made)


def _remove_copies(owner: int, made: dict[SetupNetwork | None, Path]) -> None:
    if os.getpid() == owner:  # a forked child (Celery's prefork pool) leaves its parent's alone
        for path in made.values():
            shutil.rmtree(path, ignore_errors=True)
        made.clear()


def _copy_etc(setup_network: SetupNetwork | None) -> Path:
    root = Path(tempfile.mkdtemp(prefix="cw-etc-"))
    root.chmod(0o755)
    shown = [*SYSTEM_DIRS, Path("/etc")]
    for name in etc_entries(setup_network):
        source, target = Path("/etc") / name, root / name
        if not source.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink() and visible(source.resolve(), shown):
            target.symlink_to(source.readlink())
            continue
        # What the worker cannot read is left out: copytree raises only after copying the rest.
        with contextlib.suppress(OSError):
            if source.is_dir():
                shutil.copytree(source, target, symlinks=True)
            else:
                shutil.copy2(source, target)
    if setup_network == "isolated":
        (root / "resolv.conf").touch()  # where the isolated network binds its resolver's address
    for name, text in identity_files().items():
        (root / name).write_text(text)
        (root / name).chmod(0o644)
    return root


def identity_files() -> dict[str, str]:
    """``passwd`` and ``group`` of the sandbox's ``/etc`` (by name), naming only root, the sandbox's
    user and nobody, with the private /tmp as home: the host's accounts are none of a command's
    business."""
    uid, gid = os.getuid(), os.getgid()
    users = {0: ("root", 0), uid: (_user_name(uid), gid), NOBODY: ("nobody", NOBODY)}
    groups = {0: "root", gid: _group_name(gid), NOBODY: "nogroup"}
    passwd = "".join(
        f"{name}:x:{number}:{group}:{name}:{SANDBOX_HOME}:/bin/sh\n"
        for number, (name, group) in users.items()
    )
    group = "".join(f"{name}:x:{number}:\n" for number, name in groups.items())
    return {"passwd": passwd, "group": group}


def python_paths(roots: Sequence[Path]) -> list[Path]:
    """The worker's Python (venv and base installation) where ``roots`` do not already show it:
    "python" in a repository's command is the worker's interpreter until setup lands."""
    wanted = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    return sorted(path for path in wanted if not visible(path, roots))


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "codeworker"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return "codeworker"
