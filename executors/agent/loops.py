"""Loop detection: the same tool call again and again is a model going round in circles."""

from __future__ import annotations

import json
from collections import deque
from typing import Any


class LoopDetector:
    """Counts identical (tool, input) calls among the last ``window`` calls.

    ``repeats`` identical calls earn a warning; one more ends the loop.
    """

    def __init__(self, window: int, repeats: int) -> None:
        self.repeats = repeats
        self.recent: deque[str] = deque(maxlen=window)

    def see(self, name: str, tool_input: dict[str, Any]) -> int:
        """Record one call; answer how many times it occurs in the window, itself included."""
        key = json.dumps([name, tool_input], sort_keys=True)
        self.recent.append(key)
        return self.recent.count(key)

    def is_warning(self, count: int) -> bool:
        return count == self.repeats

    def is_stuck(self, count: int) -> bool:
        return count > self.repeats
