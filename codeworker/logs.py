"""Structured logs: one JSON object a line in production, readable lines in a terminal.

Every line carries the operation id of the job the process is working on (a context variable set
by the pipeline), so one grep follows a job across stages and workers.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

from codeworker.coordination.connection import redis_password
from codeworker.git.auth import basic_credentials

if TYPE_CHECKING:
    from codeworker.config import Settings

operation_id: ContextVar[str | None] = ContextVar("operation_id", default=None)

_secrets: list[str] = []
"""Longest first, so a secret containing another is replaced whole (kept sorted on registration:
every log line and tool result is scrubbed)."""

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "operation_id"}


@contextmanager
def bound_operation(op_id: str) -> Iterator[None]:
    token = operation_id.set(op_id)
    try:
        yield
    finally:
        operation_id.reset(token)


def register_secret(value: str) -> None:
    """Never print ``value``: every formatted line and every result error is scrubbed of it."""
    if len(value) >= MIN_SECRET and value not in _secrets:
        _secrets.append(value)
        _secrets.sort(key=len, reverse=True)


def register_credentials(settings: Settings) -> None:
    """Register the worker's credentials in every spelling that could reach text: the GitHub token
    (also as the Basic credentials git sends), the Anthropic key, the webhook secret and the Redis
    password, each plain, URL-encoded and base64-encoded."""
    token = settings.github_token.get_secret_value()
    values = [
        token,
        basic_credentials(token),
        settings.anthropic_api_key.get_secret_value(),
        settings.webhook_secret.get_secret_value(),
        redis_password(settings.redis_url),
    ]
    for value in values:
        if len(value) >= MIN_SECRET:
            for spelling in {value, quote(value, safe=""), *base64_spellings(value)}:
                register_secret(spelling)


MIN_SECRET = 8
"""Shorter values are not registered: scrubbing them would mangle ordinary text."""


def base64_spellings(value: str) -> list[str]:
    """The parts of ``value``'s base64 encoding that do not depend on what surrounds it, for each of
    the three alignments it can have inside a longer encoded text."""
    raw = value.encode()
    spellings = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw + b"\0\0").decode()
        first, last = -(-offset // 3), (offset + len(raw)) // 3  # whole 3-byte groups of the value
        if last - first >= 2:
            spellings.append(encoded[first * 4 : last * 4])
    return spellings


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced; a last line of defence, not the first."""
    return scrub_counted(text)[0]


def scrub_counted(text: str) -> tuple[str, int]:
    """:func:`scrub`, and how many secrets it replaced."""
    count = 0
    for secret in _secrets:
        if secret in text:
            count += text.count(secret)
            text = text.replace(secret, "[redacted]")
    return text, count


class OperationFilter(logging.Filter):
    """Stamps each record with the current operation id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.operation_id = operation_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "operation_id": getattr(record, "operation_id", None),
            "event": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, default=str))


class ConsoleFormatter(logging.Formatter):
    """For a terminal: Celery's ``data`` extra repeats the message, so it is left out here."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _RESERVED | {"data"})
        op = getattr(record, "operation_id", None) or "-"
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} [{op}] {record.getMessage()}"
        line = f"{line}  {extras}" if extras else line
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return scrub(line)


def configure(handler: logging.Handler, fmt: str) -> None:
    """Give ``handler`` the chosen format and the operation-id filter."""
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(OperationFilter())
