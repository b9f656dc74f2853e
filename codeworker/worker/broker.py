"""The Redis broker transport, made to survive a queue entry that is not a message.

kombu's Redis channel decodes each entry it pops from a queue list as JSON; an entry that is not
(a stray ``LPUSH``, a truncated write) raises out of the consumer loop and Celery stops the whole
worker with "Unrecoverable error" and exit status 0 (celery/celery#4308), so a supervisor that
restarts only on failure leaves it down. The entry is already popped, so dropping it with an
error log loses nothing that could have run.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class Channel(kombu_redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            return super()._brpop_read(**options)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.error("dropped a queue entry that is not a Celery message: %s", type(exc).__name__)
            return True


class Transport(kombu_redis.Transport):
    Channel = Channel
