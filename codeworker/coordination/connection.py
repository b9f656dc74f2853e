"""The Redis client every coordination class is given: a plain Redis, or the current primary of a
Sentinel-managed group.

``REDIS_URL`` takes Celery's Sentinel form, ``sentinel://[:password@]host:26379[/db];sentinel://
host2:26379``, with the group's name in ``CODEWORKER_REDIS_MASTER_NAME``. Every client then asks
the sentinels for the primary, and asks again after a connection error or a ``READONLY`` reply
(a demoted primary): redis-py's ``SentinelConnectionPool`` does both, so the broker, the result
backend, locks, claims, the registry and the health probe all follow a failover without a
restart. The password in the URL is the primary's (and its replicas'); sentinels themselves are
reached without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

if TYPE_CHECKING:
    from codeworker.config import Settings

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``sentinel://`` URL: where the sentinels are, and how to talk to the primary."""

    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        """Raises ValueError naming what is wrong with ``url`` (never its password)."""
        sentinels: list[tuple[str, int]] = []
        db, username, password = 0, None, None
        for part in filter(None, (piece.strip() for piece in url.split(";"))):
            parsed = urlsplit(part)
            if parsed.scheme != SENTINEL_SCHEME or not parsed.hostname:
                raise ValueError(f"not a sentinel://host:port URL: {parsed.scheme}://{parsed.hostname or ''}")
            sentinels.append((parsed.hostname, parsed.port or DEFAULT_SENTINEL_PORT))
            if parsed.password and password is None:
                username, password = unquote(parsed.username or "") or None, unquote(parsed.password)
            path = parsed.path.strip("/")
            if path and not sentinels[1:]:
                if not path.isdigit():
                    where = f"sentinel://{parsed.hostname}"
                    raise ValueError(f"the database of {where} is not a number: {path!r}")
                db = int(path)
        if not sentinels:
            raise ValueError("a sentinel:// URL names no sentinel")
        return cls(tuple(sentinels), db, username, password)


def is_sentinel(url: str) -> bool:
    return url.strip().startswith(f"{SENTINEL_SCHEME}://")


def redis_password(url: str) -> str:
    """The password ``url`` carries for Redis ("" without one), whichever form it has."""
    if is_sentinel(url):
        return SentinelUrl.parse(url).password or ""
    return unquote(urlsplit(url).password or "")


def redis_client(url: str, master_name: str = "mymaster", **options: Any) -> redis.Redis:
    """A client for ``url`` that answers ``str`` (the coordination classes rely on it) and checks
    an idle connection before reuse, so a Redis restart costs one reconnect, not a failed call.

    ``options`` go to the connections (timeouts; ``decode_responses=False`` for raw bytes)."""
    settings: dict[str, Any] = {"decode_responses": True, "health_check_interval": 30, **options}
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **settings)
    parsed = SentinelUrl.parse(url)
    timeouts = {k: v for k, v in settings.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=timeouts)
    return sentinel.master_for(
        master_name, db=parsed.db, username=parsed.username, password=parsed.password, **settings
    )


def redis_for(settings: Settings, **options: Any) -> redis.Redis:
    """:func:`redis_client` for the configured ``REDIS_URL`` and Sentinel group."""
    return redis_client(settings.redis_url, settings.redis_master_name, **options)
