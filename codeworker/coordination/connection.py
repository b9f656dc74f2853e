"""The Redis client every coordination class is given."""

from __future__ import annotations

import redis


def redis_client(url: str) -> redis.Redis:
    """A client for ``url`` that answers ``str`` (the coordination classes rely on it) and checks
    an idle connection before reuse, so a Redis restart costs one reconnect, not a failed call."""
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
