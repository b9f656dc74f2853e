"""GitHub webhook deliveries already handled, so each ``X-GitHub-Delivery`` is acted on once.

GitHub sends a delivery again with the same id (its own retry after a timeout, or someone pressing
"Redeliver"). The first request to arrive claims the id (``SET NX`` at :meth:`Keys.delivery`,
kept :data:`DELIVERY_TTL`: GitHub offers redelivery of the last three days); one whose handling
then fails gives the id back, so that a redelivery is handled rather than dropped.

The same record keeps the other things a webhook acts on once (:mod:`codeworker.triggers`): the
failing checks of one commit (``checks:<repo>:<sha>``, whichever of its events comes first) and
the one answer to a person without write access (``unauthorized:<repo>#<number>:<login>``).
"""

from __future__ import annotations

import redis

from codeworker.coordination.keys import Keys

DELIVERY_TTL = 7 * 24 * 3600
"""Seconds a delivery id is remembered: longer than GitHub lets anyone redeliver it."""


class Deliveries:
    """The delivery ids of one Redis."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl: int = DELIVERY_TTL) -> None:
        self.client = client
        self.keys = keys
        self.ttl = ttl

    def first(self, delivery_id: str) -> bool:
        """Claim ``delivery_id``: True the first time, False for every later copy."""
        return bool(self.client.set(self.keys.delivery(delivery_id), "1", nx=True, ex=self.ttl))

    def forget(self, delivery_id: str) -> None:
        """Give the id back after a failed handling, so a redelivery is handled."""
        self.client.delete(self.keys.delivery(delivery_id))
