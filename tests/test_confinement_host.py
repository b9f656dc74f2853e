"""A sandboxed command sees an allowlist of the host, not the host minus a list: through a real
worker, the agent's bash tool (driven by the scripted model) and a repository's setup command hunt
for the token in files planted where operators keep credentials (an environment file under /etc, a
cloud CLI's configuration under /opt, secrets under /srv and /var). They find none of them, the
model never receives the token, and neither the trajectory nor the setup cache holds it."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import GITHUB_TOKEN
from tests.support import anthropic_stub as s
from tests.support.agent_session import tool_results
from tests.support.jobs import QUEUE, RESULT_TIMEOUT, new_repo, scripted_job

PLANTED = ("/etc/{tag}/codeworker.env", "/opt/{tag}/credentials", "/srv/{tag}/token", "/var/lib/{tag}/token")
"""Where the token is planted, each in a directory of its own (``tag``) that the test removes."""

PREFIX = GITHUB_TOKEN[:12]
"""What ``grep -r`` hunts for: the token's prefix, as an attacker who knows its format would."""

SEARCHED = "/etc /var /opt /srv /run /home /root /mnt /media"

HIDDEN_TREES = ("/opt", "/srv", "/var", "/run", "/home", "/mnt", "/media")
"""Top-level directories a sandboxed command never sees (``/root`` may hold the bound Python)."""


@pytest.fixture(scope="module")
def planted() -> Iterator[list[Path]]:
    tag = f"cw-planted-{uuid.uuid4().hex[:8]}"
    paths = [Path(where.format(tag=tag)) for where in PLANTED]
    for path in paths:
        path.parent.mkdir(parents=True)
        path.write_text(f"GITHUB_TOKEN={GITHUB_TOKEN}\n")
    yield paths
    for path in paths:
        shutil.rmtree(path.parent)


@pytest.fixture(scope="module")
def worker_env(worker_env: dict, model: s.AnthropicStub, planted: list[Path], tmp_path_factory) -> dict:
    state = tmp_path_factory.mktemp("confinement")
    return {
        **worker_env,
        "ANTHROPIC_BASE_URL": model.url,
        "CODEWORKER_CACHE_ROOT": str(state / "cache"),
        "CODEWORKER_TRAJECTORY_DIR": str(state / "trajectories"),
    }


def hunt(planted: list[Path]) -> str:
    """A command that tries every way in: each planted file, a recursive grep, the listings."""
    reads = " ".join(str(path) for path in planted)
    listings = " ".join(HIDDEN_TREES)
    return (
        f"cat {reads}; grep -rIl {PREFIX} {SEARCHED} 2>/dev/null | sed 's/^/FOUND: /';"
        f" ls -d {listings} 2>&1; echo HUNTED"
    )


def assert_found_nothing(output: str, planted: list[Path]) -> None:
    assert "HUNTED" in output, output
    assert GITHUB_TOKEN not in output and "[redacted]" not in output, output
    for path in planted:
        assert f"{path}: No such file or directory" in output, output
    assert "FOUND: " not in output, output  # grep matched no file at all
    for tree in HIDDEN_TREES:
        assert f"cannot access '{tree}'" in output, output


def run(client, job: dict) -> dict:
    return client.send_task(f"codeworker.{job['operation_type']}", args=[job], queue=QUEUE).get(
        timeout=RESULT_TIMEOUT
    )


def test_the_agents_commands_find_no_credential_on_the_host(
    client, model, git_server, worker, worker_env, planted
) -> None:
    name, url = new_repo(git_server)
    model.play(s.say(s.bash(hunt(planted))), s.done())
    job = {
        "operation_type": "refactor",
        "description": "tidy app.py",
        "repository": {"url": url, "owner": "acme", "name": name, "branch": "main"},
        "operation_id": f"op-{uuid.uuid4().hex[:12]}",
        "max_iterations": 1,
    }

    result = run(client, job)

    [answer] = [r for body in model.messages_requests for r in tool_results(body)]
    output = json.dumps(answer["content"])
    assert_found_nothing(output, planted)
    for request in model.messages_requests:
        assert GITHUB_TOKEN not in json.dumps(request)
    [trajectory] = Path(worker_env["CODEWORKER_TRAJECTORY_DIR"]).rglob(f"{result['operation_id']}*")
    assert GITHUB_TOKEN not in trajectory.read_text() and "HUNTED" in trajectory.read_text()
    assert "secret_scrubbed" not in worker.output


def test_a_setup_command_finds_no_credential_on_the_host(client, git_server, worker_env, planted) -> None:
    setup = f'({hunt(planted)}) > "$CODEWORKER_CACHE/hunt" 2>&1'
    name, url = new_repo(git_server)
    git_server.commit_on(
        "acme", name, "main", {".codeworker.yml": yaml.safe_dump({"setup_command": setup})}, "setup"
    )

    result = run(client, scripted_job(url, name, {"write": {"app.py": "x = 1\n"}}))

    assert result["status"] == "pr_open", result["error"]
    [found] = Path(worker_env["CODEWORKER_CACHE_ROOT"]).rglob("hunt")
    assert_found_nothing(found.read_text(), planted)
