"""Hostile jobs through a real worker: each gets a clear error, no retry, and the worker goes on.

Every payload below is sent by name, as a backend would, to one real ``codeworker worker``; the
module then checks that nothing was claimed, locked, registered or pushed for any of them, that
the worker process is the one that started, and that it still runs the next valid job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from codeworker.coordination.keys import Keys
from codeworker.loopback.worker import get
from tests.support.jobs import APP_PY, QUEUE, RESULT_TIMEOUT, new_repo, run_job, scripted_job

MB = 1_000_000


@dataclass(frozen=True)
class Hostile:
    """One malformed or malicious call: its task, arguments, and words the error must contain."""

    name: str
    words: str
    job: Any = None
    task: str = "codeworker.error_fix"
    args: list[Any] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def call_args(self) -> list[Any]:
        return [self.job] if self.args is None else self.args


def hostile_jobs(base_url: str, name: str = "shop") -> list[Hostile]:
    """``base_url`` is the allowlisted git server (``http://127.0.0.1:<port>/``); ``name`` a
    repository of ``acme`` there, which the jobs that get as far as naming one point at."""
    url = f"{base_url}acme/{name}.git"
    host_port = base_url.split("//", 1)[1].rstrip("/")
    port = int(host_port.rsplit(":", 1)[1])

    def job(**overrides: Any) -> dict[str, Any]:
        return {"description": "fix it", "repository": {"url": url}, **overrides}

    def repo(**overrides: Any) -> dict[str, Any]:
        return job(repository={"url": url, **overrides})

    cases = [
        # Wrong types
        Hostile("job is a string", "JSON object", "not a job"),
        Hostile("job is a list", "JSON object", ["description", "x"]),
        Hostile("job is null", "JSON object", None),
        Hostile("job is a number", "JSON object", 42),
        Hostile("description null", "description", job(description=None)),
        Hostile("description object", "description", job(description={"text": "x"})),
        Hostile("description empty", "description", job(description="")),
        Hostile("repository a string", "repository", job(repository=url)),
        Hostile("url a number", "repository.url", job(repository={"url": 123})),
        Hostile("target_files a string", "target_files", job(target_files="app.py")),
        Hostile("target_files of numbers", "target_files.0", job(target_files=[1])),
        Hostile("approval_required 'no'", "approval_required", job(approval_required="no")),
        Hostile("max_iterations a string", "max_iterations", job(max_iterations="3")),
        Hostile("max_iterations a bool", "max_iterations", job(max_iterations=True)),
        Hostile("max_iterations a float", "max_iterations", job(max_iterations=2.5)),
        Hostile("error_context a string", "error_context", job(error_context="boom")),
        Hostile("feature_context a list", "feature_context", job(feature_context=[1])),
        Hostile("operation_id a number", "operation_id", job(operation_id=123)),
        Hostile("test_command a list", "test_command", job(test_command=["pytest"])),
        # Missing fields
        Hostile("empty job", "repository", {}),
        Hostile("no url", "repository.url", job(repository={})),
        Hostile("no description", "description", {"repository": {"url": url}}),
        # Huge strings
        Hostile("1 MB description", "description", job(description="x" * MB)),
        Hostile("10 KB operation_id", "operation_id", job(operation_id="a" * 10_000)),
        Hostile("10,000 target files", "target_files", job(target_files=[f"f{n}.py" for n in range(10_000)])),
        Hostile("5,000-character path", "target_files", job(target_files=["a/" * 2500])),
        Hostile("100 KB url", "repository.url", repo(url=url + "x" * 100_000)),
        Hostile("10 KB branch", "repository.branch", repo(branch="b" * 10_000)),
        Hostile("1 MB test_command", "test_command", job(test_command="pytest " + "x" * MB)),
        Hostile("huge organization_id", "organization_id", job(organization_id="o" * 10_000)),
        # Unicode tricks
        Hostile("bidi override in a path", "invisible", job(target_files=["src/\u202egnp.py"])),
        Hostile("zero-width space in a path", "invisible", job(target_files=["app\u200b.py"])),
        Hostile(
            "fullwidth digits in the host",
            "allowed prefix",
            repo(url=f"http://\uff11\uff12\uff17.0.0.1:{port}/a/b"),
        ),
        Hostile("zero-width joiner in the url", "invisible", repo(url=f"{base_url}ac\u200dme/{name}.git")),
        Hostile("bidi override in the branch", "repository.branch", repo(branch="main\u202e")),
        Hostile("accented operation_id", "operation_id", job(operation_id="op-\u00e9")),
        Hostile("header injection in the url", "whitespace", repo(url=url + "\r\nHost: evil")),
        Hostile("percent-encoded traversal", "only letters", repo(url=f"{base_url}acme/%2e%2e/{name}")),
        # Repository URLs
        Hostile("file:// url", "scheme", repo(url="file:///etc/passwd")),
        Hostile("ssh:// url", "scheme", repo(url="ssh://git@127.0.0.1/acme/shop.git")),
        Hostile("scp-like url", "scheme", repo(url="git@github.com:acme/shop.git")),
        Hostile("git:// url", "scheme", repo(url="git://127.0.0.1/acme/shop.git")),
        Hostile("ext:: transport", "scheme", repo(url="ext::sh%20-c%20touch%20/tmp/pwned")),
        Hostile("user and password in the url", "credentials", repo(url=f"http://u:p@{host_port}/a/b")),
        Hostile("token in the url", "credentials", repo(url=f"http://ghp_token@{host_port}/a/b")),
        Hostile("github.com, off the allowlist", "allowed prefix", repo(url="https://github.com/a/b")),
        Hostile("allowlisted host as a prefix", "allowed prefix", repo(url="http://127.0.0.1.nip.io/a/b")),
        Hostile("another port on loopback", "allowed prefix", repo(url=f"http://127.0.0.1:{port + 1}/a/b")),
        Hostile("dot-dot segments", "only letters", repo(url=f"{base_url}acme/../../etc/{name}")),
        Hostile("a query string", "query", repo(url=url + "?upload-pack=sh")),
        Hostile("owner only", "owner and a repository", repo(url=base_url + "acme")),
        Hostile("owner differs from the url", "does not match", repo(owner="other")),
        # Paths that escape
        Hostile("parent directory", "'..'", job(target_files=["../x.py"])),
        Hostile("absolute path", "relative", job(target_files=["/etc/passwd"])),
        Hostile("nested traversal", "'..'", job(target_files=["a/../../b.py"])),
        Hostile("a git hook", ".git", job(target_files=[".git/hooks/pre-commit"])),
        Hostile("backslashes", "repo-relative", job(target_files=["a\\..\\b.py"])),
        Hostile("NUL byte", "repo-relative", job(target_files=["app.py\x00.txt"])),
        Hostile("traversal in affected_files", "'..'", job(error_context={"affected_files": ["../x"]})),
        Hostile("traversal in the branch", "repository.branch", repo(branch="../main")),
        # Iterations
        Hostile("negative max_iterations", "between 1 and", job(max_iterations=-1)),
        Hostile("zero max_iterations", "between 1 and", job(max_iterations=0)),
        Hostile("enormous max_iterations", "between 1 and", job(max_iterations=10**12)),
        # Operation types and executors
        Hostile("unknown operation type", "was sent to", job(operation_type="deploy")),
        Hostile(
            "type of another task", "was sent to", job(operation_type="test"), task="codeworker.refactor"
        ),
        Hostile("unknown executor", "unknown executor", job(executor="nope")),
        Hostile("executor as a path", "unknown executor", job(executor="../../bin/sh")),
        # Call shape
        Hostile("no argument", "exactly one positional argument", args=[]),
        Hostile("two arguments", "exactly one positional argument", args=[job(), job()]),
        Hostile("job as a keyword", "keyword argument(s) job", args=[], kwargs={"job": job()}),
    ]
    assert len({case.name for case in cases}) == len(cases) >= 50, "the issue asks for 50 distinct cases"
    return cases


def test_hostile_jobs_get_a_clear_error_no_retry_and_the_worker_serves_the_next_job(
    client, worker, worker_env, broker_url, git_server
):
    pid = worker.process.pid
    store = redis.Redis.from_url(broker_url, decode_responses=True)
    before = set(store.keys(f"{Keys().prefix}:*"))
    target, _ = new_repo(git_server)
    cases = hostile_jobs(git_server.base_url, target)
    sent = [
        (case, client.send_task(case.task, args=case.call_args(), kwargs=case.kwargs, queue=QUEUE))
        for case in cases
    ]
    for case, async_result in sent:
        result = async_result.get(timeout=RESULT_TIMEOUT)
        assert result["status"] == "invalid" and result["success"] is False, case.name
        assert case.words in result["error"], (case.name, result["error"])
        assert len(result["error"]) < 2_000, (case.name, "the error echoes the payload")
        assert (async_result.state, async_result.retries) == ("SUCCESS", 0), case.name

    # Nothing was claimed, locked or registered, no branch pushed, and the same worker is up.
    assert set(store.keys(f"{Keys().prefix}:*")) == before
    assert git_server.branches("acme", target) == ["main"]
    assert worker.process.poll() is None and worker.process.pid == pid
    status, health = get(int(worker_env["PORT"]), "/health")
    assert status == 200 and health["status"] == "ok"

    name, url = new_repo(git_server)
    result = run_job(client, scripted_job(url, name, {"write": {"app.py": APP_PY + "# next valid job\n"}}))
    assert result["success"], result["error"]
    assert result["branch"] in git_server.branches("acme", name)


def test_garbage_on_the_queue_does_not_stop_the_worker(client, worker, broker_url, git_server):
    """Messages no Celery client would send: the worker drops them and keeps consuming."""
    queue = redis.Redis.from_url(broker_url)
    for garbage in (b"not json", b"{}", json.dumps({"body": "!!", "headers": {}}).encode(), b"\xff" * 100):
        queue.lpush(QUEUE, garbage)
    name, url = new_repo(git_server)
    result = run_job(client, scripted_job(url, name, {"write": {"app.py": APP_PY + "# after garbage\n"}}))
    assert result["success"], result["error"]
    assert worker.process.poll() is None


@pytest.mark.parametrize("task", ["codeworker.test", "codeworker.feature_implementation"])
def test_every_task_takes_exactly_one_argument(client, task):
    result = client.send_task(task, args=[1, 2, 3], queue=QUEUE).get(timeout=RESULT_TIMEOUT)
    assert result["status"] == "invalid" and "got 3" in result["error"]
