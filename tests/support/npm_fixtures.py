"""A TypeScript project whose Vitest tests need an ``npm ci``, run by workers without network.

``make tools`` fills :data:`NPM_CACHE` once from the lock file of :data:`VITEST_PROJECT` (its
``npm-fixtures`` step, with the network, as it installs the scanner). A test's worker then shows
that cache to its sandboxes read-only (``CODEWORKER_SANDBOX_EXTRA_RO``) and gives setup no network
(``CODEWORKER_SETUP_NETWORK=none``); the project's ``.npmrc`` names the cache, so the ``npm ci`` the
JavaScript profile finds for the repository installs offline, into the setup cache. Without the
cache, or with one made from another lock file, a test fails (it does not skip) and says to run
``make tools``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from demo import typescript as typescript_demo

ROOT = Path(__file__).resolve().parents[2]
VITEST_PROJECT = ROOT / "tests" / "fixtures" / "vitest_project"
"""The project: ``add`` in ``src/calc.ts``, its test, and a lock file pinning Vitest 2.1.9."""
NPM_CACHE = typescript_demo.NPM_CACHE
"""npm's cache holding every tarball that lock file installs on this platform (the Makefile's)."""
STAMP = NPM_CACHE / ".complete"
"""Written last by the Makefile: the SHA-256 of the lock file the cache was filled from."""


def require_npm_cache() -> Path:
    """The offline cache, or the test fails saying how to make it."""
    lock = VITEST_PROJECT / "package-lock.json"
    if not STAMP.is_file():
        pytest.fail(f"no offline npm cache at {NPM_CACHE}: run `make tools` (its npm-fixtures step)")
    if STAMP.read_text().strip() != hashlib.sha256(lock.read_bytes()).hexdigest():
        pytest.fail(f"the npm cache at {NPM_CACHE} was made from another {lock.name}: run `make tools`")
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the TypeScript tests: run `make tools`")
    probe = subprocess.run([node, "--disable-wasm-trap-handler", "-e", "0"], capture_output=True, check=False)
    if probe.returncode != 0:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
        pytest.fail(
            f"node {version.stdout.strip()} lacks --disable-wasm-trap-handler: use Node.js 20.15+ or 22.2+"
        )
    return NPM_CACHE


def project_files() -> dict[str, str]:
    """The project's files for ``git_server.create_repo``, with an ``.npmrc`` (the cache's path is
    this machine's, so it is written here) that makes the ``npm ci`` the worker finds for itself
    install offline from the cache."""
    files = {
        str(path.relative_to(VITEST_PROJECT)): path.read_text()
        for path in sorted(VITEST_PROJECT.rglob("*"))
        if path.is_file()
    }
    files[".npmrc"] = f"cache={NPM_CACHE}\noffline=true\nignore-scripts=true\naudit=false\nfund=false\n"
    return files


def worker_env(cache_root: Path) -> dict[str, str]:
    """What a worker needs on top of the tests' usual environment: the TypeScript demo's
    (:func:`demo.typescript.sandbox_env`). The test itself calls :func:`require_npm_cache` and
    fails there, saying what is missing."""
    return typescript_demo.sandbox_env(cache_root)
