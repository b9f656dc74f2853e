"""deploy/systemd's units, checked by systemd-analyze; what no tool checks (a stop timeout longer than
the worker's grace, no hardening that breaks bubblewrap) is asserted here against the code itself.
"""

from __future__ import annotations

import re
import shutil

from tests.support.deploy import DEPLOY, GRACE, run, seconds, tool

# -- systemd -----------------------------------------------------------------------------------------


def unit(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_analyze_verifies_the_units(tmp_path):
    """The units name where deploy/README.md installs codeworker; on a machine without that
    installation systemd-analyze says so, and that is the only complaint allowed."""
    analyze = tool("systemd-analyze")
    units = {"codeworker-worker@.service": "codeworker-worker@3001.service"}
    units["codeworker-flower.service"] = "codeworker-flower.service"
    for name, instance in units.items():
        shutil.copy(DEPLOY / "systemd" / name, tmp_path / name)
        done = run(analyze, "verify", str(tmp_path / instance), cwd=tmp_path)
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        unexpected = [
            line
            for line in lines
            if not re.search(r"Command /opt/codeworker/\w+/bin/\w+ is not executable: No such file", line)
        ]
        assert not unexpected, "\n".join(lines)


def test_the_worker_unit_stops_gracefully_and_keeps_the_sandbox_working():
    worker = unit("codeworker-worker@.service")
    assert worker["KillSignal"] == ["SIGTERM"] and worker["KillMode"] == ["mixed"]
    assert seconds(worker["TimeoutStopSec"][0]) >= 45 > GRACE
    assert worker["EnvironmentFile"] == ["/etc/codeworker/codeworker.env"]
    # Read by systemd as root; root-only on disk and hidden from the service (deploy/README.md).
    assert worker["InaccessiblePaths"] == ["-/etc/codeworker"]
    assert unit("codeworker-flower.service")["InaccessiblePaths"] == ["-/etc/codeworker"]
    readme = (DEPLOY / "README.md").read_text()
    assert (
        "install -D -m 0600 -o root -g root deploy/codeworker.env.example /etc/codeworker/codeworker.env"
        in readme
    )
    assert "PORT=%i" in worker["Environment"]
    assert worker["NoNewPrivileges"] == ["yes"] and worker["ProtectSystem"] == ["strict"]
    # Each of these breaks bubblewrap (deploy/README.md, "systemd").
    for breaks_bwrap in (
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "ProtectProc",
        "ProcSubset",
        "RestrictNamespaces",
        "SystemCallFilter",
        "MemoryDenyWriteExecute",
    ):
        assert breaks_bwrap not in worker, breaks_bwrap
    env_example = (DEPLOY / "codeworker.env.example").read_text()
    assert f"CODEWORKER_SHUTDOWN_GRACE={int(GRACE)}" in env_example


def test_the_worker_unit_restarts_a_worker_that_stops_without_being_asked_to():
    """``codeworker worker`` exits non-zero when the worker fails and 0 only when asked to stop
    (tests/test_redis_restart.py), so on-failure restarts every stop but a requested one."""
    worker = unit("codeworker-worker@.service")
    assert worker["ExecStart"][0].split()[1] == "worker"
    assert worker["Restart"] == ["on-failure"]
    # Nothing turns a failure into a success, or a failure into one that is not restarted.
    for masks_failures in ("SuccessExitStatus", "RestartPreventExitStatus"):
        assert masks_failures not in worker, masks_failures
    # The start rate limit never gives up on it: restarts one RestartSec apart stay under it
    # (systemd's defaults: 5 starts in 10 s).
    interval = seconds(worker.get("StartLimitIntervalSec", ["10s"])[0])
    burst = int(worker.get("StartLimitBurst", ["5"])[0])
    assert interval == 0 or interval / seconds(worker["RestartSec"][0]) + 1 <= burst
