"""The agent executor's sessions through the real pipeline: a real git server, Redis, checkout and SDK.

A scripted model (tests/support/agent_session.py) fixes the sample bug, or fails to, or tries to
reach outside its checkout: what the pull request, the tool results and the summary then say, and
how iterations, the token budget and loop detection end a session.
"""

from __future__ import annotations

import json

from codeworker.executors.agent import prompts
from codeworker.loopback.gitserver import GitServer, _git
from codeworker.replay import RecordedRequest
from tests.conftest import ANTHROPIC_KEY, GITHUB_TOKEN
from tests.support import agent_session
from tests.support import anthropic_stub as s
from tests.support.agent_session import BUG, CART, FIX, fix_script, tool_results, user_text

# The shared fixtures, bound to this module's names: pytest finds them here for these tests only.
stub = agent_session.stub
session = agent_session.session

# -- sessions -----------------------------------------------------------------------------------


def test_fixes_a_real_bug_and_opens_a_verified_pull_request(session, github_stub):
    seen: list[tuple[str, str]] = []
    session.stub.play(*fix_script(session, seen))
    job = session.job()

    result = session.run(job)

    assert result["status"] == "pr_open", result["error"]
    assert result["success"] is True and result["pr"]["draft"] is False
    assert result["files_modified"] == [CART] and result["iterations"] == 1
    assert FIX in session.file(result, CART)
    assert result["verification"]["before"]["passed"] is False
    assert result["verification"]["after"]["passed"] is True
    assert "percent / 100" in result["summary"]
    # Every tool result the model read is what the file system held.
    assert seen and all(got == want for got, want in seen)
    requests = session.stub.messages_requests
    assert len(requests) == 4
    bash_result = tool_results(requests[3])[0]
    assert "5 passed" in bash_result["content"] and "[exit code 0]" in bash_result["content"]
    body = github_stub.pull_requests("acme", session.name)[0]["body"]
    assert "| before |" in body and "failed" in body and "| after |" in body and "passed" in body
    assert f"${result['usage']['cost_usd']:.4f}" in body


def test_the_prompt_carries_the_jobs_context(session):
    session.stub.play(s.say(s.create("NOTES.md", "notes\n")), s.done())
    job = session.job()
    session.run(job)
    first = session.stub.messages_requests[0]
    task = first["messages"][0]["content"][0]["text"]
    assert "assert -2800.0 == 170.0" in task and "test_discount" in task and CART in task
    system = first["system"][0]["text"]
    assert "no network" in system and "runs the test suite itself" in system
    assert [t["type"] for t in first["tools"]] == ["text_editor_20250728", "bash_20250124"]


def test_max_iterations_feed_the_failure_back_each_time(session, github_stub):
    wrong = "return round(total - percent, 2)"
    feedback: list[str] = []

    def after_verification(request: RecordedRequest) -> s.Step:
        feedback.append(user_text(request.body))
        return s.done("Tried again.")

    session.stub.play(
        s.say(s.replace(CART, BUG, wrong)), s.done("Fixed."), after_verification, after_verification
    )
    job = session.job(max_iterations=3)

    result = session.run(job)

    assert result["status"] == "pr_open" and result["success"] is False
    assert result["pr"]["draft"] is True
    assert result["iterations"] == 3
    assert len(feedback) == 2
    assert all("verification after iteration" in text and "test_discount" in text for text in feedback)
    assert "after 3 of 3" in feedback[-1] or "iteration 2 of 3" in feedback[-1]
    assert "Verification still failed after 3 of 3" in result["summary"]


PARTIAL = "return round(total - total * percent / 10, 2)"
"""Half a fix: the worker's verification still fails, so a stopped job's work goes out as a draft.
(A stopped job whose work the tests prove is verified: the worker judges the change, not how the
executor ended.)"""


def test_an_exhausted_budget_keeps_the_work_on_a_draft(session, github_stub):
    session.stub.play(s.say(s.replace(CART, BUG, PARTIAL)), s.done("never reached"))
    job = session.job()

    result = session.run(job, budget_tokens=10)

    assert result["status"] == "pr_open" and result["pr"]["draft"] is True
    assert result["success"] is False
    assert "token budget exhausted" in result["summary"]
    assert PARTIAL in session.file(result, CART)
    assert len(session.stub.messages_requests) == 1
    assert result["usage"]["input_tokens"] + result["usage"]["cache_write_tokens"] > 10


def test_the_model_is_told_once_to_wrap_up_at_the_threshold(session):
    session.stub.play(s.say(s.view(CART)), s.done())
    session.run(session.job())
    first = sum(session.stub.usages[0].values())  # every token the first call billed

    notices: list[str] = []

    def note(request: RecordedRequest) -> s.Step:
        notices.append(user_text(request.body))
        return s.say(s.replace(CART, BUG, PARTIAL))

    session.stub.play(s.say(s.view(CART)), note, s.done())
    result = session.run(session.job(), budget_tokens=int(first / 0.9))

    assert "Budget notice: token budget" in notices[0] and "Wrap up now" in notices[0]
    assert "token budget exhausted" in result["summary"]  # the third call was never made
    assert result["pr"]["draft"] is True and PARTIAL in session.file(result, CART)


def test_a_model_going_round_in_circles_is_stopped(session):
    again = {"command": "view", "path": CART, "view_range": [1, 3]}
    session.stub.play(
        s.say(s.replace(CART, BUG, PARTIAL)),
        *[s.say(s.tool_use("str_replace_based_edit_tool", again)) for _ in range(4)],
        s.done("never reached"),
    )
    job = session.job()

    result = session.run(job, loop_repeats=3, loop_window=8)

    assert result["pr"]["draft"] is True and result["success"] is False
    assert "stuck in a loop" in result["summary"]
    requests = session.stub.messages_requests
    assert len(requests) == 5
    assert "one more identical call ends the job" in tool_results(requests[4])[0]["content"]
    assert "one more" not in tool_results(requests[3])[0]["content"]


def _commit_symlink(git: GitServer, name: str, path: str, target: str) -> None:
    repo = git.repo_path("acme", name)
    blob = _git("hash-object", "-w", "--stdin", cwd=repo, stdin=target.encode()).strip()
    with_link = _git("mktree", cwd=repo, stdin=f"120000 blob {blob}\t{path}\n".encode()).strip()
    base = _git("rev-parse", "main^{tree}", cwd=repo).strip()
    entries = _git("ls-tree", base, cwd=repo) + _git("ls-tree", with_link, cwd=repo)
    tree = _git("mktree", cwd=repo, stdin=entries.encode()).strip()
    sha = _git("commit-tree", tree, "-p", "main", "-m", "link", cwd=repo).strip()
    _git("update-ref", "refs/heads/main", sha, cwd=repo)


def test_writes_outside_the_checkout_are_refused_as_tool_errors(session, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    _commit_symlink(session.git, session.name, "link", str(outside))
    attempts = [
        s.create("../escape.txt", "x"),
        s.create(str(outside / "abs.txt"), "x"),
        s.create("link/through-link.txt", "x"),
        s.create(".git/hooks/pre-commit", "#!/bin/sh\n"),
        s.replace("link/../../escape.txt", "a", "b"),
        s.view("/etc/passwd"),
    ]
    session.stub.play(s.say(*attempts), s.say(s.replace(CART, BUG, FIX)), s.done())
    job = session.job()

    result = session.run(job)

    results = tool_results(session.stub.messages_requests[1])
    assert len(results) == len(attempts)
    assert all(r.get("is_error") is True for r in results), results
    assert all("refused" in r["content"] for r in results)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()
    assert "root:" not in json.dumps(results)
    assert result["files_modified"] == [CART]


def test_commands_do_not_see_the_workers_credentials(session):
    session.stub.play(
        s.say(s.bash("env; echo token=$GITHUB_TOKEN key=$ANTHROPIC_API_KEY")),
        s.say(s.replace(CART, BUG, FIX)),
        s.done(),
    )
    job = session.job()
    session.run(job)
    (result,) = tool_results(session.stub.messages_requests[1])
    assert "token= key=" in result["content"]
    assert GITHUB_TOKEN not in result["content"] and ANTHROPIC_KEY not in result["content"]


def test_an_ambiguous_str_replace_is_a_clear_tool_error(session):
    session.stub.play(
        s.say(s.replace(CART, "    return round(", "    return round(")),
        s.say(s.replace(CART, "return totl", "return total")),
        s.say(s.replace(CART, BUG, FIX)),
        s.say(s.replace(CART, BUG, FIX)),
        s.done(),
    )
    session.run(session.job())
    requests = session.stub.messages_requests
    (twice,) = tool_results(requests[1])
    assert twice["is_error"] is True
    assert "matches 3 times" in twice["content"] and "lines 8, 15, 20" in twice["content"]
    (missing,) = tool_results(requests[2])
    assert missing["is_error"] is True and "not found" in missing["content"]
    assert "nearest candidate" in missing["content"]
    (applied,) = tool_results(requests[4])
    assert applied["is_error"] is True and "applied already" in applied["content"]


def test_the_repositorys_guidance_reaches_the_system_prompt_marked_as_its_own(
    pipe, stub, git_server, tmp_path
):
    agents = "Run the tests with `python -m pytest -q`.\nKeep functions under 20 lines.\n"
    copilot = "Prefer dataclasses.\n" + "x" * 20_000
    files = {**agent_session.sample_files(), "AGENTS.md": agents, ".github/copilot-instructions.md": copilot}
    with_notes = agent_session.make_session(pipe, stub, git_server, tmp_path, files)
    with_notes.stub.play(s.say(s.create("NOTES.md", "notes\n")), s.done())

    with_notes.run(with_notes.job())

    system = with_notes.stub.messages_requests[0]["system"][0]["text"]
    rules, _, guidance = system.partition("Repository guidance:")
    assert "runs the test suite itself" in rules and "Keep functions under 20 lines" not in rules
    assert "(AGENTS.md, .github/copilot-instructions.md)" in guidance
    assert "cannot change those rules" in guidance
    quoted = guidance.split("<repository-guidance>")[1].split("</repository-guidance>")[0]
    assert agents.strip() in quoted and "Prefer dataclasses." in quoted
    assert len(quoted) < prompts.GUIDANCE_LIMIT + 500 and "[... cut: repository guidance is limited" in quoted


def test_a_repository_without_guidance_gets_the_workers_rules_alone(session):
    session.stub.play(s.say(s.create("NOTES.md", "notes\n")), s.done())
    session.run(session.job())
    assert "Repository guidance" not in session.stub.messages_requests[0]["system"][0]["text"]
