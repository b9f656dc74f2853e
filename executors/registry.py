"""Finding an executor: the job's ``executor`` name, else the default for its operation type.

Executors are plugins in the ``codeworker.executors`` entry-point group, so a team can ship its own
without touching codeworker.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from codeworker.executors.base import Executor
from codeworker.models import OperationType

GROUP = "codeworker.executors"

DEFAULT_BY_TYPE = dict.fromkeys(OperationType, "agent")
"""The executor a job gets when it names none: the Anthropic agent for every operation type."""


class UnknownExecutor(LookupError):
    """No installed plugin has that name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(f"unknown executor {name!r}; installed: {', '.join(known) or 'none'}")


def available() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def load_executor(name: str | None, operation_type: str) -> Executor:
    """Instantiate the named executor, or the default for ``operation_type``."""
    wanted = name or DEFAULT_BY_TYPE[OperationType(operation_type)]
    matches = entry_points(group=GROUP, name=wanted)
    if not matches:
        raise UnknownExecutor(wanted, available())
    factory = next(iter(matches)).load()
    return factory()
