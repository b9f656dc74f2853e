"""File locks: Redis round trips per acquire and release, and how soon a waiter gets a freed lock.

    .venv/bin/python -m bench.locks [--quick]

Round trips are counted on the client's connection (one packed send is one round trip) for 1, 10
and 100 files; the target is one each whatever the count. The hand-over is the time from a
holder's release to the waiting job's acquire returning, against the floor of any wake-up through
Redis: a bare PUBLISH reaching a subscriber on the same server.
"""

from __future__ import annotations

import threading
import time

import redis

from bench import report
from bench.report import Figure, median, spread
from codeworker.coordination.keys import Keys
from codeworker.coordination.locks import FileLocks
from codeworker.loopback.redis_server import CountingConnection, RedisServer
from codeworker.loopback.waiting import wait_until

REPO = "bench.local/acme/locks"
HANDOVER_TARGET = 0.050


def round_trips(client: redis.Redis, keys: Keys, count: int) -> tuple[int, int]:
    """Round trips of one acquire and one release of ``count`` files."""
    locks = FileLocks(client, keys, REPO, f"op-rt-{count}", ttl=30)
    paths = [f"pkg/m{n}.py" for n in range(count)]
    before = CountingConnection.sent
    locks.acquire(paths, wait=5)
    acquired = CountingConnection.sent
    locks.release()
    return acquired - before, CountingConnection.sent - acquired


def handover(client: redis.Redis, keys: Keys, n: int) -> float:
    """Seconds from a release to the waiter's acquire returning."""
    holder = FileLocks(client, keys, REPO, f"op-holder-{n}", ttl=120)
    holder.acquire(["hot.py"], wait=0)
    waiter = FileLocks(client, keys, REPO, f"op-waiter-{n}", ttl=30)
    done: list[float] = []

    def take() -> None:
        waiter.acquire(["hot.py"], wait=60)
        done.append(time.perf_counter())

    thread = threading.Thread(target=take)
    thread.start()
    channel = keys.released(REPO)
    wait_until(lambda: dict(client.pubsub_numsub(channel))[channel] == 1, 10, "the waiter to listen")
    released = time.perf_counter()
    holder.release()
    thread.join(60)
    waiter.release()
    return done[0] - released


def publish_floor(client: redis.Redis) -> float:
    """Seconds from a PUBLISH to its subscriber's message."""
    subscriber = client.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe("bench-floor")
    got: list[float] = []

    def listen() -> None:
        while not got:
            if subscriber.get_message(timeout=10):
                got.append(time.perf_counter())

    thread = threading.Thread(target=listen)
    thread.start()
    sent = time.perf_counter()
    client.publish("bench-floor", "x")
    thread.join(10)
    subscriber.close()
    return got[0] - sent


def figures(quick: bool = False) -> list[Figure]:
    repeat = 10 if quick else 30
    server = RedisServer()
    server.start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True, connection_class=CountingConnection)
        keys = Keys(prefix="bench")
        round_trips(client, keys, 1)  # loads the scripts
        trips = {count: round_trips(client, keys, count) for count in (1, 10, 100)}
        ours: list[float] = []
        floor: list[float] = []
        for n in range(repeat):
            floor.append(publish_floor(client))
            ours.append(handover(client, keys, n))
        client.close()
    finally:
        server.close()
    rows = [
        Figure(
            name=f"lock round trips, {count} file{'s' if count > 1 else ''} (acquire + release)",
            value=float(sum(trip)),
            unit="round trips",
            baseline="one each",
            baseline_value=2.0,
            target="1 + 1",
            met=trip == (1, 1),
        )
        for count, trip in trips.items()
    ]
    rows.append(
        Figure(
            name="lock hand-over, release to the waiter's acquire",
            value=median(ours),
            unit="s",
            baseline="PUBLISH to subscriber (floor)",
            baseline_value=median(floor),
            target="< 50 ms",
            met=median(ours) < HANDOVER_TARGET,
            spread=spread(ours),
            repeat=repeat,
        )
    )
    return rows


if __name__ == "__main__":
    report.main(figures, __doc__)
