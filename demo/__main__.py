"""``make demo``: one real operation end to end, every part real except GitHub's and Anthropic's APIs.

A private redis-server, a git smart-HTTP server holding the sample project with a real bug
(``demo/sample_bug``: a discount computed without ``/ 100``), a GitHub stand-in and a
``codeworker worker`` process start on loopback. A sender that does not import codeworker
enqueues ``codeworker.error_fix`` by name; the worker checks out, locks, runs the agent executor,
verifies, scans, commits, pushes and opens the pull request.

The model: without ANTHROPIC_API_KEY, a recorded Claude session (``demo/sessions/error_fix.jsonl``)
is replayed through a Messages API server on loopback, and the real SDK talks to it. With
ANTHROPIC_API_KEY set, the same job goes to Claude itself.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import redis
from celery import Celery

from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.registry import BranchRegistry
from codeworker.loopback.github_stub import GitHubStub
from codeworker.loopback.gitserver import GitServer
from codeworker.loopback.redis_server import RedisServer
from codeworker.loopback.worker import WorkerProcess
from codeworker.replay import ReplayServer

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "sample_bug"
SESSION = HERE / "sessions" / "error_fix.jsonl"


def sample_files() -> dict[str, str]:
    return {str(p.relative_to(SAMPLE)): p.read_text() for p in sorted(SAMPLE.rglob("*")) if p.is_file()}


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m", flush=True)


def error_fix_job(url: str) -> dict:
    return {
        "operation_type": "error_fix",
        "description": "apply_discount takes far too much off: a 15% discount on 200.00 gives -2800.00",
        "error_context": {
            "error_message": "AssertionError: assert -2800.0 == 170.0",
            "stack_trace": "tests/test_cart.py:16: in test_discount\n"
            "    assert apply_discount(200.0, 15) == 170.0\n"
            "E   AssertionError: assert -2800.0 == 170.0",
            "affected_files": ["pricing/cart.py"],
        },
        "repository": {"url": url, "owner": "acme", "name": "pricing", "branch": "main"},
        "approval_required": True,
    }


def main() -> int:
    token = "demo-" + secrets.token_hex(12)
    root = Path(tempfile.mkdtemp(prefix="codeworker-demo-"))
    live = bool(os.environ.get("ANTHROPIC_API_KEY"))
    with ExitStack() as stack:
        redis_server = RedisServer()
        redis_server.start()
        stack.callback(redis_server.close)
        git = GitServer(root / "remote", token)
        git.start()
        stack.callback(git.stop)
        github = GitHubStub(token)
        github.start()
        stack.callback(github.stop)
        url = git.create_repo("acme", "pricing", sample_files())
        model_env: dict[str, str] = {}
        if live:
            say("ANTHROPIC_API_KEY is set: the agent talks to Claude itself")
        else:
            replay = stack.enter_context(ReplayServer(SESSION))
            model_env = {"ANTHROPIC_BASE_URL": replay.url, "ANTHROPIC_API_KEY": "replay-needs-no-key"}
            say(f"REPLAY: the model's answers come from a recorded Claude session ({SESSION.name}),")
            say(
                f"served by a Messages API server on {replay.url}; the SDK, tools, sandbox and tests are real"
            )
        say(f"redis {redis_server.url}, git {url}, GitHub stand-in {github.url}")

        worker = WorkerProcess(
            {
                "REDIS_URL": redis_server.url,
                "WORKSPACE_ROOT": str(root / "workspace"),
                "CODEWORKER_CACHE_ROOT": str(root / "cache"),
                "CODEWORKER_TRAJECTORY_DIR": str(root / "trajectories"),
                "CODEWORKER_METRICS_DIR": str(root / "metrics"),
                "GITHUB_TOKEN": token,
                "GITHUB_API_URL": github.url,
                "CODEWORKER_ALLOWED_REPOS": git.base_url,
                "CODEWORKER_LOG_FORMAT": "console",
                # The demo runs as whoever calls make; Celery's warning about root is noise here.
                "PYTHONWARNINGS": "ignore:You're running the worker with superuser",
                **model_env,
            },
            name="demo",
            echo="    worker | ",
        ).start()
        stack.callback(worker.stop)

        job = error_fix_job(url)
        say("worker ready; sending codeworker.error_fix by name from a plain Celery client:")
        print(json.dumps(job, indent=2))
        sender = Celery(broker=redis_server.url, backend=redis_server.url)
        result = sender.send_task("codeworker.error_fix", args=[job], queue="code-operation").get(timeout=600)

        say("result")
        print(json.dumps(result, indent=2))
        for pull in github.pull_requests("acme", "pricing"):
            say(f"pull request #{pull['number']}{' (draft)' if pull['draft'] else ''}: {pull['title']}")
            print(pull["body"])
        if result.get("branch"):
            say("pricing/cart.py on the pushed branch")
            print(git.read_file("acme", "pricing", result["branch"], "pricing/cart.py"))
            record = BranchRegistry(
                redis.Redis.from_url(redis_server.url, decode_responses=True), Keys()
            ).get(repo_id(url), result["branch"])
            say("branch registry record")
            print(record.model_dump_json(indent=2) if record else "(none)")
        if not live:
            say(
                f"replay {'complete' if replay.finished and not replay.diverged else 'INCOMPLETE'}: "
                f"{replay.served} of {len(replay.script)} recorded responses served"
            )
        say(
            "the same job against a real repository: put it in job.json and run "
            "`codeworker submit job.json --wait` with ANTHROPIC_API_KEY and GITHUB_TOKEN set"
        )
        return 0 if result["success"] else 1


if __name__ == "__main__":
    sys.exit(main())
