"""The sandbox, for real: bubblewrap around commands in real worktrees of a real git server.

What a command in a checkout cannot do: reach the network (not even loopback), see the worker's
credentials, home or trajectories, write outside its checkout or read another job's, outlive its
timeout, or take more than its memory and processes; and the start-up check that refuses a missing
bubblewrap, the unsandboxed fallback that keeps the environment reduction and the group kill, and
signals that a command does not inherit ignored.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import pwd
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from codeworker.sandbox.bubblewrap import SANDBOX_TMP, SandboxUnavailable, check_sandbox
from codeworker.sandbox.checkout import Checkout
from codeworker.sandbox.commands import OUTPUT_LIMIT, CommandResult, run_process
from codeworker.sandbox.rootfs import EtcCopy, etc_entries
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support import sandbox_fixtures
from tests.support.checkouts import Checkouts, needs_bwrap
from tests.support.sandbox_fixtures import alive, processes_with, python_c

pytestmark = needs_bwrap

# The shared fixtures, bound to this module's names: pytest finds them here for these tests only.
env = sandbox_fixtures.env
checkout = sandbox_fixtures.checkout

REDIS_CANARY = "redis://cwcanary-redis-url-93d1:6379/0"

# -- network ------------------------------------------------------------------------------------


def test_no_network_not_even_loopback(checkout: Checkout, listener: int) -> None:
    # The host can connect: the server is real.
    socket.create_connection(("127.0.0.1", listener), 2).close()

    local = checkout.run(python_c(f"import socket; socket.create_connection(('127.0.0.1', {listener}), 2)"))
    remote = checkout.run(python_c("import socket; socket.create_connection(('1.1.1.1', 53), 2)"))

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
            # A directory on the way to a bound one may exist in the private /tmp (tests keep their
            # workspace under /tmp): writing there succeeds, and is gone with the command.
            private = path.is_relative_to(SANDBOX_TMP)
            assert private or result.exit_code != 0, f"{where}: {result.output}"
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


def test_timeout_kills_forked_children(checkout: Checkout) -> None:
    # setsid: the child even leaves the command's session; the pid namespace still takes it down.
    result = checkout.run("setsid sleep 3141.59 & echo started > started; wait", timeout=1.5)

    assert result.timed_out and result.exit_code is None
    assert (checkout.root / "started").read_text() == "started\n"
    assert processes_with("3141.59") == []


def test_memory_hog_fails_alone(checkout: Checkout) -> None:
    result = checkout.run(python_c("x = bytearray(2 * 1024 ** 3); print('allocated')"))
    assert result.exit_code != 0
    assert "MemoryError" in result.output and "allocated" not in result.output


def run_with(env: Checkouts, command: str, **limits: int) -> CommandResult:
    """``command`` in a fresh checkout whose sandbox has ``limits`` (settings overrides)."""
    worktree = env.worktree(env.repo())
    box = env.checkout(worktree, settings=env.settings.model_copy(update=limits))
    try:
        return box.run(command)
    finally:
        box.close()
        worktree.remove()


def test_a_file_larger_than_the_limit_cannot_be_written(env: Checkouts) -> None:
    result = run_with(
        env, "head -c 5000000 /dev/zero > big.bin; echo exit $?; wc -c < big.bin", sandbox_file_mb=2
    )
    assert result.output.split()[-1] == str(2 * 1024 * 1024) and "exit 0" not in result.output


def test_the_private_tmp_is_bounded(env: Checkouts) -> None:
    result = run_with(env, "head -c 8000000 /dev/zero > /tmp/fill; echo exit $?", sandbox_tmp_mb=4)
    assert "No space left on device" in result.output and "exit 0" not in result.output


def test_endless_output_costs_the_worker_a_bounded_buffer(tmp_path: Path) -> None:
    """`yes` for two seconds prints gigabytes; the worker keeps the head and the tail."""
    probe = (
        "import resource, sys; from pathlib import Path\n"
        "from codeworker.sandbox.commands import run_process\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "result = run_process(['yes'], 'yes', Path(sys.argv[1]), {'PATH': '/usr/bin:/bin'}, 2)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "cut = int(result.output.split('[... ')[1].split(' ')[0])\n"
        "print(result.timed_out, len(result.output), cut, grown)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True
    )
    timed_out, kept, cut, grown_kib = done.stdout.split()
    assert timed_out == "True" and int(kept) < OUTPUT_LIMIT + 100
    assert int(cut) > 50_000_000, "yes printed less than expected: the test proves nothing"
    assert int(grown_kib) < 20_000, f"the worker grew by {grown_kib} KiB reading the output"


@pytest.mark.skipif(os.geteuid() == 0, reason="the kernel does not apply RLIMIT_NPROC to uid 0")
def test_fork_bomb_stops_at_the_process_limit(env: Checkouts, checkout: Checkout) -> None:
    code = "import os\nn = 0\ntry:\n    while n < 2000:\n        if os.fork() == 0:\n            os.pause()\n"
    code += "        n += 1\nexcept OSError:\n    print('stopped at', n)\n"
    result = checkout.run(python_c(code), timeout=20)
    assert "stopped at" in result.output


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
        assert not alive(pid, "2718.28")
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
    """Celery's pool processes ignore SIGTERM and SIGINT; a command they start must not. Nor does
    it start with the signals the worker's thread blocks."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        result = run_process(
            ["grep", "-E", "SigIgn|SigBlk", "/proc/self/status"],
            "grep",
            tmp_path,
            {"PATH": "/usr/bin:/bin"},
            10,
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        signal.signal(signal.SIGTERM, previous)
    masks = dict(line.split() for line in result.output.splitlines())
    assert result.ok
    assert not int(masks["SigIgn:"], 16) & (1 << (signal.SIGTERM - 1))
    assert int(masks["SigBlk:"], 16) == 0


def test_commands_inherit_no_descriptor_of_the_worker(checkout: Checkout) -> None:
    """Not even one the worker holds without close-on-exec (as a C library's may be)."""
    kept, leaked = os.pipe()
    os.set_inheritable(leaked, True)
    try:
        result = checkout.run("ls /proc/self/fd")
    finally:
        os.close(kept)
        os.close(leaked)
    assert result.ok, result.output
    assert result.output.split() == ["0", "1", "2", "3"]  # 3: the listing's own


def test_etc_is_a_read_only_copy_made_once_per_sandbox(checkout: Checkout) -> None:
    box = dataclasses.replace(checkout.sandbox, etc=EtcCopy())  # a copy of its own, to see it go
    first = box.run("cat /etc/hostname /etc/hosts; id -un; touch /etc/hosts /etc/new")
    copy = box.etc.path(None)
    second = box.run("true")

    assert first.exit_code != 0 and "Read-only file system" in first.output
    assert "No such file" in first.output  # hostname is not on the allowlist
    assert Path("/etc/hosts").read_text() in first.output
    assert pwd.getpwuid(os.getuid()).pw_name in first.output  # the generated passwd
    assert second.ok and box.etc.path(None) == copy
    shown = {name.split("/")[0] for name in etc_entries(None) if (Path("/etc") / name).exists()}
    assert sorted(p.name for p in copy.iterdir()) == sorted(shown | {"passwd", "group"})
    del box  # the last reference: the copy goes with it
    gc.collect()
    assert not copy.exists()
