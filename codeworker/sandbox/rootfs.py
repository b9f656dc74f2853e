"""What a sandboxed command sees of the host: an allowlist, built up from an empty root.

A denylist (the host's ``/`` minus a list of known secret places) cannot know every place an
operator keeps a credential: an environment file under ``/etc``, a cloud CLI's configuration under
``/opt``, a secret mounted somewhere unusual. So a command's root starts empty (bubblewrap's own
tmpfs, read-only once built) and gets only:

- the system's executables and libraries: :data:`SYSTEM_DIRS`, read-only;
- a minimal ``/etc`` of :data:`ETC_ENTRIES` (loader, name service, certificates, time zone, git's
  and Python's own configuration), generated ``passwd`` and ``group`` files that name the
  sandbox's user alone, and for setup (the one command with a network) :data:`SETUP_ETC_ENTRIES`;
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
import sys
from collections.abc import Iterable, Mapping, Sequence
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


def etc_args(setup_network: SetupNetwork | None) -> list[str]:
    """Bubblewrap's arguments for the allowlisted entries of ``/etc`` that exist on the host.

    ``setup_network`` is the network of a setup command ("host" adds :data:`SETUP_ETC_ENTRIES`,
    "isolated" adds the package managers' configuration, its resolver coming from
    :mod:`~codeworker.sandbox.network`); None for every other command. A link whose target the
    sandbox shows is kept a link; any other is bound as what it points to."""
    names = list(ETC_ENTRIES)
    if setup_network == "host":
        names += SETUP_ETC_ENTRIES
    elif setup_network == "isolated":
        names += [name for name in SETUP_ETC_ENTRIES if name != "resolv.conf"]
    shown = [*SYSTEM_DIRS, Path("/etc")]
    args = ["--dir", "/etc"]
    for name in names:
        path = Path("/etc") / name
        if not path.exists():
            continue
        if path.is_symlink() and visible(path.resolve(), shown):
            args += ["--symlink", str(path.readlink()), str(path)]
        else:
            args += ["--ro-bind", str(path), str(path)]
    return args


def identity_files() -> dict[str, str]:
    """``/etc/passwd`` and ``/etc/group`` naming only root, the sandbox's user and nobody, with
    the private /tmp as home: the host's accounts are none of a command's business."""
    uid, gid = os.getuid(), os.getgid()
    users = {0: ("root", 0), uid: (_user_name(uid), gid), NOBODY: ("nobody", NOBODY)}
    groups = {0: "root", gid: _group_name(gid), NOBODY: "nogroup"}
    passwd = "".join(
        f"{name}:x:{number}:{group}:{name}:{SANDBOX_HOME}:/bin/sh\n"
        for number, (name, group) in users.items()
    )
    group = "".join(f"{name}:x:{number}:\n" for number, name in groups.items())
    return {"/etc/passwd": passwd, "/etc/group": group}


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


class DataFiles:
    """Files made for one command and handed to bubblewrap through pipes, so nothing is written
    to disk: ``--ro-bind-data`` reads each pipe as the file's content. Close after bubblewrap
    started (it holds its own copies of the pipes)."""

    def __init__(self, files: Mapping[str, str]) -> None:
        self.args: list[str] = []
        self.fds: list[int] = []
        for target, text in files.items():
            read, write = os.pipe()
            self.fds.append(read)
            with contextlib.closing(os.fdopen(write, "wb")) as pipe:
                pipe.write(text.encode())  # a few hundred bytes, far below a pipe's buffer
            # Readable by everyone: bubblewrap makes such files 0600, its user's alone, by default.
            self.args += ["--perms", "0644", "--ro-bind-data", str(read), target]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> DataFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
