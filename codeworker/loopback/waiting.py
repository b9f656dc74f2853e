"""Waiting for something a test, the demo or a benchmark can observe (a key gone, a process ended)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 60.0, what: str = "condition", interval: float = 0.01
) -> T:
    """Poll ``condition`` until it returns something truthy and return that; TimeoutError naming
    ``what`` and the last value when the deadline passes first."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout} s (last: {value!r})")
        pause.wait(interval)
