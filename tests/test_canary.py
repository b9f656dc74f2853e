"""The token canary: an agent job end to end, then a search of everything it touched.

The whole suite runs with recognisable fake credentials (``GITHUB_TOKEN`` and ``ANTHROPIC_KEY`` in
conftest.py); git, the GitHub stand-in and the Messages API stand-in accept nothing else. Here a
real worker runs the agent executor against the stand-in model, whose script pokes at every place
a credential could leak from inside the sandbox, and then every sink is searched for either
string: the worker's log lines, the result, Celery's and codeworker's Redis records, the
trajectory, the pushed branch (files, commit messages, every object), every file under the
workspace (``.git/config`` of the mirror and worktrees included), the requests the model and
GitHub stand-ins received, the output of the agent's commands, and the worker's /status and
/metrics.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from codeworker.loopback.worker import get
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support import anthropic_stub as s
from tests.support.agent_session import BUG, CART, FIX, sample_files, tool_results
from tests.support.jobs import QUEUE, RESULT_TIMEOUT

SECRETS = (GITHUB_TOKEN, ANTHROPIC_KEY)

PROBES = [
    "env; cat /proc/self/environ | tr '\\0' '\\n'; cat /proc/1/environ | tr '\\0' '\\n'",
    "git config --list --show-origin; cat .git; cat \"$(sed 's/^gitdir: //' .git)/../../config\"",
    "cat ~/.git-credentials ~/.netrc ~/.config/gh/hosts.yml /run/secrets/* 2>&1; ls -la / /tmp ~ 2>&1",
    "ps auxww 2>&1 | head -50; grep -r cwcanary / --include='*.env' -l 2>/dev/null | head",
]
"""Commands an agent (or a prompt-injected repository) would try to find credentials with."""


@pytest.fixture(scope="module")
def sinks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "trajectories": tmp_path_factory.mktemp("trajectories"),
        "cache": tmp_path_factory.mktemp("cache"),
        "metrics": tmp_path_factory.mktemp("metrics"),
    }


@pytest.fixture(scope="module")
def worker_env(worker_env: dict, model: s.AnthropicStub, sinks: dict[str, Path]) -> dict:
    return {
        **worker_env,
        "ANTHROPIC_BASE_URL": model.url,
        "CODEWORKER_TRAJECTORY_DIR": str(sinks["trajectories"]),
        "CODEWORKER_CACHE_ROOT": str(sinks["cache"]),
        "CODEWORKER_METRICS_DIR": str(sinks["metrics"]),
    }


def git_text(*args: str, cwd: Path) -> str:
    """A git command's output; trees are binary, and a secret would be ASCII either way."""
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True).stdout.decode(
        "utf-8", "replace"
    )


def redis_dump(url: str) -> str:
    """Every key and value of the broker's database, as text."""
    client = redis.Redis.from_url(url)
    parts: list[bytes] = []
    for key in client.scan_iter():
        kind = client.type(key)
        parts.append(key)
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"hash":
            parts += [b for pair in client.hgetall(key).items() for b in pair]
        elif kind == b"list":
            parts += client.lrange(key, 0, -1)
        elif kind in (b"set", b"zset"):
            parts += list(client.smembers(key)) if kind == b"set" else client.zrange(key, 0, -1)
    return b"\n".join(parts).decode("utf-8", "replace")


def test_no_credential_reaches_any_sink(
    client, worker, worker_env, broker_url, model, sinks, git_server, github_stub, workspace_root
):
    name = f"canary-{uuid.uuid4().hex[:8]}"
    url = git_server.create_repo("acme", name, sample_files())
    model.play(
        *(s.say(s.bash(command)) for command in PROBES),
        s.say(s.replace(CART, BUG, FIX)),
        s.done("Fixed the discount; nothing else to report."),
    )
    job = {
        "operation_type": "error_fix",
        "description": "apply_discount takes far too much off",
        "repository": {"url": url, "owner": "acme", "name": name},
        "operation_id": f"canary-{uuid.uuid4().hex[:10]}",
        "target_files": [CART],
    }
    result = client.send_task("codeworker.error_fix", args=[job], queue=QUEUE).get(timeout=RESULT_TIMEOUT)
    assert result["status"] == "pr_open", result["error"]

    # The probes really ran, in the sandbox, and saw an environment without the credentials.
    probe_outputs = [
        tool_results(body)[0]["content"] for body in model.messages_requests[1 : len(PROBES) + 1]
    ]
    assert "PATH=" in probe_outputs[0] and "gitdir:" in probe_outputs[1]

    bare = git_server.repo_path("acme", name)
    objects = git_text("cat-file", "--batch-all-objects", "--batch", cwd=bare)
    sink_text = {
        "worker log": worker.output,
        "result": json.dumps(result),
        "redis": redis_dump(broker_url),
        "trajectory": "\n".join(p.read_text() for p in sinks["trajectories"].rglob("*.jsonl")),
        "pushed objects": objects,
        "branch log": git_text("log", "--all", "-p", "--format=%H %an %ae%n%B", cwd=bare),
        "model requests": json.dumps([r.body for r in model.requests])
        + " ".join(r.path for r in model.requests),
        "github requests": json.dumps([(r.path, r.body) for r in github_stub.requests]),
        "git requests": " ".join(r.path for r in git_server.requests),
        "agent commands": "\n".join(probe_outputs),
        "/status": json.dumps(get(int(worker_env["PORT"]), "/status")[1]),
        "/metrics": get(int(worker_env["PORT"]), "/metrics")[1],
    }
    assert FIX in objects and len(sink_text["trajectory"]) > 1000
    for sink, text in sink_text.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} leaked into the {sink}"

    files = [p for root in (workspace_root, *sinks.values()) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "config" for p in files), "the mirror's git config was searched"
    for path in files:
        if not path.is_symlink():
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, f"{secret} leaked into {path}"
