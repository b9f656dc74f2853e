"""The ``codeworker`` command's errors, each one line with a non-zero exit status and no traceback,
against a real redis-server (and one that is not there)."""

from __future__ import annotations

import json

import redis

from codeworker.loopback.redis_server import free_port
from tests.support.cli import codeworker


def one_line_error(done, status: int = 1) -> str:
    assert done.returncode == status, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    return line


def quiet_db(redis_server) -> str:
    """A database of the test Redis that no worker consumes from."""
    return redis_server.url.rsplit("/", 1)[0] + "/9"


def test_read_only_commands_need_only_redis(redis_server):
    env = {"REDIS_URL": quiet_db(redis_server), "GITHUB_TOKEN": "", "ANTHROPIC_API_KEY": ""}
    assert codeworker(env, "branches").stdout.strip() == "no branches"
    assert codeworker(env, "locks").stdout.strip() == "no locks held"
    line = one_line_error(codeworker(env, "status", "op-unknown", check=False))
    assert line == "Error: no record of operation op-unknown"


def test_an_unreachable_redis_is_one_line_with_the_password_masked():
    env = {"REDIS_URL": f"redis://:hunter2secret@127.0.0.1:{free_port()}/0", "GITHUB_TOKEN": ""}
    for command in (["branches"], ["locks"], ["status", "op-1"], ["cancel", "op-1"]):
        done = codeworker(env, *command, check=False)
        line = one_line_error(done)
        assert line.startswith("Error: cannot reach Redis at redis://:**@127.0.0.1:"), line
        assert "hunter2secret" not in done.stdout + done.stderr


def test_a_wrong_redis_password_is_one_line(redis_server):
    store = redis.Redis.from_url(redis_server.url)
    store.config_set("requirepass", "the-right-one")
    try:
        url = redis_server.url.replace("redis://", "redis://:the-wrong-one@")
        done = codeworker({"REDIS_URL": url}, "branches", check=False)
    finally:
        redis.Redis.from_url(redis_server.url, password="the-right-one").config_set("requirepass", "")
    line = one_line_error(done)
    assert "refused the credentials" in line and "redis://:**@" in line, line
    assert "the-wrong-one" not in done.stderr


def test_submit_names_every_bad_field_and_sends_nothing(redis_server, tmp_path):
    db = quiet_db(redis_server)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"operation_type": "refactor", "repository": {"url": "ftp://x/y"}}))
    done = codeworker({"REDIS_URL": db}, "submit", str(job_file), check=False)
    line = one_line_error(done, status=2)
    assert "not sent" in line and "description" in line and "repository.url" in line, line
    assert redis.Redis.from_url(db).llen("code-operation") == 0


def test_submit_wait_says_when_no_worker_consumes_the_queue(redis_server, git_server):
    db = quiet_db(redis_server)
    env = {"REDIS_URL": db, "CODEWORKER_ALLOWED_REPOS": git_server.base_url}
    done = codeworker(
        env,
        "submit",
        "--type",
        "refactor",
        "--repo",
        f"{git_server.base_url}/acme/x",
        "-d",
        "x",
        "--wait",
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert "no worker consumes code-operation" in done.stderr
    task_id = done.stdout.strip()
    store = redis.Redis.from_url(db)
    assert [json.loads(m)["headers"]["id"] for m in store.lrange("code-operation", 0, -1)] == [task_id]
    store.delete("code-operation")


def test_cancel_needs_only_redis_and_says_what_it_did(redis_server):
    env = {"REDIS_URL": quiet_db(redis_server), "GITHUB_TOKEN": "", "ANTHROPIC_API_KEY": ""}
    done = codeworker(env, "cancel", "op-never-sent", "--by", "carol")
    assert done.stdout.strip() == (
        "cancellation of op-never-sent recorded; no worker runs it now (queued, or an unknown id): "
        "it will not start"
    )
    again = codeworker(env, "cancel", "op-never-sent")
    assert (
        again.stdout.strip() == "operation op-never-sent was already cancelled by carol (codeworker cancel)"
    )
    status = json.loads(codeworker(env, "status", "op-never-sent").stdout)
    assert status["cancellation"]["requested_by"] == "carol"
