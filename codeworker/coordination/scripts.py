"""The Lua scripts of the coordination classes, each a named constant made with :class:`LuaScript`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script


class LuaScript:
    """One Lua script, loaded into Redis on first use and then run by its SHA (redis-py's
    :class:`~redis.commands.core.Script`: EVALSHA, reloading it after a NOSCRIPT, as after a
    Redis restart), on whichever client the caller gives."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._script: Script | None = None

    def __call__(self, *, keys: Sequence[Any], args: Sequence[Any], client: redis.Redis) -> Any:
        if self._script is None:  # two threads may both get here: both make the same Script
            self._script = client.register_script(self.source)
        return self._script(keys=keys, args=args, client=client)
