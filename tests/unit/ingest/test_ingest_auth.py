"""API keys: format, hashing, and how revocation and unknown keys reach clients through the cache."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from services.ingest.ratelimit import RateLimiter
from services.kernel.apikeys import AuthError, KeyCache, KeyRecord, generate, parse


def test_a_generated_key_shows_its_id_and_parses_back() -> None:
    key = generate()
    assert key.token.startswith(f"plg_{key.key_id}_")
    assert parse(key.token) == (key.key_id, key.token.split("_", 2)[2])
    assert len(key.secret_sha256) == 32
    assert generate().token != key.token


@pytest.mark.parametrize(
    "token",
    ["", "plg", "plg_abc", "sk_abc_" + "x" * 40, "plg__" + "x" * 40, "plg_ab-c_" + "x" * 40, "plg_abc_short"],
)
def test_malformed_keys_do_not_parse(token: str) -> None:
    assert parse(token) is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def make_cache(rows: dict[str, KeyRecord], clock: Clock, calls: list[str]) -> KeyCache:
    async def lookup(key_id: str) -> KeyRecord | None:
        calls.append(key_id)
        await asyncio.sleep(0)
        return rows.get(key_id)

    return KeyCache(lookup, ttl=10, negative_ttl=2, clock=clock)


def test_valid_key_authenticates_as_its_tenant_and_is_cached() -> None:
    key = generate()
    rows = {key.key_id: KeyRecord(key.key_id, "acme", key.secret_sha256, revoked=False)}
    clock, calls = Clock(), []
    cache = make_cache(rows, clock, calls)

    async def go() -> None:
        for _ in range(3):
            p = await cache.authenticate(f"Bearer {key.token}")
            assert (p.customer_id, p.key_id) == ("acme", key.key_id)

    run(go())
    assert calls == [key.key_id]


def test_revocation_is_seen_once_the_cache_entry_expires() -> None:
    key = generate()
    rows = {key.key_id: KeyRecord(key.key_id, "acme", key.secret_sha256, revoked=False)}
    clock, calls = Clock(), []
    cache = make_cache(rows, clock, calls)

    async def go() -> None:
        await cache.authenticate(f"Bearer {key.token}")
        rows[key.key_id] = KeyRecord(key.key_id, "acme", key.secret_sha256, revoked=True)
        clock.now = 9.9
        await cache.authenticate(f"Bearer {key.token}")  # still cached: documented TTL
        clock.now = 10.1
        with pytest.raises(AuthError, match="revoked"):
            await cache.authenticate(f"Bearer {key.token}")

    run(go())


@pytest.mark.parametrize(
    ("header", "message"),
    [(None, "missing"), ("Basic abc", "missing"), ("Bearer nope", "malformed")],
)
def test_missing_or_malformed_keys_are_refused(header: str | None, message: str) -> None:
    cache = make_cache({}, Clock(), [])
    with pytest.raises(AuthError, match=message):
        run(cache.authenticate(header))


def test_a_wrong_secret_or_unknown_key_is_refused_and_unknown_ids_are_looked_up_once_per_period() -> None:
    key, other = generate(), generate()
    rows = {key.key_id: KeyRecord(key.key_id, "acme", key.secret_sha256, revoked=False)}
    clock, calls = Clock(), []
    cache = make_cache(rows, clock, calls)
    forged = f"plg_{key.key_id}_{other.token.split('_', 2)[2]}"
    with pytest.raises(AuthError, match="wrong secret"):
        run(cache.authenticate(f"Bearer {forged}"))
    for _ in range(3):
        with pytest.raises(AuthError, match="unknown"):
            run(cache.authenticate(f"Bearer {other.token}"))
    assert calls.count(other.key_id) == 1
    clock.now = 2.5
    with pytest.raises(AuthError, match="unknown"):
        run(cache.authenticate(f"Bearer {other.token}"))
    assert calls.count(other.key_id) == 2


def test_concurrent_misses_share_one_lookup() -> None:
    key = generate()
    rows = {key.key_id: KeyRecord(key.key_id, "acme", key.secret_sha256, revoked=False)}
    calls: list[str] = []
    cache = make_cache(rows, Clock(), calls)

    async def go() -> None:
        await asyncio.gather(*[cache.authenticate(f"Bearer {key.token}") for _ in range(20)])

    run(go())
    assert calls == [key.key_id]


def test_token_bucket_grants_the_burst_then_asks_to_wait_then_refills() -> None:
    limiter = RateLimiter(rate=100, burst=300, min_burst=100)
    assert limiter.retry_after("k", 100, 0.0) == 0
    assert limiter.retry_after("k", 200, 0.0) == 0
    assert limiter.retry_after("k", 100, 0.0) == 1  # empty: 100 tokens take 1 s
    assert limiter.retry_after("other", 100, 0.0) == 0  # buckets are per key
    assert limiter.retry_after("k", 100, 1.0) == 0
    assert limiter.retry_after("k", 250, 2.0) == 2  # 100 refilled, 150 missing at 100/s → 1.5 s → 2
    assert RateLimiter(rate=0, burst=0, min_burst=500).retry_after("k", 10**6, 0.0) == 0


def test_a_batch_larger_than_the_burst_can_still_be_granted() -> None:
    limiter = RateLimiter(rate=10, burst=5, min_burst=500)
    assert limiter.retry_after("k", 500, 0.0) == 0


def test_the_cache_says_whether_it_would_serve_a_key_without_the_database() -> None:
    good, revoked = generate(), generate()
    rows = {
        good.key_id: KeyRecord(good.key_id, "acme", good.secret_sha256, revoked=False),
        revoked.key_id: KeyRecord(revoked.key_id, "acme", revoked.secret_sha256, revoked=True),
    }
    clock = Clock()

    async def lookup(key_id: str) -> KeyRecord | None:
        return rows.get(key_id)

    cache = KeyCache(lookup, ttl=10, negative_ttl=2, clock=clock, stale_ttl=100)

    async def seen(token: str) -> None:
        with contextlib.suppress(AuthError):
            await cache.authenticate(f"Bearer {token}")

    assert not cache.serves_without_lookup()  # nothing seen yet: an outage would refuse every key
    run(seen(revoked.token))
    run(seen(generate().token))  # unknown: cached as such
    assert not cache.serves_without_lookup()  # neither a revoked nor an unknown key is served
    run(seen(good.token))
    assert cache.serves_without_lookup()
    clock.now = 109.9  # expired, still within the stale window (confirmed at 0, + 10 + 100)
    assert cache.serves_without_lookup()
    clock.now = 110.1
    assert not cache.serves_without_lookup()
