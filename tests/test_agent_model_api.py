"""The agent executor and the Messages API: prompt caching, the usage ledger, and the API's errors.

The model is the scripted stand-in (tests/support/agent_session.py) that the real anthropic SDK
reaches on loopback: where the cache breakpoints go and what the ledger bills, and what a 429, an
overload, a refusal, an unparseable reply and an unpriced model do to a job.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from codeworker.executors.agent.trajectory import read_trajectory
from codeworker.pipeline.errors import OperationDeferred
from tests.support import agent_session
from tests.support import anthropic_stub as s
from tests.support.agent_session import BUG, CART, FIX, fix_script

# The shared fixtures, bound to this module's names: pytest finds them here for these tests only.
stub = agent_session.stub
session = agent_session.session

# -- caching and the ledger -----------------------------------------------------------------------


def _breakpoints(body: dict) -> list[str]:
    where = [f"tools[{i}]" for i, t in enumerate(body["tools"]) if "cache_control" in t]
    where += [f"system[{i}]" for i, b in enumerate(body["system"]) if "cache_control" in b]
    for m, message in enumerate(body["messages"]):
        where += [f"messages[{m}][{i}]" for i, b in enumerate(message["content"]) if "cache_control" in b]
    return where


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def test_cache_breakpoints_roll_and_the_ledger_adds_up_exactly(session):
    session.stub.play(*fix_script(session, []))
    job = session.job()

    result = session.run(job)

    requests = session.stub.messages_requests
    for body in requests:
        marks = _breakpoints(body)
        assert len(marks) <= 4
        last = len(body["messages"]) - 1
        assert marks == [
            "tools[1]",
            "system[0]",
            f"messages[{last}][{len(body['messages'][last]['content']) - 1}]",
        ]
    for earlier, later in itertools.pairwise(requests):
        shared = _strip(earlier["messages"])
        assert _strip(later["messages"][: len(shared)]) == shared
        assert _strip(later["tools"]) == _strip(earlier["tools"]) and _strip(later["system"]) == _strip(
            earlier["system"]
        )
    usages = session.stub.usages
    assert all(u["cache_read_input_tokens"] > 0 for u in usages[1:])
    assert sum(u["cache_read_input_tokens"] for u in usages) > sum(u["input_tokens"] for u in usages)
    price = session.settings.prices[session.settings.model]
    totals = {k: sum(u[k] for u in usages) for k in usages[0]}
    usage = result["usage"]
    assert usage["input_tokens"] == totals["input_tokens"]
    assert usage["output_tokens"] == totals["output_tokens"]
    assert usage["cache_read_tokens"] == totals["cache_read_input_tokens"]
    assert usage["cache_write_tokens"] == totals["cache_creation_input_tokens"]
    expected = (
        totals["input_tokens"] * price.input
        + totals["output_tokens"] * price.output
        + totals["cache_read_input_tokens"] * price.cache_read
        + totals["cache_creation_input_tokens"] * price.cache_write
    ) / 1_000_000
    assert usage["cost_usd"] == pytest.approx(expected, abs=1e-6)


# -- API errors -----------------------------------------------------------------------------------


def test_a_429_is_retried_by_the_sdk_and_every_attempt_is_recorded(session):
    session.stub.play(s.error(429, retry_after_ms=5), *fix_script(session, []))
    job = session.job()

    result = session.run(job)

    assert result["success"] is True, result["error"]
    requests = session.stub.messages_requests
    assert len(requests) == 5 and requests[0] == requests[1]
    responses = [e for e in read_trajectory(session.trajectory(job)) if e["kind"] == "response"]
    assert [r["status"] for r in responses[:2]] == [429, 200]
    assert responses[0]["retry_after_ms"] == 5 and responses[1]["retries_taken"] == 1


def test_persistent_overload_defers_the_job(session):
    session.stub.play(*[s.error(529, retry_after_ms=5) for _ in range(3)])
    job = session.job()
    pipe = dataclasses.replace(session.pipe, resolve_executor=lambda name, kind: session.executor())

    with pytest.raises(OperationDeferred) as deferred:
        pipe.run(job.model_dump(mode="json"), "error_fix")

    assert "overloaded" in str(deferred.value)
    assert len(session.stub.messages_requests) == 3  # the first try and the SDK's two retries
    assert session.git.branches("acme", session.name) == ["main"]


def test_a_refusal_ends_the_job_with_a_clear_error(session):
    session.stub.play(
        s.say(s.replace(CART, BUG, FIX)), s.say(s.text("I can't help with that."), stop_reason="refusal")
    )
    result = session.run(session.job())
    assert result["status"] == "failed"
    assert "ModelRefused" in result["error"] and "refusal" in result["error"]


def test_an_unparseable_reply_is_billed_and_fails_clearly(session):
    usage = {
        "input_tokens": 1000,
        "output_tokens": 7,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    session.stub.play(s.raw(200, {"type": "message", "usage": usage}))
    job = session.job()
    result = session.run(job)
    assert result["status"] == "failed" and "InvalidReply" in result["error"]
    (error,) = [e for e in read_trajectory(session.trajectory(job)) if e["kind"] == "error"]
    assert error["usage"]["input_tokens"] == 1000 and error["usage"]["output_tokens"] == 7


def test_an_unpriced_model_is_refused_before_any_call(session):
    result = session.run(session.job(), model="claude-unknown-9")
    assert result["status"] == "failed" and "no price for model 'claude-unknown-9'" in result["error"]
    assert session.stub.requests == []
