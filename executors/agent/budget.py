"""The budget ledger: every billed response counted and priced, checked before every model call."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from codeworker.config import ModelPrice, Settings
from codeworker.models import Usage


class UnknownModelPrice(ValueError):
    """The configured model has no price; a job is refused rather than priced at zero."""


@dataclass(frozen=True)
class BudgetState:
    """Where a job stands against its budgets."""

    exceeded: str | None = None
    """Why the job must stop now, or None."""
    wrap_up: str | None = None
    """Which budget passed the wrap-up fraction, or None."""


class Ledger:
    """Tokens, dollars and seconds of one job.

    ``add`` takes the ``usage`` of every response that came back with one: a reply the SDK could
    not parse is billed all the same, so it is counted from the raw body, before parsing.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        if settings.model not in settings.prices:
            raise UnknownModelPrice(
                f"no price for model {settings.model!r} (known: {', '.join(sorted(settings.prices))}); "
                "add it to CODEWORKER_PRICES"
            )
        self.price: ModelPrice = settings.prices[settings.model]
        self.settings = settings
        self.clock = clock
        self.started = clock()
        self.usage = Usage()
        self.responses = 0

    def add(self, usage: dict[str, Any]) -> None:
        u, p = self.usage, self.price
        read = usage.get("cache_read_input_tokens") or 0
        write = usage.get("cache_creation_input_tokens") or 0
        fresh, out = usage.get("input_tokens") or 0, usage.get("output_tokens") or 0
        u.input_tokens += fresh
        u.output_tokens += out
        u.cache_read_tokens += read
        u.cache_write_tokens += write
        self.responses += 1
        u.cost_usd = round(
            (
                u.input_tokens * p.input
                + u.output_tokens * p.output
                + u.cache_read_tokens * p.cache_read
                + u.cache_write_tokens * p.cache_write
            )
            / 1_000_000,
            6,
        )

    @property
    def tokens(self) -> int:
        u = self.usage
        return u.input_tokens + u.output_tokens + u.cache_read_tokens + u.cache_write_tokens

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def check(self) -> BudgetState:
        s = self.settings
        spent = [
            ("token", self.tokens, s.budget_tokens, f"{self.tokens} tokens of {s.budget_tokens}"),
            ("cost", self.usage.cost_usd, s.budget_usd, f"${self.usage.cost_usd:.4f} of ${s.budget_usd:.2f}"),
            ("time", self.elapsed, s.budget_seconds, f"{self.elapsed:.0f} s of {s.budget_seconds:.0f} s"),
        ]
        for name, used, cap, text in spent:
            if used >= cap:
                return BudgetState(exceeded=f"{name} budget exhausted ({text})")
        for name, used, cap, text in spent:
            if used >= s.budget_wrap_up * cap:
                return BudgetState(wrap_up=f"{name} budget {used / cap:.0%} used ({text})")
        return BudgetState()
