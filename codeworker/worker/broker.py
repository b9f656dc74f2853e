"""The Redis broker transport: kombu's, with running jobs' messages kept visible to their own
worker only (:mod:`codeworker.worker.visibility`), and made to survive a queue entry that is not
a message and the loss of Redis under a busy worker.

kombu's Redis channel decodes each entry it pops from a queue list as JSON; an entry that is not
(a stray ``LPUSH``, a truncated write) raises out of the consumer loop and Celery stops the whole
worker with "Unrecoverable error" and exit status 0 (celery/celery#4308), so a supervisor that
restarts only on failure leaves it down. The entry is already popped, so dropping it with an
error log loses nothing that could have run.

Losing Redis (a restart, dropped connections) killed a worker holding an unacknowledged message
while it waited for more ("Unrecoverable error: AttributeError: 'NoneType' object has no attribute
'hostname'"). Celery's consumer (``on_connection_error_after_connected``) first collects the
broken connection, then closes it. In the collect, kombu's ``Channel.close`` reads the reply of
the BRPOP in flight and lets its connection error out before the channel counts as closed, and
``collect`` then drops the transport's client. The second close closes the channel again; putting
its unacknowledged messages back builds a new connection pool from ``transport.client.hostname``:
AttributeError, which Celery takes for a fatal error, not a lost broker. Here the close goes on
past that read, and a channel without a transport raises a connection error. kombu 5.7.0 and
Celery 5.7.0, the latest releases, still have the fault.

A popped message is recorded at once. BRPOP takes a message off the queue in Redis; kombu records
it in ``unacked`` (whence a dead worker's messages are restored) only once it reads the reply.
kombu 5.7 stops reading a BRPOP reply while the channel has no credit (with
``worker_disable_prefetch``, while as many jobs are reserved as there are pool processes, retries
waiting for their countdown included) and keeps it in the socket until credit returns, which may
be minutes; a worker killed meanwhile lost the message for good (``tests/test_load.py`` found it).
Here the reply is read as soon as it arrives and the message is delivered, recorded as unacked,
and waits in the worker for a free pool process. What remains is the time between Redis serving
the BRPOP and the worker reading the reply (a loopback round trip and one turn of the event loop):
a SIGKILL landing exactly there still loses that message, as with kombu's transport everywhere;
closing it needs a move into a per-worker list (BLMOVE) instead of a pop.
"""

from __future__ import annotations

import json
import logging
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from codeworker.worker.visibility import QoS, schedule_refresh

log = logging.getLogger(__name__)


class Channel(kombu_redis.Channel):
    QoS = QoS  # refreshes the visibility of the jobs this worker holds (codeworker.worker.visibility)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return super()._brpop_read(**options)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.error("dropped a queue entry that is not a Celery message: %s", type(exc).__name__)
            return True

    def close(self) -> None:
        """Close even when the connection is gone, so the channel is closed while it still has
        its transport ("Losing Redis" above).

        kombu reads the reply of a BRPOP in flight before closing and lets every error but
        ``Empty`` out, before the channel counts as closed; with Redis gone that read fails."""
        if self._in_poll:
            try:
                self._brpop_read()
            except Empty:
                pass
            except self.connection_errors as exc:
                log.info("closing a broker channel whose connection is gone: %r", exc)
        super().close()

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """A connection error, not AttributeError, for a channel whose transport was released:
        Celery treats the one as a lost broker and the other as fatal."""
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker connection of this channel was closed")
        return super()._connparams(asynchronous=asynchronous)


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller, except that a BRPOP reply is read as soon as it arrives (see "A popped
    message is recorded at once" above)."""

    def _pause_brpop(self, channel: Any, fileno: int) -> None:
        """Keep polling the BRPOP socket even without credit, so a reply is read when it comes."""

    def on_readable(self, fileno: int) -> None:
        channel, kind = self._fd_to_chan.get(fileno, (None, None))
        if kind == "BRPOP" and channel is not None and channel._in_poll:
            channel.handlers[kind]()  # reads the reply; a message in it is recorded as unacked
            return
        super().on_readable(fileno)


class Transport(kombu_redis.Transport):
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        schedule_refresh(self, connection, loop)


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The channel above, connected to the primary the sentinels name (kombu's Sentinel channel)."""


class SentinelTransport(Transport):
    """The transport above for ``sentinel://`` URLs: every connection asks the sentinels for the
    current primary, so a failover costs a reconnect, not a restart."""

    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port
