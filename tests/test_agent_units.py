"""The agent's parts on their own: the tools over a real checkout and locks, the ledger, loops."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import SecretStr

from codeworker import logs
from codeworker.config import ModelPrice, Settings
from codeworker.coordination.keys import Keys
from codeworker.coordination.locks import FileLocks
from codeworker.executors.agent.budget import Ledger, UnknownModelPrice
from codeworker.executors.agent.loops import LoopDetector
from codeworker.executors.agent.tools import EDITOR, Tools
from codeworker.sandbox.checkout import Checkout
from codeworker.sandbox.commands import clip
from codeworker.worker import metrics


class _Tree:
    def __init__(self, path: Path) -> None:
        self.path = path

    def changed_files(self) -> list[str]:
        return []


@pytest.fixture()
def checkout(tmp_path, redis_client):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("a = 1\nb = 2\nc = 3\n")
    (root / ".git").mkdir()
    (root / "big.txt").write_text("x" * 2000)
    locks = FileLocks(redis_client, Keys(), "acme/repo", "op-units", ttl=30)
    settings = Settings(workspace_root=tmp_path, cache_root=tmp_path / "cache", command_timeout=30)
    work = Checkout(_Tree(root), locks, settings, None)
    yield work
    locks.release()
    work.close()


def edit(tools: Tools, **tool_input):
    return tools.call(EDITOR, tool_input)


def test_view_numbers_lines_and_honours_view_range(checkout):
    tools = Tools(checkout, 10_000, 1000)
    assert (
        edit(tools, command="view", path="pkg/mod.py").text == "     1\ta = 1\n     2\tb = 2\n     3\tc = 3"
    )
    assert (
        edit(tools, command="view", path="pkg/mod.py", view_range=[2, -1]).text
        == "     2\tb = 2\n     3\tc = 3"
    )
    bad = edit(tools, command="view", path="pkg/mod.py", view_range=[3, 9])
    assert bad.is_error and "outside the file's 3 lines" in bad.text
    absolute = edit(tools, command="view", path=str(checkout.root / "pkg/mod.py"))
    assert not absolute.is_error


def test_view_lists_directories_and_refuses_big_files(checkout):
    tools = Tools(checkout, 10_000, 1000)
    listing = edit(tools, command="view", path=".").text
    assert "pkg/" in listing and "pkg/mod.py" in listing and ".git" not in listing
    big = edit(tools, command="view", path="big.txt")
    assert big.is_error and "2000 bytes" in big.text


def test_insert_and_create_lock_the_file_first(checkout, redis_client):
    tools = Tools(checkout, 10_000, 1000)
    assert not edit(tools, command="insert", path="pkg/mod.py", insert_line=1, insert_text="z = 0").is_error
    assert (checkout.root / "pkg/mod.py").read_text() == "a = 1\nz = 0\nb = 2\nc = 3\n"
    assert not edit(tools, command="create", path="pkg/new.py", file_text="n = 1\n").is_error
    assert set(checkout._locks.held) == {"pkg/mod.py", "pkg/new.py"}


def test_a_file_locked_by_another_operation_is_a_tool_error(checkout, redis_client):
    other = FileLocks(redis_client, Keys(), "acme/repo", "op-other", ttl=30)
    other.acquire(["pkg/mod.py"], wait=0)
    try:
        result = edit(
            Tools(checkout, 10_000, 1000),
            command="str_replace",
            path="pkg/mod.py",
            old_str="a = 1",
            new_str="a = 2",
        )
        assert result.is_error and "op-other" in result.text
        assert (checkout.root / "pkg/mod.py").read_text().startswith("a = 1")
    finally:
        other.release()


def test_long_output_keeps_head_and_tail():
    text = "head" + "-" * 1000 + "tail"
    clipped = clip(text, 100)
    assert clipped.startswith("head") and clipped.endswith("tail")
    assert "908 characters cut" in clipped


def test_bash_reports_exit_status_and_clips(checkout):
    tools = Tools(checkout, 200, 1000)
    result = tools.call("bash", {"command": "seq 1 500; exit 3"})
    assert result.text.startswith("1\n2\n") and result.text.endswith("[exit code 3]")
    assert "characters cut" in result.text
    assert "restarted" in tools.call("bash", {"restart": True}).text


def test_a_secret_in_a_tool_result_is_scrubbed_counted_and_logged(checkout, caplog):
    """Whatever a command prints (the file a repository committed, a config it found), the worker's
    secrets never reach the model: plain, URL-encoded and base64-encoded, at any alignment."""
    secret = "ghp_scrubme/0123456789+abcdef=="
    settings = Settings(
        github_token=SecretStr(secret),
        redis_url="redis://:r3dis-pass-word@127.0.0.1:1/0",
        webhook_secret=SecretStr("hook-secret-0123456789"),
    )
    logs.register_credentials(settings)
    (checkout.root / "leak.txt").write_text(f"{secret}\nr3dis-pass-word\nhook-secret-0123456789\n")
    tools = Tools(checkout, 20_000, 100_000)
    before = _scrubbed_total()
    commands = [
        "cat leak.txt",
        "base64 -w0 leak.txt",
        "printf x | cat - leak.txt | base64 -w0",
        "printf xy | cat - leak.txt | base64 -w0",
        "python3 -c \"import urllib.parse; print(urllib.parse.quote(open('leak.txt').read(), safe=''))\"",
    ]
    with caplog.at_level("ERROR"):
        results = [tools.call("bash", {"command": command}).text for command in commands]
    for command, text in zip(commands, results, strict=True):
        assert "[redacted]" in text, (command, text)
        assert secret not in text and "r3dis-pass-word" not in text and "hook-secret" not in text
        assert base64.b64encode(secret.encode()).decode()[:20] not in text
    assert _scrubbed_total() - before >= len(commands)
    assert "held" in caplog.text and "confinement failure" in caplog.text and secret not in caplog.text


def _scrubbed_total() -> float:
    return sum(
        sample.value
        for family in metrics.registry().collect()
        for sample in family.samples
        if sample.name == "codeworker_secrets_scrubbed_total"
    )


def test_ledger_prices_every_kind_of_token_and_warns_before_stopping():
    settings = Settings(
        budget_tokens=1000,
        prices={"m": ModelPrice(input=3, output=15, cache_write=3.75, cache_read=0.3)},
        model="m",
    )
    ledger = Ledger(settings)
    ledger.add(
        {
            "input_tokens": 100,
            "output_tokens": 100,
            "cache_read_input_tokens": 500,
            "cache_creation_input_tokens": 100,
        }
    )
    assert ledger.usage.cost_usd == pytest.approx((300 + 1500 + 150 + 375) / 1e6)
    state = ledger.check()
    assert state.exceeded is None and state.wrap_up and "token budget 80%" in state.wrap_up
    ledger.add({"input_tokens": 200, "output_tokens": 0})
    assert ledger.check().exceeded == "token budget exhausted (1000 tokens of 1000)"


def test_the_time_budget_uses_the_clock():
    now = [0.0]
    ledger = Ledger(Settings(budget_seconds=100), clock=lambda: now[0])
    now[0] = 85
    assert ledger.check().wrap_up and not ledger.check().exceeded
    now[0] = 100
    assert ledger.check().exceeded.startswith("time budget exhausted")


def test_an_unknown_model_has_no_price():
    with pytest.raises(UnknownModelPrice, match="claude-x"):
        Ledger(Settings(model="claude-x"))


def test_loop_detector_warns_then_stops():
    loops = LoopDetector(window=4, repeats=2)
    counts = [loops.see("bash", {"command": "ls"}) for _ in range(3)]
    assert counts == [1, 2, 3]
    assert loops.is_warning(2) and loops.is_stuck(3)
    for other in ("a", "b", "c", "d"):
        loops.see("bash", {"command": other})
    assert loops.see("bash", {"command": "ls"}) == 1
