"""Idempotency claims against a real redis-server."""

from __future__ import annotations

import functools
import threading

import pytest
import redis

from codeworker.coordination.claims import Claim, ClaimLost, ClaimState, OperationClaims
from codeworker.coordination.keys import Keys
from codeworker.coordination.locks import FileLocks
from codeworker.coordination.watchdog import LockWatchdog
from codeworker.loopback.waiting import wait_until

RESULT = {"success": True, "operation_id": "op-1", "branch": "codeworker/fix-1", "status": "pr_open"}


@pytest.fixture()
def keys() -> Keys:
    return Keys(prefix="cwtest")


@pytest.fixture()
def claims(redis_client, keys) -> OperationClaims:
    return OperationClaims(redis_client, keys, ttl=30, result_ttl=3600)


def claimed(claim: Claim) -> str:
    assert claim.state is ClaimState.CLAIMED
    assert claim.owner is not None
    return claim.owner


def test_claim_finish_then_claim_again_returns_the_result(claims, redis_client, keys):
    owner = claimed(claims.claim("op-1"))
    assert redis_client.get(keys.heartbeat("op-1")) == owner
    assert 0 < redis_client.pttl(keys.heartbeat("op-1")) <= 30_000

    claims.finish("op-1", owner, RESULT)

    assert not redis_client.exists(keys.heartbeat("op-1"))
    assert 3_500_000 < redis_client.pttl(keys.claim("op-1")) <= 3_600_000
    again = claims.claim("op-1")
    assert again.state is ClaimState.FINISHED
    assert again.result == RESULT
    assert again.owner is None


def test_busy_while_the_heartbeat_is_alive(claims, redis_client, keys):
    owner = claimed(claims.claim("op-1"))

    busy = claims.claim("op-1")

    assert busy.state is ClaimState.BUSY
    assert busy.holder == owner
    assert 0 < busy.retry_after <= 30
    assert busy.owner is None
    assert claims.heartbeat("op-1", owner)


def test_takeover_after_heartbeat_expiry(claims, redis_client, keys):
    first = claimed(claims.claim("op-1"))
    redis_client.pexpire(keys.heartbeat("op-1"), 1)
    assert wait_until(lambda: not redis_client.exists(keys.heartbeat("op-1")))

    second = claimed(claims.claim("op-1"))

    assert second != first
    assert claims.heartbeat("op-1", second)
    assert not claims.heartbeat("op-1", first)
    assert claims.get("op-1")["attempts"] == 2


def test_finish_by_a_stale_owner_is_refused(claims, redis_client, keys):
    stale = claimed(claims.claim("op-1"))
    redis_client.delete(keys.heartbeat("op-1"))
    current = claimed(claims.claim("op-1"))

    with pytest.raises(ClaimLost) as caught:
        claims.finish("op-1", stale, {"success": False})
    assert caught.value.operation_id == "op-1"
    assert caught.value.owner == stale

    claims.finish("op-1", current, RESULT)
    with pytest.raises(ClaimLost):
        claims.finish("op-1", current, RESULT)  # finished already
    assert claims.claim("op-1").result == RESULT


def test_lapsed_heartbeat_without_takeover_is_still_ours(claims, redis_client, keys):
    owner = claimed(claims.claim("op-1"))
    redis_client.delete(keys.heartbeat("op-1"))

    assert claims.heartbeat("op-1", owner)
    assert redis_client.get(keys.heartbeat("op-1")) == owner
    claims.finish("op-1", owner, RESULT)


def test_abandon_lets_the_next_delivery_run_at_once(claims, redis_client, keys):
    owner = claimed(claims.claim("op-1"))
    claims.abandon("op-1", owner)

    assert not redis_client.exists(keys.heartbeat("op-1"))
    assert claims.get("op-1")["state"] == "abandoned"
    assert not claims.heartbeat("op-1", owner)
    nxt = claimed(claims.claim("op-1"))
    assert nxt != owner


def test_abandon_by_a_stale_owner_leaves_the_new_claim(claims, redis_client, keys):
    stale = claimed(claims.claim("op-1"))
    redis_client.delete(keys.heartbeat("op-1"))
    current = claimed(claims.claim("op-1"))

    claims.abandon("op-1", stale)

    assert claims.claim("op-1").state is ClaimState.BUSY
    assert redis_client.get(keys.heartbeat("op-1")) == current


def test_heartbeat_of_unknown_operation(claims):
    assert not claims.heartbeat("op-none", "someone")
    with pytest.raises(ClaimLost):
        claims.finish("op-none", "someone", RESULT)


def test_get(claims):
    assert claims.get("op-1") is None
    owner = claimed(claims.claim("op-1"))
    running = claims.get("op-1")
    assert running["state"] == "running"
    assert running["owner"] == owner
    assert running["attempts"] == 1
    assert 0 < running["heartbeat_ttl"] <= 30
    assert "result" not in running

    claims.finish("op-1", owner, RESULT)
    finished = claims.get("op-1")
    assert finished["state"] == "finished"
    assert finished["result"] == RESULT
    assert finished["heartbeat_ttl"] is None
    assert finished["finished_at"] >= finished["claimed_at"]
    assert 0 < finished["expires_in"] <= 3600


def test_finished_record_expires_after_result_ttl(redis_client, keys):
    claims = OperationClaims(redis_client, keys, ttl=30, result_ttl=0.05)
    owner = claimed(claims.claim("op-1"))
    claims.finish("op-1", owner, RESULT)
    assert wait_until(lambda: claims.get("op-1") is None)
    assert claims.claim("op-1").state is ClaimState.CLAIMED


def test_many_workers_claim_at_once_exactly_one_runs(redis_server, keys):
    workers = 12
    barrier = threading.Barrier(workers)
    states: list[ClaimState] = []
    guard = threading.Lock()

    def claim() -> None:
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            mine = OperationClaims(client, keys, ttl=30, result_ttl=60)
            barrier.wait()
            state = mine.claim("op-race").state
            with guard:
                states.append(state)
        finally:
            client.close()

    threads = [threading.Thread(target=claim) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert states.count(ClaimState.CLAIMED) == 1
    assert states.count(ClaimState.BUSY) == workers - 1


def test_watchdog_beats_the_claim_heartbeat(redis_client, keys):
    claims = OperationClaims(redis_client, keys, ttl=0.3, result_ttl=60)
    owner = claimed(claims.claim("op-1"))
    locks = FileLocks(redis_client, keys, "github.com/acme/app", "op-1", ttl=0.3)
    beats = threading.Event()
    count: list[bool] = []

    def heartbeat() -> bool:
        alive = claims.heartbeat("op-1", owner)
        count.append(alive)
        if len(count) >= 6:  # two TTLs of beats
            beats.set()
        return alive

    with LockWatchdog(locks, also=[heartbeat]) as watchdog:
        assert beats.wait(5)
        assert claims.claim("op-1").state is ClaimState.BUSY
    assert not watchdog.is_lost
    claims.finish("op-1", owner, RESULT)


def test_watchdog_reports_a_claim_taken_over(redis_client, keys):
    claims = OperationClaims(redis_client, keys, ttl=30, result_ttl=60)
    owner = claimed(claims.claim("op-1"))
    locks = FileLocks(redis_client, keys, "github.com/acme/app", "op-1", ttl=30)
    lost = threading.Event()
    heartbeat = functools.partial(claims.heartbeat, "op-1", owner)

    def take_over() -> bool:
        # The watchdog may re-arm our lapsed heartbeat between the delete and the claim.
        redis_client.delete(keys.heartbeat("op-1"))
        return claims.claim("op-1").state is ClaimState.CLAIMED

    with LockWatchdog(locks, interval=0.02, also=[heartbeat], on_lost=lost.set) as watchdog:
        assert wait_until(take_over)
        assert lost.wait(5)
    assert watchdog.lost_leases == [heartbeat]
