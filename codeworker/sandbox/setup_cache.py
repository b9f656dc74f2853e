"""The setup cache: each repository's setup result, built once and reused by later jobs.

Setup (``setup_command``, or the detected ``pip install``) writes into ``$CODEWORKER_CACHE``; the
result is published under ``cache_root/<repo id>/<key>`` and bound into the sandbox of every later
job whose key matches, read-only (:class:`~codeworker.sandbox.bubblewrap.Sandbox`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from codeworker.sandbox.commands import CommandResult

CACHE_ENV = "CODEWORKER_CACHE"
"""Where a command finds (and setup writes) the repository's cached setup result."""


@dataclass(frozen=True)
class CacheMount:
    """A setup cache entry as commands see it: ``source`` on the host shown at ``target``.

    Setup writes a temporary directory shown at the entry's final path, so anything it records
    (shebangs, .pth files) stays valid once the directory is renamed into place.
    """

    source: Path
    target: Path
    writable: bool = False
    checkout_dirs: tuple[str, ...] = ()
    """Directories of the entry also shown inside the checkout under the same name
    (``node_modules``: Node finds packages only next to the code); sandboxed commands only."""
    private_dirs: tuple[str, ...] = ()
    """Directories of the entry (under ``checkout_dirs``) each command gets empty and writable in
    the checkout: tools' caches, which cannot be written in the read-only entry."""

    def environment(self, path: str, confined: bool = True) -> dict[str, str]:
        """``$CODEWORKER_CACHE``, its ``python`` dir on PYTHONPATH and its ``bin`` dirs on PATH.

        Unconfined (no bubblewrap) nothing is mounted, so commands see the host directory."""
        cache = self.target if confined else self.source
        bins = [str(cache / "bin"), str(cache / "python" / "bin")]
        return {
            CACHE_ENV: str(cache),
            "PYTHONPATH": str(cache / "python"),
            "PATH": os.pathsep.join([*bins, path]),
        }


class SetupFailed(RuntimeError):
    """The repository's setup command failed; the job cannot run its tests, so it stops here."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        how = "timed out" if result.timed_out else f"exited {result.exit_code}"
        tail = result.output.strip()[-2000:]
        super().__init__(f"setup command `{result.command}` {how}:\n{tail}")


class SetupCache:
    """Setup results of one repository under ``cache_root/<repo id>/<key>``, shared by processes.

    An entry exists only once its setup succeeded and wrote something: setup writes a temporary
    directory that is renamed into place, so a reader never sees a half-built entry, and a crash
    leaves only a temporary directory that the next builder of that key removes. Building a key
    holds an ``flock`` so two jobs on one repository do not install the same thing twice. Entries
    are never changed after publication (commands mount them read-only) and may be deleted at any
    time to reclaim space.
    """

    def __init__(self, root: Path, repo: str) -> None:
        self.directory = root / repo

    def entry(self, key: str) -> Path:
        return self.directory / key

    def ready(self, key: str) -> Path | None:
        entry = self.entry(key)
        return entry if entry.is_dir() else None

    @contextlib.contextmanager
    def building(self, key: str) -> Iterator[SetupBuild | None]:
        """Hold the key's lock; yields None when another process published it meanwhile."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.ready(key) is not None:
                yield None
                return
            for stale in self.directory.glob(f".{key}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)  # a builder that died holding the lock
            build = SetupBuild(
                Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=self.directory)), self.entry(key)
            )
            try:
                yield build
            finally:
                shutil.rmtree(build.source, ignore_errors=True)


@dataclass(frozen=True)
class SetupBuild:
    """One setup run's temporary cache directory and where it is published."""

    source: Path
    target: Path

    def mount(self, checkout_dirs: tuple[str, ...] = ()) -> CacheMount:
        """The entry being built, writable; ``checkout_dirs`` are made in it first (a mount
        needs its source)."""
        for name in checkout_dirs:
            (self.source / name).mkdir(exist_ok=True)
        return CacheMount(self.source, self.target, writable=True, checkout_dirs=checkout_dirs)

    def publish(self) -> Path | None:
        """Rename the result into place; None when setup left nothing in the cache to reuse."""
        if not any(self.source.iterdir()):
            return None
        self.source.rename(self.target)
        return self.target
