"""``python -m demo --repo typescript``: an error fix on a TypeScript project whose Vitest is
installed by the job's setup, end to end, every part real but GitHub's and Anthropic's APIs.

A private redis-server, a git smart-HTTP server holding ``demo/sample_ts`` (``applyDiscount`` in
``src/cart.ts`` computes the discount without ``/ 100``, and its Vitest test fails), a GitHub
stand-in and a ``codeworker worker`` process start on loopback. A sender that does not import
codeworker enqueues ``codeworker.error_fix`` by name. The worker finds the JavaScript profile by
itself: ``npm ci`` from ``package-lock.json`` for setup, ``vitest run`` (the ``test`` script) for
the tests, per test through Vitest's JUnit reporter. Setup has no network: npm installs from the
offline cache ``make tools`` fills (``.work/npm-cache``), named by the ``.npmrc`` this demo writes
into the repository, and shown to the sandbox read-only. The demo shows the fixed test by id, the
pull request and the time setup took; then the same job once more on the same repository, whose
setup is the cached one.

The model: without ANTHROPIC_API_KEY, the recorded Claude session
``demo/sessions/error_fix_typescript.jsonl`` is replayed (once per job) through a Messages API
server on loopback, and the real SDK talks to it. With ANTHROPIC_API_KEY set, the jobs go to
Claude itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from celery import Celery

from codeworker.loopback.github_stub import GitHubStub
from codeworker.loopback.gitserver import GitServer
from codeworker.loopback.redis_server import RedisServer, free_port
from codeworker.loopback.worker import WorkerProcess
from codeworker.replay import ReplayServer
from codeworker.sandbox.rootfs import SYSTEM_DIRS, visible
from demo import RESULT_TIMEOUT, fail, say, worker_env

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLE = HERE / "sample_ts"
SESSION = HERE / "sessions" / "error_fix_typescript.jsonl"
NPM_CACHE = ROOT / ".work" / "npm-cache"
"""The offline npm cache ``make tools`` fills (its npm-fixtures step)."""
CACHE_LOCK = ROOT / "tests" / "fixtures" / "vitest_project" / "package-lock.json"
"""The lock file ``make tools`` fills the cache from: the sample's installs the same packages."""
CART = "src/cart.ts"
FIXED_TEST = "src/cart.test.ts::applyDiscount > takes 15% off 200.00"
"""The failing test, by the id verification gives it: file, then describe block and test name."""
REPO = "cart-ts"
SETUP_SUM = re.compile(r'^codeworker_stage_duration_seconds_sum\{stage="setup"\} (\S+)$', re.MULTILINE)


def npm_cache_problem() -> str | None:
    """Why the offline npm cache cannot install the sample project, in one line; None if it can."""
    stamp = NPM_CACHE / ".complete"
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are needed for the TypeScript demo: run `make tools`"
    if not stamp.is_file():
        return f"no offline npm cache at {NPM_CACHE}: run `make tools`"
    if stamp.read_text().strip() != hashlib.sha256(CACHE_LOCK.read_bytes()).hexdigest():
        return f"the npm cache at {NPM_CACHE} was made from another lock file: run `make tools`"
    ours = json.loads((SAMPLE / "package-lock.json").read_text())["packages"]
    theirs = json.loads(CACHE_LOCK.read_text())["packages"]
    if {k: v for k, v in ours.items() if k} != {k: v for k, v in theirs.items() if k}:
        return f"{SAMPLE / 'package-lock.json'} no longer installs what {CACHE_LOCK} does"
    return None


def project_files() -> dict[str, str]:
    """The sample's files, with an ``.npmrc`` (written here: the cache's path is this machine's)
    that makes the ``npm ci`` the worker finds install offline from the cache."""
    files = {str(p.relative_to(SAMPLE)): p.read_text() for p in sorted(SAMPLE.rglob("*")) if p.is_file()}
    files[".npmrc"] = f"cache={NPM_CACHE}\noffline=true\nignore-scripts=true\naudit=false\nfund=false\n"
    return files


def sandbox_env(cache_root: Path) -> dict[str, str]:
    """The worker's settings for this repository: the npm cache (and Node.js when it lives outside
    the system directories) shown read-only to the sandbox, setup without network, the setup cache
    in ``cache_root``. Paths that do not exist are left out (a worker would refuse to start);
    :func:`npm_cache_problem` says what is missing."""
    shown = [NPM_CACHE]
    node = shutil.which("node")
    if node is not None and not visible(Path(node).resolve(), SYSTEM_DIRS):
        shown.append(Path(node).resolve().parent.parent)  # <prefix>/bin/node; npm is in <prefix>/lib
    return {
        "CODEWORKER_SANDBOX_EXTRA_RO": ":".join(str(path) for path in shown if path.exists()),
        "CODEWORKER_SETUP_NETWORK": "none",
        "CODEWORKER_CACHE_ROOT": str(cache_root),
    }


def error_fix_job(url: str) -> dict:
    return {
        "operation_type": "error_fix",
        "description": "applyDiscount takes far too much off: a 15% discount on 200.00 gives -2800",
        "error_context": {
            "error_message": "AssertionError: expected -2800 to be 170 // Object.is equality",
            "stack_trace": "FAIL  src/cart.test.ts > applyDiscount > takes 15% off 200.00\n"
            "AssertionError: expected -2800 to be 170 // Object.is equality\n"
            " \u276f src/cart.test.ts:16:36\n"  # Vitest's marker
            "     16|     expect(applyDiscount(200, 15)).toBe(170);",
            "affected_files": [CART],
        },
        "repository": {"url": url, "owner": "acme", "name": REPO, "branch": "main"},
        "approval_required": True,
    }


def setup_seconds(port: int) -> float:
    """The seconds the worker's jobs have spent in their setup stage so far (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        found = SETUP_SUM.search(response.read().decode())
    return float(found.group(1)) if found else 0.0


def main(model_env: dict[str, str] | None = None, jobs: int = 2, trajectory_out: Path | None = None) -> int:
    """Run the demo; ``model_env`` points the worker at another Messages API (recording a session),
    ``trajectory_out`` receives the first job's trajectory, ``jobs`` is how many times the job is
    sent (the second shows the cached setup)."""
    problem = npm_cache_problem()
    if problem is not None:
        return fail(problem)
    token = "demo-" + secrets.token_hex(12)
    root = Path(tempfile.mkdtemp(prefix="codeworker-demo-ts-"))
    live = model_env is None and bool(os.environ.get("ANTHROPIC_API_KEY"))
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
        url = git.create_repo("acme", REPO, project_files())
        github.add_repo("acme", REPO, clone_url=url)
        replay: ReplayServer | None = None
        if model_env is not None:
            say(f"the model is the Messages API at {model_env.get('ANTHROPIC_BASE_URL')}")
        elif live:
            model_env = {}
            say("ANTHROPIC_API_KEY is set: the agent talks to Claude itself")
        else:
            # One copy of the recorded session per job: each job asks the same questions.
            replay = stack.enter_context(ReplayServer(*[SESSION] * jobs))
            model_env = {"ANTHROPIC_BASE_URL": replay.url, "ANTHROPIC_API_KEY": "replay-needs-no-key"}
            say(f"REPLAY: the model's answers come from a recorded Claude session ({SESSION.name}),")
            say(
                f"served by a Messages API server on {replay.url}; the SDK, tools, sandbox, npm and "
                "Vitest are real"
            )
        say(f"redis {redis_server.url}, git {url}, GitHub stand-in {github.url}")
        say(f"setup installs offline from the npm cache {NPM_CACHE}, named by the repository's .npmrc")

        port = free_port()
        worker = WorkerProcess(
            {
                **worker_env(root, port, redis_server, git, github, token),
                **sandbox_env(root / "cache"),
                **model_env,
            },
            name="demo-ts",
            echo="    worker | ",
        ).start()
        stack.callback(worker.stop)
        sender = Celery(broker=redis_server.url, backend=redis_server.url)

        timings: list[tuple[float, float, bool]] = []
        code = 0
        for number in range(1, jobs + 1):
            job = error_fix_job(url)
            if number == 1:
                say("worker ready; sending codeworker.error_fix by name from a plain Celery client:")
                print(json.dumps(job, indent=2))
            else:
                say(
                    f"job {number}: the same error_fix for the same repository once more; its setup "
                    "finds the installed node_modules in the setup cache"
                )
            setup_before, entries, started = (
                setup_seconds(port),
                cache_entries(root / "cache"),
                time.monotonic(),
            )
            result = sender.send_task("codeworker.error_fix", args=[job], queue="code-operation").get(
                timeout=RESULT_TIMEOUT
            )
            installed = cache_entries(root / "cache") > entries
            timings.append((setup_seconds(port) - setup_before, time.monotonic() - started, installed))
            if number == 1 and trajectory_out is not None:
                trajectory = root / "trajectories" / f"{result['operation_id']}.jsonl"
                if trajectory.is_file():
                    shutil.copyfile(trajectory, trajectory_out)
            say(f"job {number} result")
            print(json.dumps(result, indent=2))
            code = show(git, github, result) or code
            say(f"job {number}: setup took {timings[-1][0]:.3f} s of the job's {timings[-1][1]:.1f} s")
            if code:
                break

        say('setup time per job (the worker\'s codeworker_stage_duration_seconds{stage="setup"})')
        for number, (setup, total, installed) in enumerate(timings, 1):
            how = "npm ci, offline, into a new setup cache entry" if installed else "the cached node_modules"
            print(f"    job {number}: setup {setup:6.3f} s, whole job {total:5.1f} s  ({how})")
        if replay is not None:
            complete = replay.finished and not replay.diverged
            say(
                f"replay {'complete' if complete else 'INCOMPLETE'}: "
                f"{replay.served} of {len(replay.script)} recorded responses served"
            )
            if replay.diverged:
                code = fail(f"the replay diverged: {replay.diverged}")
        return code


def cache_entries(cache_root: Path) -> int:
    """Setup cache entries published so far (``cache_root/<repo id>/<key>``)."""
    return sum(1 for entry in cache_root.glob("*/*") if entry.is_dir()) if cache_root.is_dir() else 0


def show(git: GitServer, github: GitHubStub, result: dict, repo: str = REPO) -> int:
    """Print the evidence, the pull request and the fixed code; 1 unless the pull request is open
    and verified with the failing test now passing."""
    verification = result.get("verification") or {}
    before = (verification.get("before") or {}).get("tests", {})
    after = (verification.get("after") or {}).get("tests", {})
    say("verification: per test, from Vitest's JUnit report, before the change -> after it")
    for test in sorted(set(before) | set(after)):
        mark = "  <- fixed" if test in verification.get("fixed", []) else ""
        print(f"    {test}: {before.get(test, '-')} -> {after.get(test, '-')}{mark}")
    pull = result.get("pr")
    if pull:
        say(f"pull request #{pull['number']}{' (draft)' if pull['draft'] else ''}: {pull['title']}")
        print(f"    {pull['url']}")
        bodies = [p["body"] for p in github.pull_requests("acme", repo) if p["number"] == pull["number"]]
        print(bodies[0] if bodies else "")
    if result.get("branch"):
        say(f"{CART} on the pushed branch {result['branch']}")
        print(git.read_file("acme", repo, result["branch"], CART))
    if result.get("status") != "pr_open" or not pull:
        status, error = result.get("status"), result.get("error")
        return fail(f"the error fix ended {status} without a pull request: {error}")
    if not verification.get("verified") or pull["draft"]:
        reasons = "; ".join(verification.get("reasons") or []) or "no reason given"
        return fail(f"the pull request is not verified: {reasons}")
    if FIXED_TEST not in verification.get("fixed", []):
        return fail(f"verification does not show {FIXED_TEST} fixed: fixed {verification.get('fixed')}")
    if verification.get("regressions"):
        return fail(f"regressions: {verification['regressions']}")
    say(f"verified: {FIXED_TEST} failed before the change and passes now; no regressions")
    return 0
