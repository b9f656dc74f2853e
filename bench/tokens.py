"""What the prompt cache serves an agent job, and whether the ledger bills exactly what the API reports.

    .venv/bin/python -m bench.tokens

A recorded 10-turn conversation (the demo's error fix on ``demo/sample_bug``, done thoroughly: look
around, reproduce, read, fix, test, check) runs through the agent loop of ``executors/agent``
(``Agent``, ``AnthropicModel``, ``Ledger``) and the real anthropic SDK, against a Messages API
stand-in on loopback that answers with the recorded turns and reports usage the way Anthropic bills
prompt caching. The tools' answers are the recorded ones (file views made by the editor's own
line numbering from the sample's files), so no checkout or sandbox is needed.

Figure 1: the share of the job's input tokens read from the cache (what
``codeworker_model_cache_hit_ratio`` observes for it). Figure 2: the ledger's billed tokens and
cost against the stand-in's own usage, summed over its answers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench import report
from bench.report import Figure
from codeworker.config import ModelPrice, Settings
from codeworker.executors.agent import prompts
from codeworker.executors.agent.agent import Agent, text_block
from codeworker.executors.agent.budget import Ledger
from codeworker.executors.agent.model import AnthropicModel, Attempt
from codeworker.executors.agent.tools import BASH, EDITOR, TOOL_DEFINITIONS, ToolResult, numbered
from codeworker.executors.agent.trajectory import Trajectory
from codeworker.models import Job, Usage, parse_job
from codeworker.replay import MessagesServer, RecordedRequest, Reply, api_error
from codeworker.worker.metrics import cache_hit_ratio

API_KEY = "bench-tokens-key"
SAMPLE = Path(__file__).resolve().parent.parent / "demo" / "sample_bug"
CART = "pricing/cart.py"
BUG = "return round(total - total * percent, 2)"
FIX = "return round(total - total * percent / 100, 2)"
CHECKOUT = Path("/workspace/repos/worktrees/bench-tokens")
"""Where the system prompt says the checkout is (nothing is read from there)."""

CACHE_SHARE_TARGET = 0.8

# -- how the Messages API counts and caches a prompt ------------------------------------------------

CHARS_PER_TOKEN = 4
"""The stand-in's tokenizer: a block costs one token per four characters of its JSON."""

ANTHROPIC_TOOL_TOKENS = {"text_editor_": 700, "bash_": 245}
"""Anthropic-defined tools are expanded by the API; their documented input tokens, by type prefix."""

TOOL_USE_PROMPT = {"type": "tool_use_system_prompt"}
"""Stands for the system prompt the API puts before the tools of any request that has tools."""

TOOL_USE_PROMPT_TOKENS = 346
"""Its documented size with ``tool_choice`` auto."""

LOOKBACK = 20
"""Blocks before a breakpoint the API looks back through for an earlier cache entry."""

MAX_BREAKPOINTS = 4

MIN_CACHEABLE = 1024
"""Shortest prefix the API caches for Sonnet models, in tokens; a shorter one is billed as input."""


def _strip(block: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in block.items() if key != "cache_control"}


def tokens(block: dict[str, Any]) -> int:
    if block == TOOL_USE_PROMPT:
        return TOOL_USE_PROMPT_TOKENS
    kind = str(block.get("type", ""))
    for prefix, count in ANTHROPIC_TOOL_TOKENS.items():
        if kind.startswith(prefix):
            return count
    return max(1, len(json.dumps(_strip(block), sort_keys=True)) // CHARS_PER_TOKEN)


def prompt_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request in the order the cache sees it: tools, system, then every message's blocks."""
    blocks: list[dict[str, Any]] = [TOOL_USE_PROMPT, *body["tools"]] if body.get("tools") else []
    system = body.get("system") or []
    blocks += [text_block(system)] if isinstance(system, str) else system
    for message in body.get("messages", []):
        content = message["content"]
        content = [text_block(content)] if isinstance(content, str) else content
        blocks += [{"role": message["role"], **block} for block in content]
    return blocks


class PromptCache:
    """Prompt caching as Anthropic bills it.

    A request's prefix up to each ``cache_control`` breakpoint (at most four) is written to the
    cache. A later request reads the longest prefix an earlier one wrote, found at one of its
    breakpoints or up to :data:`LOOKBACK` blocks before one: those tokens are
    ``cache_read_input_tokens``, the rest up to the last breakpoint ``cache_creation_input_tokens``,
    and what follows the last breakpoint ``input_tokens``. Entries do not expire here: the bench
    runs in seconds, the cache's time to live is five minutes.
    """

    def __init__(self) -> None:
        self.written: set[str] = set()

    def usage(self, body: dict[str, Any]) -> dict[str, Any]:
        blocks = prompt_blocks(body)
        breakpoints = [i for i, block in enumerate(blocks) if "cache_control" in block]
        if len(breakpoints) > MAX_BREAKPOINTS:
            raise ValueError(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided")
        upto = list(itertools.accumulate(tokens(block) for block in blocks))
        digest, prefixes = hashlib.sha256(), []
        for block in blocks:
            digest.update(json.dumps(_strip(block), sort_keys=True).encode())
            prefixes.append(digest.hexdigest())
        hit = max(
            (
                i
                for point in breakpoints
                for i in range(max(0, point - LOOKBACK), point + 1)
                if prefixes[i] in self.written
            ),
            default=-1,
        )
        cacheable = [point for point in breakpoints if upto[point] >= MIN_CACHEABLE]
        end = max(cacheable, default=-1)
        read = upto[hit] if hit >= 0 else 0
        created = upto[end] - read if end > hit else 0
        self.written.update(prefixes[point] for point in cacheable)
        return {
            "input_tokens": upto[-1] - read - created,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": created, "ephemeral_1h_input_tokens": 0},
            "service_tier": "standard",
        }


# -- the recorded conversation ----------------------------------------------------------------------

LISTING = """Files and directories up to 2 levels deep in ., hidden items excluded:
README.md
pricing/
pricing/__init__.py
pricing/cart.py
pytest.ini
tests/
tests/test_cart.py"""
PYTEST = "python -m pytest -q -p no:cacheprovider"
FAILING = """..F..                                                                    [100%]
=================================== FAILURES ===================================
________________________________ test_discount _________________________________

    def test_discount() -> None:
>       assert apply_discount(200.0, 15) == 170.0
E       assert -2800.0 == 170.0
E        +  where -2800.0 = apply_discount(200.0, 15)

tests/test_cart.py:15: AssertionError
=========================== short test summary info ============================
FAILED tests/test_cart.py::test_discount - assert -2800.0 == 170.0
1 failed, 4 passed in 0.03s
[exit code 1]"""
PASSING = """.....                                                                    [100%]
5 passed in 0.01s
[exit code 0]"""
GREP = "grep -rn apply_discount --include=*.py ."
GREP_OUTPUT = """./pricing/cart.py:11:def apply_discount(total: float, percent: float) -> float:
./tests/test_cart.py:2:from pricing.cart import apply_discount, line_total, with_tax
./tests/test_cart.py:15:    assert apply_discount(200.0, 15) == 170.0
./tests/test_cart.py:19:    assert apply_discount(99.99, 0) == 99.99
[exit code 0]"""


@dataclass(frozen=True)
class Turn:
    """One recorded model turn: what the model answered, and the tools' answers to its calls."""

    content: list[dict[str, Any]]
    results: list[str]

    @property
    def calls(self) -> list[dict[str, Any]]:
        return [block for block in self.content if block["type"] == "tool_use"]


def recording() -> list[Turn]:
    """Ten turns on ``demo/sample_bug``: nine with one tool call each, then the summary."""
    fixed = (SAMPLE / CART).read_text().replace(BUG, FIX).splitlines()
    ids = itertools.count(1)

    def turn(text: str, tool: str = "", result: str = "", **tool_input: Any) -> Turn:
        if not tool:
            return Turn([text_block(text)], [])
        call = {"type": "tool_use", "id": f"toolu_{next(ids):06d}", "name": tool, "input": tool_input}
        return Turn([text_block(text), call], [result])

    def view(path: str) -> str:
        return numbered((SAMPLE / path).read_text().splitlines())

    edited = "Edited pricing/cart.py. The changed region now reads:\n" + numbered(fixed[10:19], 11)
    return [
        turn("I'll start with the project layout.", EDITOR, LISTING, command="view", path="."),
        turn(
            "The README may say how the project is tested.",
            EDITOR,
            view("README.md"),
            command="view",
            path="README.md",
        ),
        turn("Let me reproduce the failure first.", BASH, FAILING, command=PYTEST),
        turn(
            "The failing test is test_discount. The discount code:",
            EDITOR,
            view(CART),
            command="view",
            path=CART,
        ),
        turn(
            "And the tests, for what else relies on apply_discount.",
            EDITOR,
            view("tests/test_cart.py"),
            command="view",
            path="tests/test_cart.py",
        ),
        turn("Is apply_discount called anywhere else?", BASH, GREP_OUTPUT, command=GREP),
        turn(
            "`apply_discount` multiplies by `percent` as if it were a fraction: 15 takes off 15 times "
            "the total. The percentage has to be divided by 100.",
            EDITOR,
            edited,
            command="str_replace",
            path=CART,
            old_str=BUG,
            new_str=FIX,
        ),
        turn("Now the full test suite again.", BASH, PASSING, command=PYTEST),
        turn(
            "A last look at the edited function.",
            EDITOR,
            numbered(fixed[10:15], 11),
            command="view",
            path=CART,
            view_range=[11, 15],
        ),
        turn(
            "Fixed `apply_discount` in pricing/cart.py: it subtracted `total * percent`, treating the "
            "percentage as a fraction, so a 15% discount on 200.00 gave -2800.00. It now subtracts "
            "`total * percent / 100`. All 5 tests pass, including test_discount."
        ),
    ]


class RecordedMessagesApi(MessagesServer):
    """The Messages API answering with the recorded turns, billing each as :class:`PromptCache` says."""

    def __init__(self, turns: list[Turn]) -> None:
        super().__init__(API_KEY)
        self.turns = deque(turns)
        self.cache = PromptCache()
        self.usages: list[dict[str, Any]] = []

    def answer(self, request: RecordedRequest, index: int) -> Reply:
        if not self.turns:
            return api_error(400, "invalid_request_error", "the recording has no more turns")
        try:
            usage = self.cache.usage(request.body)
        except ValueError as exc:
            return api_error(400, "invalid_request_error", str(exc))
        turn = self.turns.popleft()
        usage["output_tokens"] = sum(tokens(block) for block in turn.content)
        self.usages.append(usage)
        message = {
            "id": f"msg_bench{index:04d}",
            "type": "message",
            "role": "assistant",
            "model": request.body.get("model"),
            "content": turn.content,
            "stop_reason": "tool_use" if turn.calls else "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        return Reply(200, message)


class RecordedTools:
    """The agent's tools (its Environment), answering each call from the recording."""

    definitions = TOOL_DEFINITIONS

    def __init__(self, turns: list[Turn]) -> None:
        self.answers = deque(
            (call["name"], call["input"], result)
            for turn in turns
            for call, result in zip(turn.calls, turn.results, strict=True)
        )

    def call(self, name: str, tool_input: dict[str, Any]) -> ToolResult:
        recorded_name, recorded_input, result = self.answers.popleft()
        if (name, tool_input) != (recorded_name, recorded_input):
            raise RuntimeError(f"the agent called {name} {tool_input}, the recording {recorded_name}")
        return ToolResult(result)

    def stop_if_cancelled(self) -> None:
        """Nothing cancels a bench run."""


# -- one job --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    ledger: Usage
    """What codeworker's ledger recorded (the result's ``usage``)."""
    answers: list[dict[str, Any]]
    """The usage of each of the stand-in's answers."""
    price: ModelPrice
    turns: int


def error_fix_job() -> Job:
    return parse_job(
        {
            "description": "apply_discount takes far too much off: a 15% discount on 200.00 gives -2800.00",
            "error_context": {
                "error_message": "AssertionError: assert -2800.0 == 170.0",
                "affected_files": [CART],
            },
            "repository": {"url": "https://github.com/acme/pricing"},
            "operation_id": "bench-tokens",
        },
        operation_type="error_fix",
        allowed_repos=["https://github.com/"],
        max_iterations_cap=10,
    )


def sdk_model(url: str, on_attempt: Callable[[Attempt], None]) -> AnthropicModel:
    """The model as a worker makes it: the SDK reads ANTHROPIC_BASE_URL when its client is made."""
    saved = os.environ.get("ANTHROPIC_BASE_URL")
    os.environ["ANTHROPIC_BASE_URL"] = url
    try:
        return AnthropicModel(API_KEY, on_attempt)
    finally:
        if saved is None:
            del os.environ["ANTHROPIC_BASE_URL"]
        else:
            os.environ["ANTHROPIC_BASE_URL"] = saved


def run_session() -> Session:
    """The recorded job through the agent loop, as ``AgentExecutor`` runs one iteration of it."""
    turns = recording()
    job = error_fix_job()
    with RecordedMessagesApi(turns) as api, tempfile.TemporaryDirectory(prefix="cw-bench-tokens-") as scratch:
        settings = Settings(anthropic_api_key=SecretStr(API_KEY), trajectory_dir=Path(scratch))
        ledger = Ledger(settings)

        def on_attempt(attempt: Attempt) -> None:
            if attempt.usage is not None:
                ledger.add(attempt.usage)

        trajectory = Trajectory(settings.trajectory_dir, job.operation_id)
        agent = Agent(
            sdk_model(api.url, on_attempt),
            RecordedTools(turns),
            ledger,
            trajectory,
            settings,
            prompts.system_prompt(job, CHECKOUT),
        )
        agent.messages = [{"role": "user", "content": [text_block(prompts.task_prompt(job))]}]
        try:
            stopped = agent.work()
        finally:
            trajectory.close()
        if stopped is not None or api.turns:
            raise RuntimeError(f"the recorded job did not run to its end: {stopped or 'turns left'}")
        return Session(ledger.usage, api.usages, ledger.price, agent.turns)


def cost(usage: Usage, price: ModelPrice) -> float:
    """US dollars of ``usage`` at ``price``, rounded as the ledger rounds."""
    return round(
        (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + usage.cache_read_tokens * price.cache_read
            + usage.cache_write_tokens * price.cache_write
        )
        / 1_000_000,
        6,
    )


def figures(quick: bool) -> list[Figure]:
    """The job is deterministic, so one run says it all: ``quick`` changes nothing."""
    session = run_session()
    ledger, answers = session.ledger, session.answers
    billed = Usage(
        input_tokens=sum(answer["input_tokens"] for answer in answers),
        output_tokens=sum(answer["output_tokens"] for answer in answers),
        cache_read_tokens=sum(answer["cache_read_input_tokens"] for answer in answers),
        cache_write_tokens=sum(answer["cache_creation_input_tokens"] for answer in answers),
    )
    billed.cost_usd = cost(billed, session.price)
    share = cache_hit_ratio(ledger) or 0.0
    prompt = ledger.input_tokens + ledger.cache_read_tokens + ledger.cache_write_tokens
    uncached = cost(Usage(input_tokens=prompt, output_tokens=ledger.output_tokens), session.price)

    def total(usage: Usage) -> int:
        return usage.input_tokens + usage.output_tokens + usage.cache_read_tokens + usage.cache_write_tokens

    return [
        Figure(
            name=f"prompt cache, {session.turns}-turn agent job: input read from the cache",
            value=share * 100,
            unit="%",
            baseline="the API stand-in's usage (Anthropic's caching rules)",
            baseline_value=None,
            target=f">= {CACHE_SHARE_TARGET:.0%}",
            met=share >= CACHE_SHARE_TARGET,
            note=(
                f"{ledger.cache_read_tokens:,} of {prompt:,} input tokens read from the cache, "
                f"{ledger.cache_write_tokens:,} written to it, {ledger.input_tokens:,} uncached; the job "
                f"cost ${ledger.cost_usd:.4f}, ${uncached:.4f} without the cache"
            ),
        ),
        Figure(
            name="ledger against the API's usage, summed over the job's answers",
            value=total(ledger),
            unit="tokens",
            baseline="the stand-in's usage",
            baseline_value=total(billed),
            target="exact (1.00x)",
            met=ledger == billed,
            note=(
                f"input {ledger.input_tokens:,}, output {ledger.output_tokens:,}, cache reads "
                f"{ledger.cache_read_tokens:,}, cache writes {ledger.cache_write_tokens:,}: "
                f"${ledger.cost_usd:.6f} by the ledger, ${billed.cost_usd:.6f} from the stand-in's usage"
            ),
        ),
    ]


if __name__ == "__main__":
    report.main(figures, __doc__)
