"""A repository's .codeworker.yml sets its test and setup commands, and nothing that weakens policy.

Hostile files are read from real checkouts; their commands run in the real sandbox; one job goes
through the pipeline with a file that asks for the secret scan to be turned off.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import yaml

from codeworker.coordination.keys import Keys
from codeworker.executors.base import Workspace
from codeworker.git.worktree import Worktree
from codeworker.loopback.gitserver import GitServer
from codeworker.pipeline.service import Pipeline
from codeworker.sandbox.checkout import Checkout
from codeworker.sandbox.repo_config import (
    MAX_CONFIG_BYTES,
    RepoConfig,
    RepoConfigError,
    dependency_files,
    load_repo_config,
    setup_plan,
)
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support.checkouts import Checkouts, needs_bwrap, sandbox_settings
from tests.support.pipeline_runs import run_in_new_repo

AWS_KEY = "AKIA" + "QYLPMN5HHHFPZAM2"
APP_PY = "def f():\n    return 1\n"

HOSTILE = {
    "test_command": "python -m pytest -q",
    "scan": False,
    "secret_scan": {"enabled": False},
    "sandbox": False,
    "allow_unsandboxed": True,
    "budget_usd": 1000,
    "budget_tokens": 10**12,
    "allowed_repos": ["https://evil.example/"],
    "max_iterations": 999,
    "max_iterations_cap": 999,
    "env": {"GITHUB_TOKEN": "from-the-repo", "LD_PRELOAD": "/tmp/evil.so"},
    "network": True,
    "bwrap": "/bin/true",
}


def write_config(root: Path, text: str | bytes) -> Path:
    path = root / ".codeworker.yml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


OUTSIDE = "must be relative to the checkout and stay inside it"


def billion_laughs(reference: str) -> str:
    """Nine levels of nine aliases each: 9**9 strings once expanded; ``reference`` uses the top."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 10):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\n{reference}\n"


# == reading the file =============================================================================


def test_policy_keys_are_ignored_and_named_in_a_warning(tmp_path, caplog) -> None:
    write_config(tmp_path, yaml.safe_dump(HOSTILE))
    with caplog.at_level(logging.WARNING, logger="codeworker.sandbox.repo_config"):
        config = load_repo_config(tmp_path)

    assert config == RepoConfig(test_command="python -m pytest -q")
    assert set(RepoConfig.model_fields) == {"test_command", "setup_command", "junit"}
    (warning,) = caplog.records
    for key in ("'scan'", "'sandbox'", "'allow_unsandboxed'", "'budget_usd'", "'env'", "'network'"):
        assert key in warning.getMessage()
    assert "from-the-repo" not in warning.getMessage()  # names, never values


def test_a_typo_is_ignored_with_a_warning_not_an_error(tmp_path, caplog) -> None:
    write_config(tmp_path, "test_comand: make test\nsetup_command: make deps\n")
    with caplog.at_level(logging.WARNING, logger="codeworker.sandbox.repo_config"):
        config = load_repo_config(tmp_path)

    assert config == RepoConfig(setup_command="make deps")
    assert "'test_comand'" in caplog.text


@pytest.mark.parametrize("text", ["", "# nothing\n", "~\n", "{}\n"])
def test_an_empty_file_means_defaults(tmp_path, text) -> None:
    write_config(tmp_path, text)
    assert load_repo_config(tmp_path) == RepoConfig()


def test_no_file_means_defaults(tmp_path) -> None:
    assert load_repo_config(tmp_path) == RepoConfig()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("reference", ["test_command: *a9", "ignored: *a9", "setup_command: [*a9]"])
def test_billion_laughs_is_refused_at_once(tmp_path, reference) -> None:
    write_config(tmp_path, billion_laughs(reference))
    started = time.monotonic()
    with pytest.raises(RepoConfigError, match=r"aliases \(\*name\) are not allowed"):
        load_repo_config(tmp_path)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "text",
    [
        "test_command: !!python/object/apply:os.system ['touch {marker}']\n",
        "test_command: !!python/name:os.system\n",
        "scan: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
    ],
)
def test_python_tags_construct_nothing(tmp_path, text) -> None:
    marker = tmp_path / "pwned"
    write_config(tmp_path, text.format(marker=marker))
    with pytest.raises(RepoConfigError, match="could not determine a constructor"):
        load_repo_config(tmp_path)
    assert not marker.exists()


def test_a_ten_megabyte_file_is_refused_not_truncated(tmp_path) -> None:
    # A valid start followed by padding: cut at the limit, it would parse (and be half-applied).
    write_config(tmp_path, "test_command: pytest\n" + "# padding\n" * 1_000_000)
    assert (tmp_path / ".codeworker.yml").stat().st_size > 10_000_000
    with pytest.raises(RepoConfigError, match=f"larger than {MAX_CONFIG_BYTES:,} bytes"):
        load_repo_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- test_command: pytest\n", "list"), ("pytest\n", "str"), ("42\n", "int"), ("true\n", "bool")],
)
def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path, text, kind) -> None:
    write_config(tmp_path, text)
    with pytest.raises(RepoConfigError, match=f"must be a mapping of settings, not a {kind}"):
        load_repo_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("test_command: [pytest, -q]\n", "test_command: Input should be a valid string"),
        ("test_command: 42\n", "test_command: Input should be a valid string"),
        ("test_command: true\n", "test_command: Input should be a valid string"),
        ("setup_command: {pip: install}\n", "setup_command: Input should be a valid string"),
        (
            'test_command: "pytest\\0 -q"\n',
            "test_command: Value error, must be a non-empty command without NUL bytes",
        ),
        ("test_command: '   '\n", "test_command: Value error, must be a non-empty command without NUL bytes"),
        (f"test_command: {'x' * 3000}\n", "test_command: String should have at most 2000 characters"),
        ("junit: [a.xml]\n", "junit: Input should be a valid string"),
        ("junit: /tmp/junit.xml\n", f"junit: Value error, {OUTSIDE}"),
        ("junit: ../out/*.xml\n", f"junit: Value error, {OUTSIDE}"),
        ("junit: '.'\n", f"junit: Value error, {OUTSIDE}"),
        ("junit: '  '\n", "junit: Value error, must be a non-empty path or glob"),
    ],
)
def test_wrong_types_are_a_clear_error(tmp_path, text, words) -> None:
    write_config(tmp_path, text)
    with pytest.raises(RepoConfigError) as caught:
        load_repo_config(tmp_path)
    assert str(caught.value) == f".codeworker.yml is invalid: {words}"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b"test_command: \xff\xfe\n", "not UTF-8 text"),
        (b"test_command: [unclosed\n", "not valid YAML"),
        (b"? [a, b]\n: c\n", "not valid YAML"),
        (b"[" * 40_000 + b"]" * 40_000, "nests too deeply"),
    ],
)
def test_unparseable_files_are_a_clear_error(tmp_path, text, words) -> None:
    write_config(tmp_path, text)
    with pytest.raises(RepoConfigError, match=words):
        load_repo_config(tmp_path)


def test_a_symlinked_file_is_never_followed(tmp_path) -> None:
    outside = tmp_path / "outside.yml"
    outside.write_text("test_command: cat /etc/shadow\n")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".codeworker.yml").symlink_to(outside)
    with pytest.raises(RepoConfigError, match="is a symbolic link; only a regular file is read"):
        load_repo_config(checkout)


@pytest.mark.timeout(10)
def test_a_fifo_or_directory_is_refused_without_blocking(tmp_path) -> None:
    os.mkfifo(tmp_path / ".codeworker.yml")
    with pytest.raises(RepoConfigError, match="not a regular file"):
        load_repo_config(tmp_path)
    (tmp_path / ".codeworker.yml").unlink()
    (tmp_path / ".codeworker.yml").mkdir()
    with pytest.raises(RepoConfigError, match="not a regular file"):
        load_repo_config(tmp_path)


# == in a real checkout, with the real sandbox ====================================================


@pytest.fixture()
def open_checkout(
    tmp_path: Path, git_server: GitServer, redis_client: redis.Redis
) -> Iterator[Callable[[dict[str, str]], Checkout]]:
    checkouts = Checkouts.create(sandbox_settings(tmp_path, GITHUB_TOKEN), git_server, redis_client)
    opened: list[tuple[Checkout, Worktree]] = []

    def open_(files: dict[str, str]) -> Checkout:
        worktree = checkouts.worktree(checkouts.repo(files))
        checkout = checkouts.checkout(worktree)
        opened.append((checkout, worktree))
        return checkout

    yield open_
    for checkout, worktree in opened:
        checkout.close()
        worktree.remove()


PROBE = (
    "env; python -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2); "
    "print('NETWORK-REACHED')\" 2>&1; echo probe-done"
)


@needs_bwrap
def test_the_repositorys_test_command_still_runs_sandboxed(open_checkout, listener, monkeypatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    config = {**HOSTILE, "test_command": PROBE.format(port=listener)}
    checkout = open_checkout({"app.py": APP_PY, ".codeworker.yml": yaml.safe_dump(config)})

    command = checkout.test_command()
    result = checkout.run(command)

    assert command == config["test_command"]
    assert "probe-done" in result.output and "NETWORK-REACHED" not in result.output
    for leaked in (GITHUB_TOKEN, ANTHROPIC_KEY, "from-the-repo", "LD_PRELOAD"):
        assert leaked not in result.output


@needs_bwrap
def test_the_agent_cannot_change_the_test_command_mid_job(open_checkout) -> None:
    checkout = open_checkout({"app.py": APP_PY, ".codeworker.yml": "test_command: python -m pytest -q\n"})
    checkout.run("echo 'test_command: \"true\"' > .codeworker.yml")
    checkout.write_file(".codeworker.yml", "test_command: 'exit 0'\n")

    assert (checkout.root / ".codeworker.yml").read_text() == "test_command: 'exit 0'\n"
    assert checkout.test_command() == "python -m pytest -q"


# == through the pipeline =========================================================================


def run_job(pipe: Pipeline, git_server: GitServer, config: str, files: dict[str, str]) -> tuple[dict, str]:
    """Writes ``files`` through the workspace, as an agent's editor would."""

    def write(workspace: Workspace) -> None:
        for path, content in files.items():
            workspace.write_file(path, content)

    return run_in_new_repo(pipe, git_server, {"app.py": APP_PY, ".codeworker.yml": config}, write)


def test_a_file_that_turns_the_scan_off_does_not_stop_it(pipe, git_server) -> None:
    config = yaml.safe_dump({**HOSTILE, "test_command": "true"})
    result, name = run_job(pipe, git_server, config, {"settings.py": f'AWS_KEY = "{AWS_KEY}"\n'})

    assert result["status"] == "blocked" and result["success"] is False, result["error"]
    assert "settings.py:1" in result["error"]
    assert result["commits"] == [] and AWS_KEY not in str(result)
    assert git_server.branches("acme", name) == ["main"]


def test_a_broken_file_fails_the_job_clearly_and_pushes_nothing(pipe, git_server) -> None:
    result, name = run_job(pipe, git_server, "test_command: [pytest]\n", {"app.py": "x = 2\n"})

    assert result["status"] == "failed"
    assert result["error"] == ".codeworker.yml is invalid: test_command: Input should be a valid string"
    assert git_server.branches("acme", name) == ["main"]
    assert list(pipe.redis.scan_iter(Keys().lock_pattern())) == []
    assert list((pipe.settings.workspace_root / "worktrees").glob(f"{result['operation_id']}.*")) == []


def test_the_setup_cache_key_covers_every_file_setup_reads(tmp_path) -> None:
    """A commit that changes an included requirements file gets a new setup, not a stale one."""
    (tmp_path / "requirements" / "extra").mkdir(parents=True)
    files = {
        "requirements.txt": "-r requirements/base.txt\n--constraint=constraints/pins.txt\nrequests\n",
        "requirements/base.txt": "-r extra/more.txt\nflask\n",
        "requirements/extra/more.txt": "click\n",
        "constraints/pins.txt": "flask==3.0\n",
        "requirements-dev.txt": "pytest\n",
        "pyproject.toml": "[project]\nname = 'x'\n",
        "elsewhere.txt": "-r ../../etc/passwd\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "requirements" / "link.txt").symlink_to("/etc/hostname")

    covered = dependency_files(tmp_path)
    assert set(covered) == set(files) - {"elsewhere.txt"}
    plan = setup_plan(tmp_path, RepoConfig())
    assert plan is not None
    keys = {plan.cache_key(tmp_path)}
    for name in ("requirements/extra/more.txt", "constraints/pins.txt", "pyproject.toml"):
        (tmp_path / name).write_text((tmp_path / name).read_text() + "# changed\n")
        keys.add(plan.cache_key(tmp_path))
    assert len(keys) == 4
