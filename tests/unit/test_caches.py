"""The per-process cache (caches.TtlLru): bounded, expiring, evicted by tag,
and never keeping a value read before an eviction it raced."""

from __future__ import annotations

import threading
import time

import pytest

from plasmaart.caches import TtlLru


def put(cache: TtlLru[str, int], key: str, value: int, *tags: str) -> bool:
    return cache.put(key, value, epoch=cache.epoch, born=time.monotonic(), tags=tags)


def test_it_keeps_at_most_its_size_dropping_the_least_recently_used() -> None:
    cache: TtlLru[str, int] = TtlLru("t", 3)
    for n, key in enumerate("abc"):
        put(cache, key, n)
    assert cache.get("a", 60) == 0  # a is now the most recently used
    put(cache, "d", 3)
    assert len(cache) == 3
    assert cache.get("b", 60) is None
    assert [cache.get(k, 60) for k in "acd"] == [0, 2, 3]


def test_entries_expire_after_the_ttl_counted_from_the_read() -> None:
    cache: TtlLru[str, int] = TtlLru("t", 10)
    cache.put("a", 1, epoch=cache.epoch, born=time.monotonic() - 2.0, tags=())
    assert cache.get("a", 5.0) == 1
    assert cache.get("a", 1.0) is None


def test_eviction_drops_the_tagged_entries_only_or_everything() -> None:
    cache: TtlLru[str, int] = TtlLru("t", 10)
    put(cache, "k1", 1, "user:u1")
    put(cache, "k2", 2, "user:u1", "session:s2")
    put(cache, "k3", 3, "user:u2")
    assert cache.evict(frozenset({"session:s2"})) == 1
    assert [cache.get(k, 60) for k in ("k1", "k2", "k3")] == [1, None, 3]
    assert cache.evict(frozenset({"user:u1"})) == 1
    assert cache.evict(frozenset({"*"})) == 1
    assert len(cache) == 0


def test_a_value_read_before_an_eviction_is_not_kept() -> None:
    cache: TtlLru[str, int] = TtlLru("t", 10)
    epoch = cache.epoch  # a reader starts...
    cache.evict(frozenset({"user:u1"}))  # ...a write commits meanwhile
    assert cache.put("k", 1, epoch=epoch, born=time.monotonic(), tags=("user:u1",)) is False
    assert cache.get("k", 60) is None
    assert put(cache, "k", 2, "user:u1") is True


def test_it_stays_bounded_and_consistent_under_threads() -> None:
    cache: TtlLru[int, int] = TtlLru("t", 50)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for n in range(2000):
                key = (n * 7 + offset) % 200
                found = cache.get(key, 60)
                assert found is None or found == key
                cache.put(key, key, epoch=cache.epoch, born=time.monotonic(), tags=(f"k:{key}",))
                if n % 97 == 0:
                    cache.evict(frozenset({f"k:{key}"}))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(cache) <= 50


def test_a_cache_holds_something() -> None:
    with pytest.raises(ValueError, match="at least one"):
        TtlLru("t", 0)
