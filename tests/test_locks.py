"""File locks against a real redis-server: atomicity, waiting, fencing, ownership, the watchdog."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from codeworker.coordination.keys import Keys
from codeworker.coordination.locks import FileLocks, LockHeld, LockLost, list_locks
from codeworker.coordination.watchdog import LockWatchdog
from codeworker.loopback.redis_server import CountingConnection
from codeworker.loopback.waiting import wait_until

REPO = "github.com/acme/app"


@pytest.fixture()
def keys() -> Keys:
    return Keys(prefix="cwtest")


def make(client: redis.Redis, keys: Keys, operation_id: str, ttl: float = 30.0) -> FileLocks:
    return FileLocks(client, keys, REPO, operation_id, ttl)


def test_acquire_sets_every_lock_with_ttl_and_records_them(redis_client, keys):
    locks = make(redis_client, keys, "op-1", ttl=10)
    token = locks.acquire(["src/app.py", "./src//util.py", "src/app.py"], wait=0)

    assert token == 1
    assert locks.fencing_token == 1
    assert locks.held == ["src/app.py", "src/util.py"]
    for path in locks.held:
        key = keys.lock(REPO, path)
        assert redis_client.hget(key, "owner") == locks.owner
        assert 0 < redis_client.pttl(key) <= 10_000
    assert locks.owner.startswith("op-1:")


def test_paths_escaping_the_repo_are_refused(redis_client, keys):
    locks = make(redis_client, keys, "op-1")
    for bad in ["../etc/passwd", "/etc/passwd", "", "."]:
        with pytest.raises(ValueError):
            locks.acquire([bad], wait=0)
    assert redis_client.keys(keys.lock_pattern()) == []


def test_all_or_none(redis_client, keys):
    other = make(redis_client, keys, "op-other")
    other.acquire(["b.py"], wait=0)
    locks = make(redis_client, keys, "op-1")

    with pytest.raises(LockHeld) as caught:
        locks.acquire(["a.py", "b.py", "c.py"], wait=0)

    assert caught.value.path == "b.py"
    assert caught.value.holder == "op-other"
    assert str(caught.value) == "b.py is locked by operation op-other"
    assert not redis_client.exists(keys.lock(REPO, "a.py"))
    assert not redis_client.exists(keys.lock(REPO, "c.py"))
    assert locks.held == []
    assert locks.fencing_token is None


def test_reentrant_for_the_same_attempt(redis_client, keys):
    locks = make(redis_client, keys, "op-1")
    first = locks.acquire(["a.py"], wait=0)
    second = locks.acquire(["a.py", "b.py"], wait=0)
    assert second > first
    assert locks.held == ["a.py", "b.py"]


def test_rerun_of_the_same_operation_takes_its_stale_lock_over(redis_client, keys):
    crashed = make(redis_client, keys, "op-1")
    first = crashed.acquire(["a.py"], wait=0)
    rerun = make(redis_client, keys, "op-1")
    assert rerun.owner != crashed.owner

    second = rerun.acquire(["a.py"], wait=0)

    assert second > first
    assert crashed.renew() == ["a.py"]
    with pytest.raises(LockLost):
        crashed.verify()
    crashed.release()
    rerun.verify()
    assert [lock.owner for lock in list_locks(redis_client, keys)] == [rerun.owner]


def test_another_operation_never_takes_a_held_lock(redis_client, keys):
    holder = make(redis_client, keys, "op-1")
    holder.acquire(["a.py"], wait=0)
    other = make(redis_client, keys, "op-2")
    with pytest.raises(LockHeld) as caught:
        other.acquire(["a.py"], wait=0)
    assert caught.value.holder == "op-1"


def script_calls(client: redis.Redis) -> int:
    """How many Lua script calls the server has run (each lock attempt is one)."""
    stats = client.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


def subscribers(client: redis.Redis, keys: Keys) -> int:
    return dict(client.pubsub_numsub(keys.released(REPO)))[keys.released(REPO)]


def test_a_release_wakes_the_waiter_at_once(redis_client, keys):
    # The holder's lock would live two minutes: only the release's message can wake the waiter
    # within the join below.
    holder = make(redis_client, keys, "op-holder", ttl=120)
    holder.acquire(["a.py"], wait=0)
    waiter = make(redis_client, keys, "op-waiter")
    before = script_calls(redis_client)
    result: dict[str, object] = {}

    def take() -> None:
        try:
            result["token"] = waiter.acquire(["a.py"], wait=60)
        except Exception as exc:  # surfaced by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=take)
    thread.start()
    # Release only once the waiter listens and has been refused after subscribing.
    assert wait_until(lambda: subscribers(redis_client, keys) == 1)
    assert wait_until(lambda: script_calls(redis_client) >= before + 2)
    assert thread.is_alive()
    assert "token" not in result
    holder.release()
    thread.join(10)

    assert not thread.is_alive(), "the release did not wake the waiter"
    assert "error" not in result
    assert result["token"] == 2
    assert redis_client.hget(keys.lock(REPO, "a.py"), "owner") == waiter.owner
    assert subscribers(redis_client, keys) == 0


def test_a_lock_that_expires_wakes_the_waiter(redis_client, keys):
    # A holder that died releases nothing: the waiter tries again when the lock's TTL runs out,
    # not at the end of its own minute of waiting (the join below would give up long before).
    make(redis_client, keys, "op-dead", ttl=0.3).acquire(["a.py"], wait=0)
    waiter = make(redis_client, keys, "op-waiter")
    tokens: list[int] = []
    thread = threading.Thread(target=lambda: tokens.append(waiter.acquire(["a.py"], wait=60)))
    thread.start()
    thread.join(10)

    assert not thread.is_alive(), "the lock's expiry did not wake the waiter"
    assert tokens == [2]


def test_one_round_trip_to_take_or_release_any_number_of_files(redis_server, keys):
    client = redis.Redis.from_url(
        redis_server.url, decode_responses=True, connection_class=CountingConnection
    )
    locks = make(client, keys, "op-many")
    locks.acquire(["warm.py"], wait=0)  # loads the scripts (EVALSHA, NOSCRIPT, SCRIPT LOAD)
    locks.release()
    for count in (1, 10, 100):
        paths = [f"pkg/m{count}_{n}.py" for n in range(count)]
        before = CountingConnection.sent
        locks.acquire(paths, wait=5)
        assert CountingConnection.sent - before == 1, count
        locks.release()
        assert CountingConnection.sent - before == 2, count
    client.close()


def test_wait_then_fail_names_the_holder(redis_client, keys):
    holder = make(redis_client, keys, "op-123")
    holder.acquire(["src/app.py"], wait=0)
    waiter = make(redis_client, keys, "op-456")

    started = time.monotonic()
    with pytest.raises(LockHeld) as caught:
        waiter.acquire(["src/app.py"], wait=0.2)
    assert time.monotonic() - started >= 0.2
    assert caught.value.holder == "op-123"
    assert caught.value.path == "src/app.py"
    assert "src/app.py is locked by operation op-123" in str(caught.value)


def test_wait_zero_fails_at_once(redis_client, keys):
    make(redis_client, keys, "op-holder").acquire(["a.py"], wait=0)
    waiter = make(redis_client, keys, "op-waiter")
    with pytest.raises(LockHeld):
        waiter.acquire(["a.py"], wait=0)
    with pytest.raises(LockHeld):
        waiter.acquire_one("a.py")


def test_acquire_one_adds_a_file_with_a_new_token(redis_client, keys):
    locks = make(redis_client, keys, "op-1")
    first = locks.acquire(["a.py"], wait=0)
    second = locks.acquire_one("b.py")
    assert second > first
    assert locks.fencing_token == second
    assert locks.held == ["a.py", "b.py"]


def test_fencing_tokens_strictly_increase_across_owners(redis_client, keys):
    tokens = []
    for index in range(5):
        locks = make(redis_client, keys, f"op-{index}")
        tokens.append(locks.acquire([f"f{index}.py"], wait=0))
        tokens.append(locks.acquire_one(f"g{index}.py"))
        locks.release()
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)


def test_release_removes_only_our_locks_and_is_idempotent(redis_client, keys):
    ours = make(redis_client, keys, "op-1")
    ours.acquire(["a.py", "b.py"], wait=0)
    # Our lock on b.py expires and another operation takes it.
    redis_client.delete(keys.lock(REPO, "b.py"))
    thief = make(redis_client, keys, "op-2")
    thief.acquire(["b.py"], wait=0)

    ours.release()
    ours.release()

    assert not redis_client.exists(keys.lock(REPO, "a.py"))
    assert redis_client.hget(keys.lock(REPO, "b.py"), "owner") == thief.owner
    assert ours.held == []


def test_renew_extends_and_reports_lost_locks(redis_client, keys):
    locks = make(redis_client, keys, "op-1", ttl=30)
    locks.acquire(["a.py", "b.py", "c.py"], wait=0)
    redis_client.pexpire(keys.lock(REPO, "a.py"), 5_000)
    redis_client.delete(keys.lock(REPO, "b.py"))  # expired
    make(redis_client, keys, "op-2").acquire(["b.py"], wait=0)  # and taken
    redis_client.delete(keys.lock(REPO, "c.py"))  # expired, nobody took it

    assert locks.renew() == ["b.py", "c.py"]
    assert redis_client.pttl(keys.lock(REPO, "a.py")) > 5_000
    # A lost lock is not silently re-taken by renew.
    assert not redis_client.exists(keys.lock(REPO, "c.py"))


def test_verify(redis_client, keys):
    locks = make(redis_client, keys, "op-1")
    locks.acquire(["a.py", "b.py"], wait=0)
    locks.verify()

    redis_client.delete(keys.lock(REPO, "b.py"))
    with pytest.raises(LockLost) as caught:
        locks.verify()
    assert caught.value.paths == ["b.py"]


def test_loss_seen_by_renew_stays_lost_for_verify(redis_client, keys):
    locks = make(redis_client, keys, "op-1")
    locks.acquire(["a.py"], wait=0)
    redis_client.delete(keys.lock(REPO, "a.py"))
    assert locks.renew() == ["a.py"]
    with pytest.raises(LockLost):
        locks.verify()


def test_many_threads_race_for_one_file_exactly_one_wins(redis_client, redis_server, keys):
    contenders = 16
    barrier = threading.Barrier(contenders)
    winners: list[str] = []
    losers: list[str] = []
    guard = threading.Lock()

    def contend(index: int) -> None:
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        locks = make(client, keys, f"op-{index}")
        barrier.wait()
        try:
            locks.acquire(["src/app.py", f"own-{index}.py"], wait=0)
        except LockHeld:
            with guard:
                losers.append(locks.owner)
        else:
            with guard:
                winners.append(locks.owner)
        finally:
            client.close()

    threads = [threading.Thread(target=contend, args=(index,)) for index in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert len(winners) == 1
    assert len(losers) == contenders - 1
    assert redis_client.hget(keys.lock(REPO, "src/app.py"), "owner") == winners[0]
    # Losers left none of their other files locked.
    assert len(redis_client.keys(keys.lock_pattern())) == 2


def test_watchdog_keeps_lock_alive_past_its_ttl(redis_client, keys):
    locks = make(redis_client, keys, "op-1", ttl=0.3)
    locks.acquire(["a.py"], wait=0)
    renewals = threading.Event()
    beats: list[bool] = []

    def count_beat() -> bool:
        beats.append(True)
        if len(beats) >= 6:  # six beats of ttl/3 = two full TTLs
            renewals.set()
        return True

    with LockWatchdog(locks, also=[count_beat]) as watchdog:
        assert renewals.wait(5)
        locks.verify()
    assert watchdog.lost == []
    assert not watchdog.is_lost
    assert watchdog.interval == pytest.approx(0.1)


def test_watchdog_detects_loss_and_calls_back(redis_client, keys):
    locks = make(redis_client, keys, "op-1", ttl=30)
    locks.acquire(["a.py", "b.py"], wait=0)
    lost = threading.Event()

    with LockWatchdog(locks, interval=0.02, on_lost=lost.set) as watchdog:
        redis_client.delete(keys.lock(REPO, "b.py"))
        assert lost.wait(5)
    assert watchdog.lost == ["b.py"]
    assert watchdog.is_lost
    with pytest.raises(LockLost):
        locks.verify()


def test_watchdog_reports_a_lost_extra_lease(redis_client, keys):
    locks = make(redis_client, keys, "op-1", ttl=30)
    alive = threading.Event()
    alive.set()
    lost = threading.Event()

    def heartbeat() -> bool:
        return alive.is_set()

    with LockWatchdog(locks, interval=0.02, also=[heartbeat], on_lost=lost.set) as watchdog:
        alive.clear()
        assert lost.wait(5)
    assert watchdog.lost_leases == [heartbeat]
    assert watchdog.lost == []


def test_watchdog_stop_is_immediate(redis_client, keys):
    locks = make(redis_client, keys, "op-1", ttl=600)
    watchdog = LockWatchdog(locks).start()
    started = time.monotonic()
    watchdog.stop()
    assert time.monotonic() - started < 2  # not the 200 s interval


def test_watchdog_survives_a_redis_outage(redis_server, keys):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    locks = make(client, keys, "op-1", ttl=30)
    locks.acquire(["a.py"], wait=0)
    beats: list[float] = []

    def probe() -> bool:
        beats.append(time.monotonic())
        return True

    try:
        with LockWatchdog(locks, interval=0.02, also=[probe]) as watchdog:
            redis_server.stop()
            try:
                seen = len(beats)
                # Renewing fails while the server is down, and the watchdog keeps beating.
                assert wait_until(lambda: len(beats) >= seen + 3, timeout=30)
                assert not watchdog.is_lost
            finally:
                redis_server.start()
            # The restarted server has no persistence: the lock is gone and the watchdog says so.
            assert wait_until(lambda: watchdog.lost == ["a.py"], timeout=30)
    finally:
        client.close()


def test_list_locks(redis_client, keys):
    make(redis_client, keys, "op-1", ttl=30).acquire(["src/b.py", "src/a.py"], wait=0)
    FileLocks(redis_client, keys, "127.0.0.1:8080/acme/other", "op-2", 30).acquire(["x:y.py"], wait=0)

    infos = list_locks(redis_client, keys)

    assert [(info.repo, info.path, info.holder) for info in infos] == [
        ("127.0.0.1:8080/acme/other", "x:y.py", "op-2"),
        (REPO, "src/a.py", "op-1"),
        (REPO, "src/b.py", "op-1"),
    ]
    assert all(info.ttl is not None and 0 < info.ttl <= 30 for info in infos)
