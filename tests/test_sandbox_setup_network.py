"""The setup command's network, for real: slirp4netns and bubblewrap in real worktrees of a real git server.

Isolated setup has a network of its own (slirp4netns) but not the host's loopback, nor the metadata
address; ``none`` has only loopback; ``host`` shares the host's. slirp4netns ends with the setup,
whether it times out, fails, or its worker is killed (even while the network comes up), runs
without the worker's credentials, and a worker without it refuses to start, saying why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from codeworker.config import SetupNetwork
from codeworker.loopback.waiting import wait_until
from codeworker.loopback.worker import BIN
from codeworker.sandbox.bubblewrap import SandboxUnavailable, check_sandbox
from codeworker.sandbox.checkout import Checkout
from codeworker.sandbox.commands import CommandResult
from codeworker.sandbox.setup_cache import SetupFailed
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support import sandbox_fixtures
from tests.support.checkouts import FILES, Checkouts, needs_bwrap
from tests.support.sandbox_fixtures import alive, processes_with

pytestmark = needs_bwrap

# The shared fixtures, bound to this module's names: pytest finds them here for these tests only.
env = sandbox_fixtures.env
checkout = sandbox_fixtures.checkout

# -- setup's network ----------------------------------------------------------------------------

PROBE = """
import socket, sys

def attempt(host, port):
    try:
        socket.create_connection((host, port), 3).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__ + ": " + exc.strerror

routes = open("/proc/net/route").read()
print("routes:", routes)
port = int(sys.argv[1])
print("loopback:", attempt("127.0.0.1", port))
if "0000FEA9" in routes:  # 169.254.0.0/16 has its route: nothing can leave for it
    print("metadata:", attempt("169.254.169.254", 80))
if "0202000A" in routes:  # the gateway exists: the refusal comes from slirp4netns
    print("gateway:", attempt("10.0.2.2", port))
"""
"""Setup's view of its network: the routes, and connections to the host's loopback listener."""


def _probing_setup(env: Checkouts, port: int, mode: SetupNetwork) -> dict[str, str]:
    """Run setup in ``mode`` with a setup command that records its network into the cache; what
    it recorded (file name: contents)."""
    setup = (
        f'python probe.py {port} > "$CODEWORKER_CACHE/connect" && ip -4 -o addr > "$CODEWORKER_CACHE/addr"'
        ' && { cat /etc/resolv.conf || echo absent; } > "$CODEWORKER_CACHE/resolv"'
    )
    files = {**FILES, "probe.py": PROBE, ".codeworker.yml": yaml.safe_dump({"setup_command": setup})}
    worktree = env.worktree(env.repo(files))
    settings = env.settings.model_copy(update={"setup_network": mode})
    box = env.checkout(worktree, settings=settings)
    try:
        result = box.setup()
        assert result is not None and result.ok, result and result.output
        cache = box.sandbox.cache
        assert cache is not None
        return {path.name: path.read_text() for path in cache.source.iterdir()}
    finally:
        box.close()
        worktree.remove()


def _children(parent: int, name: str) -> list[int]:
    """Processes called ``name`` whose parent is ``parent`` (zombies included: not yet reaped)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if f"Name:\t{name}\n" in status and f"PPid:\t{parent}\n" in status:
            found.append(int(entry.name))
    return found


def _slirps() -> list[int]:
    """The slirp4netns processes this process started that still exist."""
    return _children(os.getpid(), "slirp4netns")


def test_isolated_setup_has_a_network_but_not_the_hosts_loopback(env: Checkouts, listener: int) -> None:
    seen = _probing_setup(env, listener, "isolated")

    assert "tap0    inet 10.0.2.100/24" in seen["addr"], seen["addr"]
    routes = seen["connect"]
    assert re.search(r"tap0\s+00000000\s+0202000A", routes), routes  # default route via 10.0.2.2
    assert "loopback: ConnectionRefusedError" in routes  # the sandbox's own, empty 127.0.0.1
    assert "gateway: OSError: Network is unreachable" in routes  # slirp4netns refuses 10.0.2.2
    assert "metadata: OSError: No route to host" in routes  # the kernel refuses 169.254.0.0/16
    assert seen["resolv"] == "nameserver 10.0.2.3\n"  # slirp4netns's DNS, not the host's resolver
    assert _slirps() == []


def test_setup_without_network_has_only_loopback(env: Checkouts, listener: int) -> None:
    seen = _probing_setup(env, listener, "none")

    assert [line.split()[1] for line in seen["addr"].splitlines()] == ["lo"]
    assert "loopback: ConnectionRefusedError" in seen["connect"]
    assert "gateway:" not in seen["connect"] and "metadata:" not in seen["connect"]
    assert seen["resolv"] == "absent\n"  # no network, no resolver
    assert _slirps() == []


def test_host_network_setup_reaches_the_hosts_loopback(env: Checkouts, listener: int) -> None:
    seen = _probing_setup(env, listener, "host")

    assert "loopback: connected" in seen["connect"]
    assert seen["resolv"] == Path("/etc/resolv.conf").read_text()


def test_slirp4netns_ends_with_a_setup_that_times_out_or_fails(env: Checkouts) -> None:
    settings = env.settings.model_copy(update={"setup_network": "isolated", "setup_timeout": 3.0})
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # slirp4netns really runs while the command does
        while not stop.is_set():
            seen.extend(_slirps())
            time.sleep(0.05)

    for setup, error in (("sleep 271.82", "timed out"), ("echo started; exit 3", "exited 3")):
        config = yaml.safe_dump({"setup_command": setup})
        worktree = env.worktree(env.repo({**FILES, ".codeworker.yml": config}))
        box = env.checkout(worktree, settings=settings)
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with pytest.raises(SetupFailed, match=error):
                box.setup()
        finally:
            stop.set()
            watcher.join()
            stop.clear()
            box.close()
            worktree.remove()
        if setup.startswith("sleep"):
            assert seen, "no slirp4netns seen while setup ran"
            assert processes_with("271.82") == []
        assert _slirps() == []


SETUP_IN_A_WORKER = """
import sys
from pathlib import Path
from codeworker.config import Settings
from codeworker.sandbox.bubblewrap import Mounts, Sandbox

where = Path(sys.argv[1])
box = Sandbox(Settings(slirp4netns=sys.argv[2]), where, Mounts(writable=(where,)))
box.run("touch started; sleep 314.15", 600, network="isolated")
"""
"""A worker process that runs one setup-like command with the isolated network."""


def _setup_in_a_worker(where: Path, slirp4netns: str = "slirp4netns") -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SETUP_IN_A_WORKER, str(where), slirp4netns])


def test_slirp4netns_and_the_command_end_when_the_worker_is_killed(tmp_path: Path) -> None:
    worker = _setup_in_a_worker(tmp_path)
    try:
        assert wait_until(lambda: (tmp_path / "started").exists())  # the command runs
        slirp = _children(worker.pid, "slirp4netns")
        assert slirp
        worker.kill()
        worker.wait()
        assert wait_until(lambda: not any(alive(pid, "slirp4netns") for pid in slirp))
        assert wait_until(lambda: processes_with("314.15") == [])
    finally:
        worker.kill()
        worker.wait()


def test_a_worker_killed_while_the_network_comes_up_never_runs_the_command(tmp_path: Path) -> None:
    # A slirp4netns that is slow to start, after the start-up probe: the worker dies meanwhile.
    slow = tmp_path / "slow-slirp4netns"
    slow.write_text(
        '#!/bin/sh\nif [ -e "$0.probed" ]; then touch "$0.starting"; sleep 2; else touch "$0.probed"; fi\n'
        'exec slirp4netns "$@"\n'
    )
    slow.chmod(0o755)
    worker = _setup_in_a_worker(tmp_path, str(slow))
    try:
        assert wait_until(lambda: Path(f"{slow}.starting").exists())
        worker.kill()
        worker.wait()
        # bubblewrap (it binds tmp_path) and the slow wrapper (it lives there) end: had the gate let
        # the command through, bubblewrap would stay, waiting on its sleep.
        wait_until(lambda: processes_with(str(tmp_path)) == [], what="bubblewrap and the wrapper gone")
        assert not (tmp_path / "started").exists()
        assert wait_until(lambda: processes_with("314.15") == [])
    finally:
        worker.kill()
        worker.wait()


def test_check_sandbox_refuses_a_missing_slirp4netns(env: Checkouts) -> None:
    isolated = env.settings.model_copy(update={"setup_network": "isolated"})
    check_sandbox(isolated)  # the real one works
    bogus = isolated.model_copy(update={"slirp4netns": "/nonexistent/slirp4netns"})
    with pytest.raises(SandboxUnavailable, match=r"slirp4netns.*CODEWORKER_SETUP_NETWORK=none"):
        check_sandbox(bogus)
    check_sandbox(bogus.model_copy(update={"setup_network": "none"}))
    check_sandbox(bogus.model_copy(update={"allow_unsandboxed": True}))


def test_a_worker_without_slirp4netns_refuses_to_start_saying_why(worker_env: dict) -> None:
    env = {**os.environ, **worker_env, "CODEWORKER_SLIRP4NETNS": "/nonexistent/slirp4netns"}
    env.pop("CODEWORKER_SETUP_NETWORK", None)  # the default: isolated
    done = subprocess.run(
        [str(BIN / "codeworker"), "worker", "-c", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "refuses to start: slirp4netns ('/nonexistent/slirp4netns') is not installed" in done.stderr


def test_slirp4netns_runs_without_the_workers_credentials(
    checkout: Checkout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It parses whatever the sandbox sends: a compromise of it must not find the token in its environ."""
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    done: list[CommandResult] = []
    runner = threading.Thread(
        target=lambda: done.append(checkout.sandbox.run("sleep 3", 30, network="isolated"))
    )
    runner.start()
    try:
        (pid,) = wait_until(_slirps, what="slirp4netns running")
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        runner.join()
    assert done and done[0].ok
    assert b"PATH=" in environ
    assert GITHUB_TOKEN.encode() not in environ and ANTHROPIC_KEY.encode() not in environ
