"""KV-cache block accounting of one instance, with vLLM-style prefix caching.

Blocks are counted, not materialised. A prompt's leading blocks can be shared through
cache entries keyed by block hashes (one entry covers ``blocks_per_hash`` blocks). Entries
with no request referencing them stay resident and evictable, least recently used first,
until a new allocation needs their blocks::

    num_blocks = used (held by requests, shared entries counted once)
               + evictable (cached, unreferenced)
               + empty

Allocation says "no" by returning ``False``; the caller preempts and retries (as vLLM's
``KVCacheManager.allocate_slots`` returns ``None``).

Keys >= 0 are the workload's prompt hashes (``blocks_per_hash`` blocks each). Keys < 0 are one
block of one request's own tokens (:func:`self_key`): vLLM hashes every full block, so when a
request is preempted its computed blocks stay cached until evicted and a quick readmission
recomputes little.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict, deque
from itertools import accumulate, islice
from operator import neg

import numpy as np


def self_key(rid: int, block_index: int) -> int:
    """Cache key of block ``block_index`` of request ``rid``'s own tokens (always < 0).

    For ``block_index < 2**24`` this is ``self_key(rid, 0) - block_index``: a request's own
    keys count down from its base key, so runs of them are ``range`` objects.
    """
    return -((rid << 24) | block_index) - 1


def self_keys(rid: int, first: int, count: int) -> range:
    """``self_key(rid, first + j)`` for ``j = 0 .. count - 1`` (block indices < 2**24)."""
    base = -(rid << 24) - 1 - first
    return range(base, base - count, -1)


class KVCache:
    """Block counts of one instance (all GPUs of the instance hold the same token slots)."""

    __slots__ = (
        "num_blocks",
        "block_size",
        "blocks_per_hash",
        "enable_prefix_caching",
        "num_used",
        "num_evictable",
        "_refs",
        "_lru",
        "num_hit_tokens",
        "num_query_tokens",
        "version",
        "_stamp",
        "_own_memo",
        "_keep_memo",
    )

    def __init__(
        self,
        num_blocks: int,
        block_size: int = 16,
        hash_block_tokens: int = 16,
        enable_prefix_caching: bool = True,
    ) -> None:
        """Create an empty cache.

        Args:
            num_blocks: blocks the instance has (from :func:`sim.perf.plan_memory`).
            block_size: tokens per block.
            hash_block_tokens: tokens one prefix hash covers (a multiple of ``block_size``).
            enable_prefix_caching: vLLM's ``--enable-prefix-caching``.
        """
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if hash_block_tokens % block_size:
            raise ValueError(
                f"hash_block_tokens={hash_block_tokens} must be a multiple of "
                f"block_size={block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.blocks_per_hash = hash_block_tokens // block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.num_used = 0
        self.num_evictable = 0
        self._refs: dict[int, int] = {}
        self._lru: OrderedDict[int, int] = OrderedDict()
        """Unreferenced entries, least recently used first -> insertion stamp (increasing
        along the order, so every entry evicted so far has a stamp below the first one's).
        (An OrderedDict, not a dict: evicting from the front of a dict leaves holes that
        every later look at its front scans.)"""
        self._stamp = 0
        """Stamp of the next insertion into ``_lru``."""
        self._keep_memo: tuple | None = None
        """``(keys, frozenset(keys))`` of the last ``evictable_before`` keep argument."""
        self._own_memo: tuple | None = None
        """``(rid, first, limit, negated prefix-minimum stamps)`` of the last own-block match."""
        self.num_hit_tokens = 0
        self.num_query_tokens = 0
        self.version = 0
        """Bumped whenever the set of cache entries or a reference count changes (callers
        memoise prefix matches on it)."""

    @property
    def num_free(self) -> int:
        """Blocks an allocation may take (empty plus evictable)."""
        return self.num_blocks - self.num_used

    @property
    def hash_block_tokens(self) -> int:
        """Tokens one prefix hash covers."""
        return self.blocks_per_hash * self.block_size

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def allocate(self, n: int) -> bool:
        """Take ``n`` blocks, evicting unreferenced cache entries if needed; False if short."""
        if n > self.num_blocks - self.num_used:
            return False
        empty = self.num_blocks - self.num_used - self.num_evictable
        if n > empty:
            self.version += 1
            bph = self.blocks_per_hash
            refs = self._refs
            if bph == 1:  # every entry is one block: evict exactly the shortfall
                lru = self._lru
                if n - empty == 1:
                    del refs[lru.popitem(False)[0]]
                else:
                    gone = list(islice(lru, n - empty))  # the least recently used entries
                    deque(map(lru.__delitem__, gone), 0)  # (C loops, no Python per entry)
                    deque(map(refs.__delitem__, gone), 0)
                self.num_evictable -= n - empty
            else:
                popitem = self._lru.popitem
                while n > empty:
                    h = popitem(False)[0]
                    del refs[h]
                    size = bph if h >= 0 else 1
                    self.num_evictable -= size
                    empty += size
        self.num_used += n
        return True

    def free(self, n: int) -> None:
        """Return ``n`` private blocks."""
        self.num_used -= n
        assert 0 <= self.num_used <= self.num_blocks - self.num_evictable, "KV accounting broke"

    # ---- prefix cache ------------------------------------------------------------------
    def match_prefix(self, hashes: np.ndarray | None, num_prompt_tokens: int) -> int:
        """Leading prompt hashes resident in the cache (vLLM recomputes the last token)."""
        if not self.enable_prefix_caching or hashes is None:
            return 0
        refs = self._refs
        limit = (num_prompt_tokens - 1) // self.hash_block_tokens
        h = 0
        for key in hashes[:limit].tolist():
            if key not in refs:
                break
            h += 1
        return h

    def evictable_before(self, want: int, keep: tuple) -> int:
        """Evictable blocks, in eviction order, up to ``want`` and before any key in ``keep``.

        Allocations evict the least recently used entries first, so evicting ``d`` more blocks
        than are empty removes the shortest LRU prefix holding ``d`` blocks; when ``d`` is at
        most the returned count, no key of ``keep`` is among them. Returns at least ``want``
        when that many can go without touching ``keep`` (it counts whole entries).
        """
        bph = self.blocks_per_hash
        if bph == 1:  # one block per entry: count the LRU prefix before a kept key (C loops)
            head = list(islice(self._lru, max(want, 1)))
            if keep:
                memo = self._keep_memo
                if memo is None or memo[0] is not keep:
                    memo = self._keep_memo = (keep, frozenset(keep))
                hit = list(map(memo[1].__contains__, head))
                if True in hit:
                    return hit.index(True)
            return len(head)
        keep = set(keep)
        got = 0
        for key in self._lru:
            if key in keep:
                break
            got += bph if key >= 0 else 1
            if got >= want:
                break
        return got

    def evictable_blocks(self, hashes: tuple) -> int:
        """Blocks of these resident entries that nobody references (taking them uses free)."""
        refs = self._refs
        bph = self.blocks_per_hash
        if bph == 1:
            return list(map(refs.__getitem__, hashes)).count(0)
        return sum((bph if key >= 0 else 1) for key in hashes if refs[key] == 0)

    def _forget_own_memo_of(self, hashes: tuple) -> None:
        """Drop the own-block match memo if ``hashes`` holds own entries of its request.

        Keys of one request's prefix (acquire/release) are its prompt hashes followed by its
        own block keys, so only the last key can tell. Other entries that are taken or
        released keep the memo exact: it infers evictions from the stamp at the LRU front,
        and taking an entry out of the LRU or appending one moves the front only past
        entries that are not the memoised request's.
        """
        if hashes and hashes[-1] < 0 and (-hashes[-1] - 1) >> 24 == self._own_memo[0]:
            self._own_memo = None

    def acquire(self, hashes: tuple) -> None:
        """Take a reference to resident entries (a new request reusing a cached prefix)."""
        refs, lru = self._refs, self._lru
        bph = self.blocks_per_hash
        self.version += 1
        if self._own_memo is not None:
            self._forget_own_memo_of(hashes)
        if hashes and hashes[0] < 0 and not any(map(refs.__getitem__, hashes)):
            # only own blocks of one request (distinct keys of one block each), all of them
            # evictable: the usual readmission after a preemption (C loops)
            deque(map(lru.__delitem__, hashes), 0)
            refs.update(dict.fromkeys(hashes, 1))
            moved = len(hashes)
        else:
            moved = 0
            for key in hashes:
                rc = refs[key]
                if rc == 0:
                    del lru[key]
                    moved += bph if key >= 0 else 1
                refs[key] = rc + 1
        self.num_evictable -= moved
        self.num_used += moved

    def release(self, hashes: tuple) -> None:
        """Drop references; unreferenced entries become evictable (most recent last)."""
        refs, lru = self._refs, self._lru
        bph = self.blocks_per_hash
        self.version += 1
        if self._own_memo is not None:
            self._forget_own_memo_of(hashes)
        stamp = self._stamp
        if hashes and hashes[0] < 0 and list(map(refs.__getitem__, hashes)).count(1) == len(
                hashes):
            # only own blocks of one request (distinct keys of one block each), referenced by
            # it alone: all become evictable, tails first (C loops)
            tails_first = hashes[::-1]
            refs.update(dict.fromkeys(tails_first, 0))
            moved = len(hashes)
            lru.update(zip(tails_first, range(stamp, stamp + moved), strict=True))
            stamp += moved
        else:
            moved = 0
            for key in reversed(hashes):  # free tails first, as vLLM does
                rc = refs[key] - 1
                refs[key] = rc
                if rc == 0:
                    lru[key] = stamp
                    stamp += 1
                    moved += bph if key >= 0 else 1
        self._stamp = stamp
        self.num_evictable += moved
        self.num_used -= moved

    def register(self, key: int) -> bool:
        """Turn a request's just-computed private blocks into cache entry ``key``.

        Returns:
            True if the entry was created (the caller moves ``blocks_per_hash`` of its blocks
            from private to shared); False if prefix caching is off or it already exists.
        """
        if not self.enable_prefix_caching or key in self._refs:
            return False
        self._refs[key] = 1
        self.version += 1
        return True

    def cache_own_blocks(self, rid: int, first: int, last: int) -> int:
        """Keep a preempted request's private full blocks ``first..last-1`` as evictable entries.

        The caller still holds them as used; they move to evictable (tail blocks first in
        eviction order). Returns how many blocks moved.
        """
        if not self.enable_prefix_caching or last <= first:
            return 0
        self.version += 1
        refs, lru = self._refs, self._lru
        keys = tuple(self_keys(rid, first, last - first)[::-1])  # blocks last-1 .. first
        memo = self._own_memo
        if memo is not None and memo[0] == rid:
            self._own_memo = None
        stamp = self._stamp
        if refs.keys().isdisjoint(keys):  # the usual case: add them all at C speed
            refs.update(dict.fromkeys(keys, 0))
            moved = len(keys)
            lru.update(zip(keys, range(stamp, stamp + moved), strict=True))
            stamp += moved
        else:
            moved = 0
            for key in keys:
                if key in refs:
                    continue
                refs[key] = 0
                lru[key] = stamp
                stamp += 1
                moved += 1
        self._stamp = stamp
        self.num_used -= moved
        self.num_evictable += moved
        return moved

    def match_own_blocks(self, rid: int, first: int, limit: int) -> int:
        """Consecutive own blocks of ``rid`` resident from block ``first`` (at most ``limit``)."""
        if not self.enable_prefix_caching or limit <= 0:
            return 0
        lru = self._lru
        memo = self._own_memo
        if memo is not None and memo[0] == rid and memo[1] == first and memo[2] == limit:
            # Since the memo, this request's own entries (unreferenced: it is waiting) can
            # only have been evicted, LRU first: exactly those stamped below the first entry.
            front = next(iter(lru.values()), self._stamp)
            return bisect_right(memo[3], -front)
        refs = self._refs
        key = -(rid << 24) - 1 - first  # self_key(rid, first + n) == key - n
        if key not in refs:
            return 0
        # one pass over the LRU stamps: an entry that is resident but not in the LRU is
        # referenced, which an own entry is not while its request waits (else: the long way)
        stamps = list(map(lru.get, range(key, key - limit, -1)))
        try:
            n = stamps.index(None)
        except ValueError:
            n = limit
        else:
            if key - n in refs:
                return self._match_own_blocks_referenced(key, limit)
            del stamps[n:]
        self._own_memo = (rid, first, limit, list(map(neg, accumulate(stamps, min))))
        return n

    def _match_own_blocks_referenced(self, key: int, limit: int) -> int:
        """:meth:`match_own_blocks` when some of the entries are referenced (no memo)."""
        present = list(map(self._refs.__contains__, range(key, key - limit, -1)))
        try:
            return present.index(False)
        except ValueError:
            return limit

    def check(self) -> None:
        """Assert the block invariants (used in tests and debug runs)."""
        assert 0 <= self.num_used, self.num_used
        assert 0 <= self.num_evictable, self.num_evictable
        assert self.num_used + self.num_evictable <= self.num_blocks
        bph = self.blocks_per_hash
        assert self.num_evictable == sum((bph if k >= 0 else 1) for k in self._lru)
