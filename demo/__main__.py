"""``make demo``: a job and its follow-up end to end, every part real but GitHub's and Anthropic's APIs.

A private redis-server, a git smart-HTTP server holding the sample project with a real bug
(``demo/sample_bug``: a discount computed without ``/ 100``), a GitHub stand-in and a
``codeworker worker`` process start on loopback. A sender that does not import codeworker
enqueues ``codeworker.error_fix`` by name; the worker checks out, locks, runs the agent executor,
verifies, scans, commits, pushes and opens the pull request.

Then a follow-up: a reviewer with write access reviews the pull request, asking ``@codeworker`` for
a change, and the GitHub stand-in delivers the signed ``pull_request_review`` webhook to the
worker's HTTP server. The worker queues ``codeworker.follow_up``, which revises the pull request on
its branch: one more commit on top of the first, verified over the whole pull request, and a reply
on the pull request saying what changed. The demo fails unless exactly that commit arrives.

The model: without ANTHROPIC_API_KEY, recorded Claude sessions (``demo/sessions/error_fix.jsonl``,
then ``demo/sessions/follow_up.jsonl``) are replayed through a Messages API server on loopback,
and the real SDK talks to it. With ANTHROPIC_API_KEY set, the same jobs go to Claude itself.

``python -m demo --repo typescript``: an error fix on a TypeScript project with Vitest instead
(:mod:`demo.typescript`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import redis
from celery import Celery
from celery.result import AsyncResult

from codeworker.coordination.keys import Keys, repo_id
from codeworker.coordination.registry import BranchRegistry
from codeworker.loopback.github_stub import GitHubStub
from codeworker.loopback.gitserver import GitServer
from codeworker.loopback.redis_server import RedisServer, free_port
from codeworker.loopback.worker import WorkerProcess
from codeworker.replay import ReplayServer
from demo import RESULT_TIMEOUT, fail, say, worker_env

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "sample_bug"
SESSIONS = (HERE / "sessions" / "error_fix.jsonl", HERE / "sessions" / "follow_up.jsonl")
"""The recorded sessions, served in the order the worker asks: the error fix, then its follow-up."""
REVIEWER = "reviewer"
REVIEW = (
    "@codeworker thanks, the discount is right now. with_tax has the same kind of gap: a negative rate "
    "lowers the price instead of being refused. Please make it raise ValueError like apply_discount "
    "does for a percent out of range, and add tests for both refusals (a negative percent, a negative "
    "rate)."
)
PROGRESS = "<!-- codeworker:progress -->"
"""How the comment codeworker edits as a revision runs begins (it is hidden on GitHub)."""
REVIEW_COMMENT = {
    "path": "pricing/cart.py",
    "line": 18,
    "body": "with_tax(100.0, -0.2) gives 80.0 here; it should raise ValueError.",
}


def sample_files() -> dict[str, str]:
    return {str(p.relative_to(SAMPLE)): p.read_text() for p in sorted(SAMPLE.rglob("*")) if p.is_file()}


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
    webhook_secret = secrets.token_hex(16)
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
        # Webhook payloads then name the git server's repository, the one the job names.
        github.add_repo("acme", "pricing", clone_url=url)
        github.set_permission("acme", "pricing", REVIEWER, "write")
        model_env: dict[str, str] = {}
        replay: ReplayServer | None = None
        if live:
            say("ANTHROPIC_API_KEY is set: the agent talks to Claude itself")
        else:
            replay = stack.enter_context(ReplayServer(*SESSIONS))
            model_env = {"ANTHROPIC_BASE_URL": replay.url, "ANTHROPIC_API_KEY": "replay-needs-no-key"}
            names = " then ".join(session.name for session in SESSIONS)
            say(f"REPLAY: the model's answers come from recorded Claude sessions ({names}),")
            say(
                f"served by a Messages API server on {replay.url}; the SDK, tools, sandbox and tests are real"
            )
        say(f"redis {redis_server.url}, git {url}, GitHub stand-in {github.url}")

        port = free_port()
        worker = WorkerProcess(
            {
                **worker_env(root, port, redis_server, git, github, token),
                "CODEWORKER_WEBHOOK_SECRET": webhook_secret,
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
        result = sender.send_task("codeworker.error_fix", args=[job], queue="code-operation").get(
            timeout=RESULT_TIMEOUT
        )

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
        if result["status"] != "pr_open" or not result["pr"]:
            code = fail(f"the error fix ended {result['status']} without a pull request: {result['error']}")
        else:
            code = follow_up(
                git, github, sender, result, f"http://127.0.0.1:{port}/webhooks/github", webhook_secret
            )
        if replay is not None:
            complete = replay.finished and not replay.diverged
            say(
                f"replay {'complete' if complete else 'INCOMPLETE'}: "
                f"{replay.served} of {len(replay.script)} recorded responses served"
            )
            if replay.diverged:
                code = fail(f"the replay diverged: {replay.diverged}")
        say(
            "the same job against a real repository: put it in job.json and run "
            "`codeworker submit job.json --wait` with ANTHROPIC_API_KEY and GITHUB_TOKEN set"
        )
        return code


def follow_up(
    git: GitServer, github: GitHubStub, sender: Celery, result: dict, webhook: str, webhook_secret: str
) -> int:
    """Review the pull request as a person with write access, deliver the review to the worker's
    webhook as GitHub would, wait for the follow-up it queues and show what it pushed; 1 unless
    the follow-up put exactly one new commit on top of the first."""
    number, branch, first = result["pr"]["number"], result["branch"], result["commits"][-1]
    say(
        f"follow-up: @{REVIEWER} (write access) reviews pull request #{number}, asking @codeworker for a "
        "change; GitHub's signed pull_request_review webhook goes to the worker"
    )
    review = github.add_review(
        "acme", "pricing", number, user=REVIEWER, body=REVIEW, comments=[REVIEW_COMMENT]
    )
    print(f"review: {REVIEW}")
    print(f"on {REVIEW_COMMENT['path']} line {REVIEW_COMMENT['line']}: {REVIEW_COMMENT['body']}")
    payload = github.webhooks.pull_request_review("acme", "pricing", review["id"])
    status, answer = github.webhooks.deliver(
        webhook, webhook_secret, "pull_request_review", payload, timeout=30
    )
    say(f"POST {webhook} answered {status}")
    print(json.dumps(answer, indent=2))
    if status != 200 or not isinstance(answer, dict) or "queued" not in answer:
        return fail("the review did not queue a follow-up")
    revised = AsyncResult(answer["queued"], app=sender).get(timeout=RESULT_TIMEOUT)
    say(f"follow-up result ({answer['task']}, operation {revised['operation_id']})")
    print(json.dumps(revised, indent=2))

    if not revised["success"] or revised["status"] != "pr_open":
        return fail(f"the follow-up ended {revised['status']}: {revised['error']}")
    second = git.ref_sha("acme", "pricing", branch)
    pushed_one = revised["commits"] == [*result["commits"], second]
    if not pushed_one or git.parents("acme", "pricing", branch) != [first]:
        return fail(
            f"the follow-up did not push exactly one new commit on top of the first ({first}): {branch} is "
            f"at {second}, the follow-up reports commits {revised['commits']}"
        )
    say("the second commit on the branch, and what it changed")
    print(remote_git(git, "log", "-1", "--format=commit %H%nparent %P%n%n    %s%n", second))
    print(remote_git(git, "diff", first, second))
    comments = [c["body"] for c in github.issue_comments("acme", "pricing", number)]
    say("the reply on the pull request")
    print(next((body for body in comments if body.startswith("**Revision 1**")), "(none)"))
    # codeworker keeps one progress comment per pull request: should there be more, all are shown.
    progress = [body for body in comments if body.startswith(PROGRESS)]
    say("the progress comment" if len(progress) == 1 else f"{len(progress)} progress comments")
    print("\n\n".join(progress) or "(none)")
    return 0


def remote_git(git: GitServer, *args: str) -> str:
    """The output of a git command in the git server's bare repository."""
    return subprocess.run(
        ["git", *args], cwd=git.repo_path("acme", "pricing"), capture_output=True, text=True, check=True
    ).stdout


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description="codeworker end to end, on loopback")
    parser.add_argument(
        "--repo",
        choices=("python", "typescript"),
        default="python",
        help="the sample repository: python (the error fix and its follow-up; `make demo`) or "
        "typescript (an error fix on a Vitest project, installed by setup from the offline npm cache)",
    )
    if parser.parse_args(argv).repo == "typescript":
        from demo import typescript

        return typescript.main()
    return main()


if __name__ == "__main__":
    sys.exit(cli())
