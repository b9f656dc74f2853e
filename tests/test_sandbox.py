"""The sandbox, for real: bubblewrap around commands in real worktrees of a real git server."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from codeworker.config import Settings, SetupNetwork
from codeworker.coordination.keys import repo_id
from codeworker.loopback.gitserver import GitServer
from codeworker.sandbox.bubblewrap import SandboxUnavailable, check_sandbox
from codeworker.sandbox.checkout import Checkout
from codeworker.sandbox.commands import CommandResult, run_process
from codeworker.sandbox.setup_cache import SetupFailed
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support.checkouts import FILES, Checkouts, sandbox_settings
from tests.support.waiting import wait_until
from tests.support.worker import BIN

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

REDIS_CANARY = "redis://cwcanary-redis-url-93d1:6379/0"


@pytest.fixture()
def env(tmp_path: Path, git_server: GitServer, redis_client: redis.Redis) -> Checkouts:
    return Checkouts.create(
        sandbox_settings(tmp_path, GITHUB_TOKEN, sandbox_memory_mb=512), git_server, redis_client
    )


@pytest.fixture()
def checkout(env: Checkouts) -> Iterator[Checkout]:
    worktree = env.worktree(env.repo())
    box = env.checkout(worktree)
    yield box
    box.close()
    worktree.remove()


def _python(code: str) -> list[str]:
    return ["python", "-c", code]  # the worker's interpreter: first on the sandbox's PATH


# -- network ------------------------------------------------------------------------------------


def test_no_network_not_even_loopback(checkout: Checkout, listener: int) -> None:
    # The host can connect: the server is real.
    socket.create_connection(("127.0.0.1", listener), 2).close()

    local = checkout.run(_python(f"import socket; socket.create_connection(('127.0.0.1', {listener}), 2)"))
    remote = checkout.run(_python("import socket; socket.create_connection(('1.1.1.1', 53), 2)"))

    assert local.exit_code != 0 and "Error" in local.output
    assert remote.exit_code != 0 and "Error" in remote.output


# -- credentials --------------------------------------------------------------------------------


def test_worker_credentials_are_invisible(checkout: Checkout, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("REDIS_URL", REDIS_CANARY)
    # The environment, and every process's environment the sandbox can see (pid namespace).
    result = checkout.run("env; cat /proc/[0-9]*/environ | tr '\\0' '\\n'; echo done")

    assert result.ok, result.output
    assert "done" in result.output and "HOME=/tmp" in result.output
    for canary in (GITHUB_TOKEN, ANTHROPIC_KEY, REDIS_CANARY, "GITHUB_TOKEN", "REDIS_URL"):
        assert canary not in result.output


def test_worker_home_and_trajectories_are_hidden(env: Checkouts, checkout: Checkout) -> None:
    env.settings.trajectory_dir.mkdir()
    (env.settings.trajectory_dir / "op.jsonl").write_text("secret trajectory\n")
    home = Path.home()
    result = checkout.run(f"ls -A {home}; cat {env.settings.trajectory_dir}/op.jsonl; echo listed")

    assert "listed" in result.output
    assert "secret trajectory" not in result.output
    listing = checkout.run(f"ls -A {home} | wc -l")
    assert listing.output.strip().splitlines()[-1] in ("0", "1")  # empty, or just the bound Python


# -- file system --------------------------------------------------------------------------------


def test_writes_stay_inside_the_checkout(env: Checkouts, checkout: Checkout) -> None:
    other = env.worktree(env.repo())
    mirror = env.mirrors.mirror_path(checkout._worktree.url)
    marker = f"cw-{uuid.uuid4().hex[:8]}"
    targets = {
        "/etc": Path("/etc") / marker,
        "home": Path.home() / marker,
        "other checkout": other.path / marker,
        "mirror refs": mirror / "refs" / "heads" / marker,
        "workspace root": env.settings.workspace_root / marker,
    }
    try:
        for where, path in targets.items():
            result = checkout.run(["/bin/sh", "-c", f"echo x > {path}"])
            assert result.exit_code != 0, f"{where}: {result.output}"
            assert not path.exists(), where
        mine = checkout.run("echo x > inside.txt && echo y > /tmp/t && cat /tmp/t")
        assert mine.ok and mine.output.strip() == "y"
        assert (checkout.root / "inside.txt").read_text() == "x\n"
    finally:
        other.remove()


def test_another_jobs_checkout_is_not_readable(env: Checkouts, checkout: Checkout) -> None:
    other = env.worktree(env.repo({"secret.txt": "other job's work\n"}))
    try:
        (other.path / "draft.py").write_text("uncommitted\n")
        result = checkout.run(f"cat {other.path}/secret.txt {other.path}/draft.py")
        listing = checkout.run(f"ls {other.path.parent}")
        assert result.exit_code != 0
        assert "other job's work" not in result.output and "uncommitted" not in result.output
        assert listing.output.split() == [checkout.root.name]
    finally:
        other.remove()


def test_git_works_in_the_worktree(checkout: Checkout) -> None:
    (checkout.root / "app.py").write_text("def f():\n    return 2\n")
    status = checkout.run("git status --short")
    diff = checkout.run("git diff")
    log = checkout.run("git log --oneline -n 1")

    assert status.ok and " M app.py" in status.output, status.output
    assert diff.ok and "+    return 2" in diff.output
    assert log.ok and "Initial commit" in log.output


# -- limits -------------------------------------------------------------------------------------


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry.name))
    return found


def _alive(pid: int, marker: str) -> bool:
    """Still running ``marker``: a zombie waiting to be reaped, or a reused pid, is not."""
    try:
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return marker.encode() in cmdline


def test_timeout_kills_forked_children(checkout: Checkout) -> None:
    # setsid: the child even leaves the command's session; the pid namespace still takes it down.
    result = checkout.run("setsid sleep 3141.59 & echo started > started; wait", timeout=1.5)

    assert result.timed_out and result.exit_code is None
    assert (checkout.root / "started").read_text() == "started\n"
    assert _processes_with("3141.59") == []


def test_memory_hog_fails_alone(checkout: Checkout) -> None:
    result = checkout.run(_python("x = bytearray(2 * 1024 ** 3); print('allocated')"))
    assert result.exit_code != 0
    assert "MemoryError" in result.output and "allocated" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="the kernel does not apply RLIMIT_NPROC to uid 0")
def test_fork_bomb_stops_at_the_process_limit(env: Checkouts, checkout: Checkout) -> None:
    code = "import os\nn = 0\ntry:\n    while n < 2000:\n        if os.fork() == 0:\n            os.pause()\n"
    code += "        n += 1\nexcept OSError:\n    print('stopped at', n)\n"
    result = checkout.run(_python(code), timeout=20)
    assert "stopped at" in result.output


# -- setup --------------------------------------------------------------------------------------


@pytest.fixture()
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"payload-from-network"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dep"
    server.shutdown()
    server.server_close()


FETCH = "import os, urllib.request; print(urllib.request.urlopen('{url}', timeout=5).read().decode())"


def _setup_repo(env: Checkouts, url: str, requirements: str = "dep==1\n") -> str:
    fetch = FETCH.format(url=url)
    setup = f'python -c "{fetch}" > $CODEWORKER_CACHE/payload && echo run >> $CODEWORKER_CACHE/count'
    config = yaml.safe_dump({"setup_command": setup})
    return env.repo({**FILES, ".codeworker.yml": config, "requirements.txt": requirements})


def _host_network(env: Checkouts) -> Settings:
    """Settings whose setup shares the host's network. The setup tests that download something use
    it: the only server a test may reach is on loopback, which isolated setup cannot reach."""
    return env.settings.model_copy(update={"setup_network": "host"})


def test_setup_has_network_later_commands_do_not(env: Checkouts, http_server: str) -> None:
    worktree = env.worktree(_setup_repo(env, http_server))
    box = env.checkout(worktree, settings=_host_network(env))
    try:
        result = box.setup()
        assert result is not None and result.ok, result and result.output

        later = box.run(_python(FETCH.format(url=http_server)))
        cached = box.run('cat "$CODEWORKER_CACHE/payload"; echo x >> "$CODEWORKER_CACHE/count"')

        assert later.exit_code != 0 and "payload-from-network" not in later.output
        assert "payload-from-network" in cached.output
        assert "Read-only file system" in cached.output  # the cache is read-only after setup
    finally:
        box.close()
        worktree.remove()


def test_setup_is_reused_until_dependency_files_change(env: Checkouts, http_server: str) -> None:
    url = _setup_repo(env, http_server)
    first, second = env.worktree(url), env.worktree(url)
    box1, box2 = (
        env.checkout(first, settings=_host_network(env)),
        env.checkout(second, settings=_host_network(env)),
    )
    try:
        assert box1.setup() is not None
        assert box2.setup() is None  # reused
        count = box2.run('cat "$CODEWORKER_CACHE/count"')
        assert count.output.splitlines() == ["run"]

        name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
        env.git_server.commit_on(env.owner, name, "main", {"requirements.txt": "dep==2\n"}, "bump")
        third = env.worktree(url)
        box3 = env.checkout(third, settings=_host_network(env))
        try:
            assert box3.setup() is not None  # a new key: setup runs again
            assert box3.run('cat "$CODEWORKER_CACHE/count"').output.splitlines() == ["run"]
        finally:
            box3.close()
            third.remove()
    finally:
        for box, wt in ((box1, first), (box2, second)):
            box.close()
            wt.remove()


def test_failed_setup_raises_and_publishes_nothing(env: Checkouts) -> None:
    config = "setup_command: 'echo partial > $CODEWORKER_CACHE/x; echo boom-output; exit 3'\n"
    worktree = env.worktree(env.repo({**FILES, ".codeworker.yml": config}))
    box = env.checkout(worktree)
    try:
        with pytest.raises(SetupFailed, match=r"exited 3:\nboom-output"):
            box.setup()
        repo_cache = env.settings.cache_root / repo_id(worktree.url)
        assert [p.name for p in repo_cache.iterdir() if not p.name.endswith(".lock")] == []
    finally:
        box.close()
        worktree.remove()


def test_nothing_to_set_up(checkout: Checkout) -> None:
    assert checkout.setup() is None


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
        ' && cat /etc/resolv.conf > "$CODEWORKER_CACHE/resolv"'
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
    assert seen["resolv"] == Path("/etc/resolv.conf").read_text()
    assert _slirps() == []


def test_host_network_setup_reaches_the_hosts_loopback(env: Checkouts, listener: int) -> None:
    seen = _probing_setup(env, listener, "host")

    assert "loopback: connected" in seen["connect"]


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
            assert _processes_with("271.82") == []
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
        assert wait_until(lambda: not any(_alive(pid, "slirp4netns") for pid in slirp))
        assert wait_until(lambda: _processes_with("314.15") == [])
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
        wait_until(lambda: _processes_with(str(tmp_path)) == [], what="bubblewrap and the wrapper gone")
        assert not (tmp_path / "started").exists()
        assert wait_until(lambda: _processes_with("314.15") == [])
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


# -- start-up check and the unsandboxed fallback ------------------------------------------------


def test_check_sandbox_refuses_a_missing_bwrap(env: Checkouts) -> None:
    check_sandbox(env.settings)  # the real one works
    bogus = env.settings.model_copy(update={"bwrap": "/nonexistent/bwrap"})
    with pytest.raises(SandboxUnavailable, match="CODEWORKER_ALLOW_UNSANDBOXED"):
        check_sandbox(bogus)
    check_sandbox(bogus.model_copy(update={"allow_unsandboxed": True}))


def test_unsandboxed_fallback_keeps_env_reduction_and_group_kill(
    env: Checkouts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    settings = env.settings.model_copy(update={"bwrap": "/nonexistent/bwrap", "allow_unsandboxed": True})
    worktree = env.worktree(env.repo())
    box = env.checkout(worktree, settings=settings)
    try:
        assert GITHUB_TOKEN not in box.run("env").output
        result = box.run("sleep 2718.28 & echo $! > pid; wait", timeout=1.5)
        assert result.timed_out
        pid = int((worktree.path / "pid").read_text())
        assert not _alive(pid, "2718.28")
    finally:
        box.close()
        worktree.remove()


def test_refused_at_run_time_too(env: Checkouts) -> None:
    settings = env.settings.model_copy(update={"bwrap": "/nonexistent/bwrap"})
    worktree = env.worktree(env.repo())
    box = env.checkout(worktree, settings=settings)
    try:
        with pytest.raises(SandboxUnavailable):
            box.run("true")
    finally:
        box.close()
        worktree.remove()


def test_commands_do_not_inherit_ignored_signals(tmp_path):
    """Celery's pool processes ignore SIGTERM and SIGINT; a command they start must not."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        result = run_process(
            ["grep", "SigIgn", "/proc/self/status"], "grep", tmp_path, {"PATH": "/usr/bin:/bin"}, 10
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    ignored = int(result.output.split()[1], 16)
    assert result.ok
    assert not ignored & (1 << (signal.SIGTERM - 1))


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
