"""KV block accounting: allocation, LRU eviction of cached prefixes, reference counting."""

from __future__ import annotations

import numpy as np
import pytest

from sim.instance import KVCache
from sim.instance.kv import self_key, self_keys

BIG_PROMPT = 10_000
"""A prompt long enough that match_prefix is never limited by its last token."""


def resident(kv: KVCache, key: int) -> bool:
    """Whether cache entry ``key`` is resident (probed through the public prefix match)."""
    return kv.match_prefix(np.array([key]), BIG_PROMPT) == 1


def cache_entries(kv: KVCache, keys: tuple[int, ...]) -> None:
    """Compute ``keys`` as one request would (allocate, register), then drop the request."""
    assert kv.allocate(len(keys) * kv.blocks_per_hash)
    for key in keys:
        assert kv.register(key)
    kv.release(keys)
    kv.check()


def test_empty_cache():
    kv = KVCache(10)
    assert kv.num_free == 10 and kv.num_used == 0 and kv.num_evictable == 0
    kv.check()


@pytest.mark.parametrize(("tokens", "blocks"), [(0, 0), (1, 1), (16, 1), (17, 2), (160, 10)])
def test_blocks_for_rounds_up(tokens, blocks):
    assert KVCache(4).blocks_for(tokens) == blocks


def test_allocate_and_free():
    kv = KVCache(10)
    assert kv.allocate(3) and kv.allocate(7)
    assert kv.num_used == 10 and kv.num_free == 0
    kv.free(4)
    assert kv.num_used == 6 and kv.num_free == 4
    kv.check()


def test_allocate_returns_false_when_short_and_changes_nothing():
    kv = KVCache(8)
    cache_entries(kv, (1, 2))
    assert kv.allocate(5)
    before = (kv.num_used, kv.num_evictable)
    assert kv.allocate(4) is False  # 1 empty + 2 evictable < 4
    assert (kv.num_used, kv.num_evictable) == before
    assert resident(kv, 1) and resident(kv, 2)
    kv.check()


def test_free_more_than_used_asserts():
    kv = KVCache(4)
    kv.allocate(1)
    with pytest.raises(AssertionError, match="KV accounting"):
        kv.free(2)


def test_release_makes_entries_evictable_and_free():
    kv = KVCache(6)
    cache_entries(kv, (1, 2, 3))
    assert kv.num_used == 0 and kv.num_evictable == 3 and kv.num_free == 6
    assert all(resident(kv, k) for k in (1, 2, 3))


def test_eviction_takes_empty_blocks_first():
    kv = KVCache(6)
    cache_entries(kv, (1, 2, 3))
    assert kv.allocate(3)  # exactly the empty blocks
    assert kv.num_evictable == 3 and all(resident(kv, k) for k in (1, 2, 3))


def test_eviction_is_lru_and_tail_first():
    """A released chain is evicted from its tail (vLLM frees tails first), older chains first."""
    kv = KVCache(6)
    cache_entries(kv, (1, 2, 3))
    cache_entries(kv, (7, 8))
    assert kv.allocate(1)  # the one empty block: no eviction
    assert kv.allocate(1)
    assert [resident(kv, k) for k in (1, 2, 3, 7, 8)] == [True, True, False, True, True]
    assert kv.allocate(2)
    assert [resident(kv, k) for k in (1, 2, 3, 7, 8)] == [False, False, False, True, True]
    assert kv.allocate(1)
    assert not resident(kv, 8) and resident(kv, 7)
    assert kv.num_evictable == 1 and kv.num_used == 5
    kv.check()


def test_acquire_refreshes_recency():
    kv = KVCache(4)
    cache_entries(kv, (1,))
    cache_entries(kv, (2,))
    kv.acquire((1,))  # 1 in use again, then released: now the most recent
    kv.release((1,))
    kv.allocate(3)  # 2 empty + evict one
    assert resident(kv, 1) and not resident(kv, 2)


def test_acquire_counts_references():
    kv = KVCache(4)
    cache_entries(kv, (1, 2))
    kv.acquire((1, 2))
    kv.acquire((1,))
    assert kv.num_used == 2 and kv.num_evictable == 0
    kv.release((1, 2))
    assert kv.num_used == 1 and kv.num_evictable == 1  # 1 still held by the second holder
    kv.release((1,))
    assert kv.num_used == 0 and kv.num_evictable == 2
    kv.check()


def test_acquired_entries_are_never_evicted():
    kv = KVCache(3)
    cache_entries(kv, (1, 2))
    kv.acquire((1,))
    assert kv.allocate(2)  # 1 empty + evicts 2
    assert resident(kv, 1) and not resident(kv, 2)
    assert kv.allocate(1) is False
    kv.check()


def test_register_only_new_keys_and_only_with_caching():
    kv = KVCache(4)
    kv.allocate(1)
    assert kv.register(5) is True
    assert kv.register(5) is False
    off = KVCache(4, enable_prefix_caching=False)
    off.allocate(1)
    assert off.register(5) is False


def test_match_prefix_stops_at_first_miss():
    kv = KVCache(8)
    cache_entries(kv, (1, 2, 3))
    assert kv.match_prefix(np.array([1, 2, 3, 4]), BIG_PROMPT) == 3
    assert kv.match_prefix(np.array([1, 9, 3]), BIG_PROMPT) == 1
    assert kv.match_prefix(np.array([9, 1, 2]), BIG_PROMPT) == 0
    assert kv.match_prefix(None, BIG_PROMPT) == 0


@pytest.mark.parametrize(("prompt", "hits"), [(48, 2), (49, 3), (64, 3), (65, 3), (16, 0)])
def test_match_prefix_never_covers_the_last_prompt_token(prompt, hits):
    kv = KVCache(8)
    cache_entries(kv, (1, 2, 3))
    assert kv.match_prefix(np.array([1, 2, 3]), prompt) == hits


def test_match_prefix_off_without_caching():
    kv = KVCache(8, enable_prefix_caching=False)
    assert kv.match_prefix(np.array([1, 2]), BIG_PROMPT) == 0


def test_multi_block_hashes_evict_whole_entries():
    kv = KVCache(6, block_size=16, hash_block_tokens=32)
    assert kv.blocks_per_hash == 2 and kv.hash_block_tokens == 32
    cache_entries(kv, (1, 2))
    assert kv.num_evictable == 4
    assert kv.allocate(3)  # 2 empty + one 2-block entry
    assert kv.num_evictable == 2 and kv.num_used == 3 and kv.num_free == 3
    assert resident(kv, 1) and not resident(kv, 2)
    assert kv.match_prefix(np.array([1]), 33) == 1 and kv.match_prefix(np.array([1]), 32) == 0
    kv.check()


def test_check_detects_broken_counts():
    kv = KVCache(4)
    cache_entries(kv, (1,))
    kv.num_evictable += 1
    with pytest.raises(AssertionError):
        kv.check()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"num_blocks": 0}, "num_blocks"),
     ({"num_blocks": 4, "hash_block_tokens": 24}, "hash_block_tokens=24")],
)
def test_constructor_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        KVCache(**kwargs)


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_keep_invariants(seed):
    """Random requests allocate, share prefixes and leave; counts match a plain tally."""
    rng = np.random.default_rng(seed)
    kv = KVCache(int(rng.integers(4, 40)), hash_block_tokens=16 * int(rng.integers(1, 3)))
    bph = kv.blocks_per_hash
    holders: list[tuple[int, tuple[int, ...]]] = []  # (private blocks, shared keys 0..j-1)
    for _ in range(300):
        op = rng.integers(4)
        if op == 0:  # new request: reuse the resident part of the chain 0, 1, ..., then compute
            chain = tuple(range(int(rng.integers(0, 6))))
            hit = kv.match_prefix(np.array(chain, dtype=np.int64), BIG_PROMPT)
            kv.acquire(chain[:hit])
            n = int(rng.integers(0, 6))
            if kv.allocate(n):
                holders.append((n, chain[:hit]))
            else:
                kv.release(chain[:hit])
        elif op == 1 and holders:  # a request turns private blocks into the next chain entry
            i = int(rng.integers(len(holders)))
            private, shared = holders[i]
            key = len(shared)
            if private >= bph and kv.register(key):
                holders[i] = (private - bph, shared + (key,))
        elif holders:  # a request leaves
            private, shared = holders.pop(int(rng.integers(len(holders))))
            kv.free(private)
            kv.release(shared)
        kv.check()
        referenced = {k for _, s in holders for k in s}
        assert kv.num_used == sum(p for p, _ in holders) + bph * len(referenced)
        assert 0 <= kv.num_used + kv.num_evictable <= kv.num_blocks


def own_run(kv: KVCache, rid: int, first: int, limit: int) -> int:
    """Consecutive own blocks of ``rid`` from ``first``, probed key by key (no memo)."""
    n = 0
    while n < limit and kv.resident(self_key(rid, first + n)):
        n += 1
    return n


def test_own_block_match_follows_lru_evictions():
    """Evictions shrink a waiting request's own-block match, its run's tail first."""
    kv = KVCache(100)
    for rid, blocks in ((1, 10), (2, 30), (3, 20)):
        assert kv.allocate(blocks)
        assert kv.cache_own_blocks(rid, 0, blocks) == blocks  # preempted: kept as evictable
    for evict in (0, 5, 20, 3, 9, 1, 30):
        assert kv.allocate(evict) or evict > kv.num_free
        kv.check()
        for rid in (1, 2, 3):
            for first, limit in ((0, 40), (2, 5)):
                assert kv.match_own_blocks(rid, first, limit) == own_run(kv, rid, first, limit)
                assert kv.match_own_blocks(rid, first, limit) == own_run(kv, rid, first, limit)


def test_own_block_match_with_a_gap_left_by_an_older_preemption():
    """Blocks cached by an earlier preemption are evicted before younger lower ones."""
    kv = KVCache(40)
    assert kv.allocate(10)
    kv.cache_own_blocks(7, 0, 10)  # blocks 0..9 of request 7
    keys = tuple(self_keys(7, 0, 8))
    kv.acquire(keys)  # readmitted on blocks 0..7; blocks 8, 9 stay cached
    assert kv.allocate(6)  # recomputes blocks 8..13 privately
    kv.cache_own_blocks(7, 8, 14)  # preempted again: 8, 9 exist already, 10..13 are new
    kv.release(keys)
    kv.free(6 - 4)
    kv.check()
    assert kv.match_own_blocks(7, 0, 20) == own_run(kv, 7, 0, 20) == 14
    assert kv.allocate(kv.num_blocks - kv.num_used - kv.num_evictable + 2)  # evicts 9, 8
    assert kv.match_own_blocks(7, 0, 20) == own_run(kv, 7, 0, 20) == 8


@pytest.mark.parametrize("keep", [(), (5,), (3, 9)])
def test_evictable_before_counts_the_lru_prefix_before_kept_keys(keep):
    kv = KVCache(20)
    cache_entries(kv, tuple(range(12)))
    for want in (-1, 0, 1, 4, 12, 30):
        brute, got = 0, 0
        for key in kv._lru:
            if key in keep:
                break
            brute += 1
            if brute >= want:
                break
        got = kv.evictable_before(want, keep)
        assert got == brute, (want, keep)
