"""Structured logs: one JSON object a line in production, readable lines in a terminal.

Every line carries the operation id of the job the process is working on (a context variable set
by the pipeline), so one grep follows a job across stages and workers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from codeworker.git.auth import basic_credentials

if TYPE_CHECKING:
    from codeworker.config import Settings

operation_id: ContextVar[str | None] = ContextVar("operation_id", default=None)

_secrets: set[str] = set()

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
    if len(value) >= 8:
        _secrets.add(value)


def register_credentials(settings: Settings) -> None:
    """Register the worker's credentials in every spelling that could reach text: the GitHub token,
    the token as the Basic credentials git sends, and the Anthropic key."""
    token = settings.github_token.get_secret_value()
    for value in (token, basic_credentials(token), settings.anthropic_api_key.get_secret_value()):
        register_secret(value)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced; a last line of defence, not the first."""
    for secret in _secrets:
        text = text.replace(secret, "[redacted]")
    return text


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
