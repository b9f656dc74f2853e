"""Finding an executor: the job's ``executor`` name, else the default for its operation type.

Executors are plugins in the ``codeworker.executors`` entry-point group, so a team can ship its own
without touching codeworker.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

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


@cache
def _installed() -> dict[str, EntryPoint]:
    """The plugins by name, read once per process: reading every installed distribution's entry
    points costs milliseconds, which a job should not pay each time."""
    return {entry.name: entry for entry in entry_points(group=GROUP)}


def load_executor(name: str | None, operation_type: str) -> Executor:
    """Instantiate the named executor, or the default for ``operation_type``. A name not seen
    before is looked up again, for a plugin installed since the process started."""
    wanted = name or DEFAULT_BY_TYPE[OperationType(operation_type)]
    entry = _installed().get(wanted)
    if entry is None:
        _installed.cache_clear()
        entry = _installed().get(wanted)
    if entry is None:
        raise UnknownExecutor(wanted, available())
    factory = entry.load()
    return factory()
