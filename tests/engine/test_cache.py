"""Cache keys, size estimates and the none / lru / ram policies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.cache import (
    CacheEntry,
    CachePolicyError,
    LRUCache,
    NoCache,
    RAMCache,
    cache_key,
    estimate_bytes,
    parse_cache_policy,
)


def test_parse_cache_policy() -> None:
    assert isinstance(parse_cache_policy("none"), NoCache)
    lru = parse_cache_policy(" LRU:5 ")
    assert isinstance(lru, LRUCache) and lru.max_entries == 5 and lru.describe() == "lru:5"
    ram = parse_cache_policy("ram:0.5")
    assert isinstance(ram, RAMCache) and ram.max_bytes == 512 * 1024**2 and ram.describe() == "ram:0.5"
    assert parse_cache_policy("lru:0").describe() == "lru:0"
    policy = LRUCache(3)
    assert parse_cache_policy(policy) is policy


@pytest.mark.parametrize(("text", "why"), [
    ("lru", "N must be a whole number"),
    ("lru:x", "N must be a whole number"),
    ("lru:-1", "N must be >= 0"),
    ("ram:0", "GB must be a finite number > 0"),
    ("ram:-2", "GB must be a finite number > 0"),
    ("ram:lots", "GB must be a number"),
    ("ram:inf", "GB must be a finite number > 0"),
    ("classic", "unknown cache policy 'classic'"),
    ("none:3", "unknown cache policy"),
])
def test_bad_policy_strings_say_what_to_write(text: str, why: str) -> None:
    with pytest.raises(CachePolicyError) as err:
        parse_cache_policy(text)
    assert why in str(err.value) and repr(text) in str(err.value)
    assert "lru:N" in str(err.value) and "ram:GB" in str(err.value)


def test_non_string_policy() -> None:
    with pytest.raises(CachePolicyError, match="must be a string"):
        parse_cache_policy(5)  # type: ignore[arg-type]


def test_cache_key_depends_on_every_part() -> None:
    parent = cache_key("A", "1", {}, None, [])
    base = cache_key("Add", "1.0", {"b": 1, "c": "x"}, None, [("a", parent, 0)])
    assert len(base) == 16
    assert base == cache_key("Add", "1.0", {"c": "x", "b": 1}, None, [("a", parent, 0)])  # order-free
    variants = [
        cache_key("Sub", "1.0", {"b": 1, "c": "x"}, None, [("a", parent, 0)]),
        cache_key("Add", "1.1", {"b": 1, "c": "x"}, None, [("a", parent, 0)]),
        cache_key("Add", "1.0", {"b": 2, "c": "x"}, None, [("a", parent, 0)]),
        cache_key("Add", "1.0", {"b": 1.0, "c": "x"}, None, [("a", parent, 0)]),
        cache_key("Add", "1.0", {"b": True, "c": "x"}, None, [("a", parent, 0)]),
        cache_key("Add", "1.0", {"b": 1, "c": "x"}, "sha", [("a", parent, 0)]),
        cache_key("Add", "1.0", {"b": 1, "c": "x"}, None, [("a", parent, 1)]),
        cache_key("Add", "1.0", {"b": 1, "c": "x"}, None, [("z", parent, 0)]),
        cache_key("Add", "1.0", {"b": 1, "c": "x"}, None, [("a", cache_key("B", "1", {}, None, []), 0)]),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_estimate_bytes() -> None:
    t = torch.zeros(10, 4, dtype=torch.float32)
    assert estimate_bytes(t) == 160
    assert estimate_bytes(({"samples": t, "again": t}, [t])) == 160  # shared objects count once
    assert estimate_bytes((np.zeros(8, dtype=np.float64), b"abcd", "xyz")) == 64 + 4 + 3
    assert estimate_bytes(Image.new("RGB", (4, 5))) == 60
    assert estimate_bytes(torch.nn.Linear(4, 4)) == (16 + 4) * 4  # weights reached through attributes
    assert estimate_bytes((1, 2.0, None, True)) == 0


def test_no_cache_keeps_nothing() -> None:
    cache = NoCache()
    cache.put(b"k", CacheEntry((1,)))
    assert cache.get(b"k") is None and len(cache) == 0 and b"k" not in cache


def test_lru_evicts_least_recently_used() -> None:
    cache = LRUCache(2)
    cache.put(b"a", CacheEntry((1,)))
    cache.put(b"b", CacheEntry((2,)))
    assert cache.get(b"a") == CacheEntry((1,))  # a is now the most recent
    cache.put(b"c", CacheEntry((3,)))
    assert b"b" not in cache and b"a" in cache and b"c" in cache
    assert len(cache) == 2 and cache.evictions == 1
    cache.put(b"c", CacheEntry((4,), {"text": ["x"]}))  # replacing is not an eviction
    assert cache.evictions == 1 and cache.get(b"c") == CacheEntry((4,), {"text": ["x"]})
    cache.clear()
    assert len(cache) == 0
    zero = LRUCache(0)
    zero.put(b"a", CacheEntry((1,)))
    assert len(zero) == 0 and zero.evictions == 1


def test_ram_cache_keeps_under_budget() -> None:
    cache = RAMCache(1000)
    for name in (b"a", b"b"):
        cache.put(name, CacheEntry((torch.zeros(100, dtype=torch.int8), b"x" * 300)))
    assert cache.bytes_used == 800 and cache.evictions == 0
    cache.get(b"a")
    cache.put(b"c", CacheEntry((bytes(400),)))
    assert b"b" not in cache and b"a" in cache and b"c" in cache
    assert cache.bytes_used == 800 and cache.evictions == 1
    cache.put(b"huge", CacheEntry((bytes(5000),)))  # larger than the budget: not kept, nothing evicted
    assert b"huge" not in cache and cache.rejected == 1 and len(cache) == 2
    cache.put(b"a", CacheEntry((bytes(100),)))
    assert cache.bytes_used == 500
    cache.clear()
    assert cache.bytes_used == 0 and len(cache) == 0
