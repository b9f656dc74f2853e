"""Keeping a running job's message visible to its own worker only, and handing it out again soon
after that worker dies.

kombu's Redis transport keeps every delivered, unacknowledged message in a sorted set
(``unacked_index``) scored with the time it was delivered, and every consuming worker puts back
on the queue those older than ``visibility_timeout`` (``QoS.restore_visible``, run every
``unacked_restore_interval`` x ``unacked_restore_throttle`` seconds). With the score only ever set
at delivery, the timeout has to outlive the longest job, so a dead worker's job waited 40 minutes.

Here each worker re-scores the messages it holds every third of the timeout (:class:`QoS`,
scheduled on the worker's event loop by :func:`schedule_refresh`), so the score means "last seen
alive": a short timeout (30 s) never hands out a job whose worker lives, however long it runs, and
a job whose worker died goes back to the queue within the timeout plus the restore interval.

Relies on kombu 5.7's Redis transport: the ``unacked_index`` sorted set scored in seconds since
the epoch, ``QoS._delivered`` / ``QoS._dirty``, and ``Transport.register_with_event_loop``
(``tests/test_visibility.py`` fails if an upgrade changes them).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

REFRESHES_PER_TIMEOUT = 3
"""How often per visibility timeout a worker re-scores its messages: two refreshes may fail
(a Redis blip, a busy event loop) before another worker may take the job."""


class QoS(kombu_redis.QoS):
    def refresh_unacked(self) -> int:
        """Score every message this channel holds unacknowledged as seen alive now; how many.

        ``ZADD XX`` only updates members still there, so a message acknowledged meanwhile (or
        already put back by another worker) is not brought back."""
        tags = [tag for tag in self._delivered if tag not in self._dirty]
        if not tags:
            return 0
        now = time.time()
        with self.channel.conn_or_acquire() as client:
            client.zadd(self.unacked_index_key, dict.fromkeys(tags, now), xx=True)
        return len(tags)


def schedule_refresh(transport: kombu_redis.Transport, connection: Any, loop: Any) -> None:
    """Refresh the channels' unacked messages every third of the visibility timeout on ``loop``
    (the worker's event loop), replacing the timer of an earlier connection after a reconnect."""
    timeout = connection.client.transport_options.get(
        "visibility_timeout", kombu_redis.Channel.visibility_timeout
    )
    cycle = transport.cycle
    previous = getattr(cycle, "_codeworker_refresh_tref", None)
    if previous is not None:
        previous.cancel()

    def refresh() -> None:
        for channel in list(cycle._channels):
            try:
                channel.qos.refresh_unacked()
            except Exception:  # Redis down or restarting: the next tick tries again
                log.warning("could not refresh the unacked jobs' visibility; retrying", exc_info=True)

    cycle._codeworker_refresh_tref = loop.call_repeatedly(timeout / REFRESHES_PER_TIMEOUT, refresh)
