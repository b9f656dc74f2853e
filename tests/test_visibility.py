"""What stalled-job recovery relies on in kombu's Redis transport, checked against a real Redis.

A running job's message stays in kombu's ``unacked_index`` sorted set until it is acknowledged;
codeworker re-scores it while the job's worker lives (codeworker.worker.visibility), and kombu puts
back on the queue whatever is older than the visibility timeout. If a kombu upgrade changes the key,
the score or the restore rule, these tests fail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import kombu
import pytest
import redis

from codeworker.loopback.redis_server import RedisServer
from codeworker.worker.broker import Transport

QUEUE = "visibility-test"
TIMEOUT = 30


@pytest.fixture()
def broker(redis_server: RedisServer) -> Iterator[tuple[kombu.Connection, redis.Redis]]:
    url = redis_server.url.rsplit("/", 1)[0] + "/4"
    store = redis.Redis.from_url(url, decode_responses=True)
    store.flushdb()
    connection = kombu.Connection(url, transport=Transport, transport_options={"visibility_timeout": TIMEOUT})
    yield connection, store
    connection.release()
    store.flushdb()


def deliver(connection: kombu.Connection, body: str) -> tuple[kombu.Message, object]:
    """Publish ``body`` and take it off the queue unacknowledged, as a worker does."""
    queue = kombu.Queue(QUEUE, routing_key=QUEUE)
    with connection.Producer() as producer:
        producer.publish(body, routing_key=QUEUE, declare=[queue], serializer="json")
    channel = connection.default_channel
    message = channel.basic_get(QUEUE, no_ack=False)
    assert message is not None
    return message, channel


def test_a_delivered_message_is_scored_with_its_delivery_time(broker):
    connection, store = broker
    before = time.time()
    message, _ = deliver(connection, "job")
    assert before <= store.zscore("unacked_index", message.delivery_tag) <= time.time()
    assert store.hexists("unacked", message.delivery_tag)


def test_refreshing_keeps_a_held_message_from_being_restored(broker):
    connection, store = broker
    message, channel = deliver(connection, "job")
    store.zadd("unacked_index", {message.delivery_tag: time.time() - 10 * TIMEOUT})

    assert channel.qos.refresh_unacked() == 1
    channel.qos.restore_visible(interval=1)

    assert store.zscore("unacked_index", message.delivery_tag) > time.time() - TIMEOUT
    assert store.llen(QUEUE) == 0


def test_a_message_nobody_refreshed_goes_back_to_the_queue_marked_redelivered(broker):
    connection, store = broker
    message, channel = deliver(connection, "job")
    store.zadd("unacked_index", {message.delivery_tag: time.time() - TIMEOUT - 1})

    channel.qos.restore_visible(interval=1)

    assert store.zscore("unacked_index", message.delivery_tag) is None
    (raw,) = store.lrange(QUEUE, 0, -1)
    payload = json.loads(raw)
    assert payload["properties"]["delivery_info"]["redelivered"] is True
    assert payload["properties"]["delivery_tag"] == message.delivery_tag


def test_refreshing_never_brings_back_an_acknowledged_message(broker):
    connection, store = broker
    message, channel = deliver(connection, "job")
    message.ack()

    channel.qos.refresh_unacked()

    assert store.zcard("unacked_index") == 0
    assert store.hlen("unacked") == 0


def test_the_worker_event_loop_gets_the_refresh_timer(broker):
    """kombu's hook, called by Celery's consumer for its event loop, is where the refresh is
    scheduled; its timer fires every third of the visibility timeout."""
    from kombu.asynchronous import Hub

    connection, _ = broker
    connection.default_channel  # noqa: B018 - opens the channel the transport's cycle polls
    hub = Hub()
    try:
        connection.transport.register_with_event_loop(connection.connection, hub)
        refresh = connection.transport.cycle._codeworker_refresh_tref
        (scheduled,) = [item for item in hub.timer.queue if item.entry is refresh]
        assert TIMEOUT / 3 - 1 < scheduled.eta - time.monotonic() <= TIMEOUT / 3
    finally:
        hub.close()
