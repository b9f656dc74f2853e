"""``make demo``: one real operation end to end, every part real except GitHub's API.

A private redis-server, a git smart-HTTP server with the sample repository, a GitHub stand-in and a
``codeworker worker`` process start on loopback; a sender that does not import codeworker enqueues
a refactor job by task name; the worker checks out, locks, runs the ``autofix`` executor, scans,
commits, pushes and opens the pull request. The result and the pull request are printed.
"""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
from pathlib import Path

import redis
from celery import Celery

from codeworker.keys import Keys, repo_id
from codeworker.registry import BranchRegistry
from tests.support.github_stub import GitHubStub
from tests.support.gitserver import GitServer
from tests.support.redis_server import RedisServer
from tests.support.worker import WorkerProcess

SAMPLE = Path(__file__).resolve().parent / "sample"


def sample_files() -> dict[str, str]:
    return {str(p.relative_to(SAMPLE)): p.read_text() for p in sorted(SAMPLE.rglob("*")) if p.is_file()}


def say(text: str) -> None:
    print(f"\033[1m==> {text}\033[0m", flush=True)


def main() -> int:
    token = "demo-" + secrets.token_hex(12)
    root = Path(tempfile.mkdtemp(prefix="codeworker-demo-"))
    redis_server, git, github = RedisServer(), GitServer(root / "remote", token), GitHubStub(token)
    worker: WorkerProcess | None = None
    try:
        redis_server.start()
        git.start()
        github.start()
        url = git.create_repo("acme", "inventory", sample_files())
        say(f"redis {redis_server.url}, git {url}, GitHub stand-in {github.url}")
        worker = WorkerProcess(
            {
                "REDIS_URL": redis_server.url,
                "WORKSPACE_ROOT": str(root / "workspace"),
                "GITHUB_TOKEN": token,
                "GITHUB_API_URL": github.url,
                "CODEWORKER_ALLOWED_REPOS": git.base_url,
                "CODEWORKER_LOG_FORMAT": "console",
                # The demo runs as whoever calls make; Celery's warning about root is noise here.
                "PYTHONWARNINGS": "ignore:You're running the worker with superuser",
            },
            name="demo",
            with_test_plugins=False,
            echo="    worker | ",
        ).start()
        say("worker ready; sending codeworker.refactor by name from a plain Celery client")
        job = {
            "operation_type": "refactor",
            "description": "Tidy inventory.py: remove unused imports and format it",
            "repository": {"url": url, "owner": "acme", "name": "inventory", "branch": "main"},
            "target_files": ["inventory.py"],
            "approval_required": True,
        }
        sender = Celery(broker=redis_server.url, backend=redis_server.url)
        async_result = sender.send_task("codeworker.refactor", args=[job], queue="code-operation")
        result = async_result.get(timeout=180, propagate=True)
        say("result")
        print(json.dumps(result, indent=2))
        pulls = github.pull_requests("acme", "inventory")
        if pulls:
            say(f"pull request #{pulls[0]['number']}: {pulls[0]['title']}")
            print(pulls[0]["body"])
        say("inventory.py on the pushed branch")
        print(git.read_file("acme", "inventory", result["branch"], "inventory.py"))
        registry = BranchRegistry(redis.Redis.from_url(redis_server.url, decode_responses=True), Keys())
        record = registry.get(repo_id(url), result["branch"])
        say("branch registry record")
        print(record.model_dump_json(indent=2) if record else "(none)")
        return 0 if result["success"] else 1
    finally:
        if worker is not None:
            worker.stop()
        github.stop()
        git.stop()
        redis_server.close()


if __name__ == "__main__":
    sys.exit(main())
