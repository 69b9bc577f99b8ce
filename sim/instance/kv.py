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
recomputes little. Those blocks are released together, tail first, so they sit in a row in LRU
order; they are stored as one LRU entry (a *run*) that eviction shortens tail first and a
readmission takes its leading blocks from, with the same eviction order, counts and matches as
one entry per block.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict, deque
from itertools import islice
from typing import Any

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
        "_runs",
        "_held",
        "_next_run",
        "num_hit_tokens",
        "num_query_tokens",
        "version",
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
        """Reference count of every resident prompt-hash entry (0: evictable) and of every
        referenced own block (an unreferenced own block lives in a run of ``_lru`` only)."""
        self._lru: OrderedDict[int, Any] = OrderedDict()
        """Evictable entries, least recently used first: prompt hash -> None, or run id (< 0)
        -> run ``[rid, lo, hi, run id]``: own blocks ``hi - 1, hi - 2, ..., lo`` of request
        ``rid`` in this order, standing for that many one-block entries in a row. (An
        OrderedDict, not a dict: evicting from the front of a dict leaves holes that every
        later look at its front scans.)"""
        self._runs: dict[int, list[list]] = {}
        """rid -> its runs in ``_lru`` (any order; requests with none are absent)."""
        self._held: dict[int, int] = {}
        """rid -> how many of its own blocks are referenced (absent: none)."""
        self._next_run = -1
        """Id of the next run (ids count down from -1; prompt hashes are >= 0)."""
        self._keep_memo: tuple | None = None
        """``evictable_before``'s parse of its last ``keep`` argument."""
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
        free = self.num_blocks - self.num_used
        if n > free:
            return False
        empty = free - self.num_evictable
        if n > empty:
            self.version += 1
            bph = self.blocks_per_hash
            refs = self._refs
            if self._runs:
                lru = self._lru
                key = next(iter(lru))
                if key < 0:  # the usual case: the front run alone gives enough blocks
                    run = lru[key]
                    if run[2] - run[1] > n - empty:
                        run[2] -= n - empty  # (_evict, inlined)
                        self.num_evictable -= n - empty
                        self.num_used += n
                        return True
                self._evict(n - empty)
            elif bph == 1:  # every entry is one block: evict exactly the shortfall
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
                    del refs[popitem(False)[0]]
                    self.num_evictable -= bph
                    empty += bph
        self.num_used += n
        return True

    def _evict(self, need: int) -> None:
        """Evict least recently used entries until ``need`` more blocks are empty.

        A prompt-hash entry goes whole; a run loses only the blocks still needed, tail first,
        as evicting its one-block entries one by one would.
        """
        lru, refs = self._lru, self._refs
        bph = self.blocks_per_hash
        got = 0
        while got < need:
            key = next(iter(lru))
            if key >= 0:
                del lru[key]
                del refs[key]
                got += bph
            else:
                run = lru[key]
                size = run[2] - run[1]
                if size > need - got:
                    run[2] -= need - got
                    got = need
                else:
                    del lru[key]
                    self._forget_run(run)
                    got += size
        self.num_evictable -= got

    def free(self, n: int) -> None:
        """Return ``n`` private blocks."""
        self.num_used -= n
        assert 0 <= self.num_used <= self.num_blocks - self.num_evictable, "KV accounting broke"

    # ---- runs of own blocks ------------------------------------------------------------
    def _forget_run(self, run: list) -> None:
        """Drop ``run`` (already out of ``_lru``) from its request's list."""
        runs = self._runs[run[0]]
        if len(runs) == 1:
            del self._runs[run[0]]
        else:
            runs.remove(run)  # (runs differ in their ids: equality is identity)

    def _append_run(self, rid: int, lo: int, hi: int) -> None:
        """Make own blocks ``hi - 1 .. lo`` of ``rid`` the most recently used entries."""
        lru = self._lru
        if lru:
            last = next(reversed(lru))
            if last < 0:
                run = lru[last]
                if run[1] == hi and run[0] == rid:  # they continue the last run
                    run[1] = lo
                    return
        key = self._next_run
        self._next_run = key - 1
        run = [rid, lo, hi, key]
        lru[key] = run
        runs = self._runs.get(rid)
        if runs is None:
            self._runs[rid] = [run]
        else:
            runs.append(run)

    def _run_of(self, rid: int, b: int) -> list | None:
        """The run holding own block ``b`` of ``rid``, if any."""
        for run in self._runs.get(rid, ()):
            if run[1] <= b < run[2]:
                return run
        return None

    def _take_from_run(self, run: list, lo: int, hi: int) -> None:
        """Take own blocks ``lo .. hi - 1`` (inside ``run``) out of the LRU.

        The run's other blocks keep their places in eviction order.
        """
        if lo == run[1]:
            if hi == run[2]:
                del self._lru[run[3]]
                self._forget_run(run)
            else:
                run[1] = hi  # the run's front part stays
        elif hi == run[2]:
            run[2] = lo  # the run's back part stays
        else:  # split: [hi, run hi) stays in place, [run lo, lo) follows it
            lru = self._lru
            after = list(lru)
            after = after[after.index(run[3]) + 1:]
            key = self._next_run
            self._next_run = key - 1
            rest = [run[0], run[1], lo, key]
            run[1] = hi
            lru[key] = rest
            deque(map(lru.move_to_end, after), 0)
            self._runs[run[0]].append(rest)

    @staticmethod
    def _own_range(hashes: tuple | range) -> tuple[int, int] | None:
        """``(rid, first)`` if ``hashes`` holds ``self_keys(rid, first, len(hashes))``."""
        top = -hashes[0] - 1
        rid, first = top >> 24, top & 0xFFFFFF
        n = len(hashes)
        if first + n > 1 << 24:
            return None
        if type(hashes) is range:
            return (rid, first) if hashes.step == -1 else None
        return (rid, first) if hashes == tuple(self_keys(rid, first, n)) else None

    def resident(self, key: int) -> bool:
        """Whether entry ``key`` (a prompt hash or :func:`self_key`) is in the cache."""
        if key >= 0 or key in self._refs:
            return key in self._refs
        rid, b = (-key - 1) >> 24, (-key - 1) & 0xFFFFFF
        return self._run_of(rid, b) is not None

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

    def _parse_keep(self, keep: tuple | range) -> tuple:
        """``(keep, frozenset of its prompt hashes, {rid: sorted own blocks}, all keys)``."""
        memo = self._keep_memo
        if memo is not None and memo[0] is keep:
            return memo
        own: dict[int, list[int]] = {}
        if type(keep) is range and keep[-1] < 0:  # own blocks only (one request's, usually)
            span = self._own_range(keep)
            if span is not None:
                memo = self._keep_memo = (keep, frozenset(), {span[0]: list(
                    range(span[1], span[1] + len(keep)))}, keep)
                return memo
        for key in keep:
            if key < 0:
                own.setdefault((-key - 1) >> 24, []).append((-key - 1) & 0xFFFFFF)
        for blocks in own.values():
            blocks.sort()
        memo = self._keep_memo = (keep, frozenset(k for k in keep if k >= 0), own,
                                  frozenset(keep))
        return memo

    def evictable_before(self, want: int, keep: tuple | range) -> int:
        """Evictable blocks, in eviction order, up to ``want`` and before any key in ``keep``.

        Allocations evict the least recently used entries first, so evicting ``d`` more blocks
        than are empty removes the shortest LRU prefix holding ``d`` blocks; when ``d`` is at
        most the returned count, no key of ``keep`` is among them. Returns at least ``want``
        when that many can go without touching ``keep`` (it counts whole prompt-hash entries).
        """
        bph = self.blocks_per_hash
        if self._runs:
            return self._evictable_before_runs(want, keep)
        if bph == 1:  # one block per entry: count the LRU prefix before a kept key (C loops)
            head = list(islice(self._lru, max(want, 1)))
            if keep:
                hit = list(map(self._parse_keep(keep)[3].__contains__, head))
                if True in hit:
                    return hit.index(True)
            return len(head)
        kept = set(keep)
        got = 0
        for key in self._lru:
            if key in kept:
                break
            got += bph
            if got >= want:
                break
        return got

    def _evictable_before_runs(self, want: int, keep: tuple | range) -> int:
        """:meth:`evictable_before` when the LRU holds runs of own blocks."""
        bph = self.blocks_per_hash
        _, prompt, own, _ = self._parse_keep(keep) if keep else (None, (), {}, None)
        cap = want if want > 1 else 1
        got = 0
        for key, run in self._lru.items():
            if key >= 0:
                if key in prompt:
                    return got
                got += bph
                if got >= cap:
                    return got
            else:
                lo, hi = run[1], run[2]
                size = hi - lo
                kept = False
                blocks = own.get(run[0]) if own else None
                if blocks:
                    i = bisect_left(blocks, hi) - 1
                    if i >= 0 and blocks[i] >= lo:  # the run's first kept block, tail first
                        size = hi - 1 - blocks[i]
                        kept = True
                if size >= cap - got:
                    return cap
                got += size
                if kept:
                    return got
        return got

    def evictable_blocks(self, hashes: tuple | range) -> int:
        """Blocks of these resident prompt-hash entries that nobody references.

        Taking them uses free blocks.
        """
        refs = self._refs
        return list(map(refs.__getitem__, hashes)).count(0) * self.blocks_per_hash

    def acquire(self, hashes: tuple | range) -> None:
        """Take a reference to resident entries (a new request reusing a cached prefix)."""
        refs, lru = self._refs, self._lru
        bph = self.blocks_per_hash
        self.version += 1
        if hashes and hashes[0] < 0:
            # only own blocks: usually those of one request's run, none referenced (the
            # readmission after a preemption)
            span = self._own_range(hashes)
            if span is not None and span[0] not in self._held:
                rid, first = span
                n = len(hashes)
                run = self._run_of(rid, first)
                if run is not None and first + n <= run[2]:
                    self._take_from_run(run, first, first + n)
                    refs.update(dict.fromkeys(hashes, 1))
                    self._held[rid] = n
                    self.num_evictable -= n
                    self.num_used += n
                    return
        moved = 0
        held = self._held
        for key in hashes:
            rc = refs.get(key, 0)
            if rc == 0:
                if key >= 0:
                    del lru[key]
                    moved += bph
                else:
                    rid, b = (-key - 1) >> 24, (-key - 1) & 0xFFFFFF
                    run = self._run_of(rid, b)
                    if run is None:
                        raise KeyError(key)
                    self._take_from_run(run, b, b + 1)
                    held[rid] = held.get(rid, 0) + 1
                    moved += 1
            refs[key] = rc + 1
        self.num_evictable -= moved
        self.num_used += moved

    def release(self, hashes: tuple | range) -> None:
        """Drop references; unreferenced entries become evictable (most recent last)."""
        refs, lru = self._refs, self._lru
        bph = self.blocks_per_hash
        self.version += 1
        held = self._held
        if hashes and hashes[0] < 0:
            span = self._own_range(hashes)
            if span is not None and held.get(span[0]) == len(hashes) and list(
                    map(refs.__getitem__, hashes)).count(1) == len(hashes):
                # all own blocks of one request, referenced by it alone: they all become
                # evictable, tails first (one run)
                rid, first = span
                n = len(hashes)
                deque(map(refs.__delitem__, hashes), 0)
                del held[rid]
                self._append_run(rid, first, first + n)
                self.num_evictable += n
                self.num_used -= n
                return
        moved = 0
        for key in reversed(hashes):  # free tails first, as vLLM does
            rc = refs[key] - 1
            if key >= 0:
                refs[key] = rc
                if rc == 0:
                    lru[key] = None
                    moved += bph
            elif rc:
                refs[key] = rc
            else:
                del refs[key]
                rid, b = (-key - 1) >> 24, (-key - 1) & 0xFFFFFF
                if held[rid] == 1:
                    del held[rid]
                else:
                    held[rid] -= 1
                self._append_run(rid, b, b + 1)
                moved += 1
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
        eviction order). Blocks already resident are skipped (they stay where they are).
        Returns how many blocks moved.
        """
        if not self.enable_prefix_caching or last <= first:
            return 0
        self.version += 1
        runs = self._runs.get(rid)
        if rid not in self._held and (
                runs is None or all(run[2] <= first or run[1] >= last for run in runs)):
            self._append_run(rid, first, last)  # the usual case: none of them is resident
            moved = last - first
        else:
            refs = self._refs
            moved = 0
            top = None  # upper end of the current stretch of new blocks
            for b in range(last - 1, first - 1, -1):
                if self_key(rid, b) in refs or self._run_of(rid, b) is not None:
                    if top is not None:
                        self._append_run(rid, b + 1, top)
                        top = None
                else:
                    if top is None:
                        top = b + 1
                    moved += 1
            if top is not None:
                self._append_run(rid, first, top)
        self.num_used -= moved
        self.num_evictable += moved
        return moved

    def match_own_blocks(self, rid: int, first: int, limit: int) -> int:
        """Consecutive own blocks of ``rid`` resident from block ``first`` (at most ``limit``)."""
        if not self.enable_prefix_caching or limit <= 0:
            return 0
        runs = self._runs.get(rid)
        if rid not in self._held:  # all of its resident own blocks are in its runs
            if runs is None:
                return 0
            if len(runs) == 1:  # the usual case: one run, nothing resident past its end
                lo, hi = runs[0][1], runs[0][2]
                if not lo <= first < hi:
                    return 0
                return hi - first if hi - first < limit else limit
        refs = self._refs
        n = 0
        while n < limit:
            b = first + n
            for run in runs or ():
                if run[1] <= b < run[2]:
                    n += run[2] - b
                    break
            else:
                if self_key(rid, b) not in refs:
                    break
                n += 1
        return n if n < limit else limit

    def check(self) -> None:
        """Assert the block invariants (used in tests and debug runs)."""
        assert 0 <= self.num_used, self.num_used
        assert 0 <= self.num_evictable, self.num_evictable
        assert self.num_used + self.num_evictable <= self.num_blocks
        bph = self.blocks_per_hash
        total = 0
        runs = []
        for key, run in self._lru.items():
            if key >= 0:
                assert self._refs[key] == 0, key
                total += bph
            else:
                assert run[3] == key and run[1] < run[2], run
                total += run[2] - run[1]
                runs.append(run)
        assert self.num_evictable == total, (self.num_evictable, total)
        indexed = [run for rid, rs in self._runs.items() for run in rs if run[0] == rid]
        assert sorted(map(id, indexed)) == sorted(map(id, runs))
        held: dict[int, int] = {}
        for key, rc in self._refs.items():
            assert rc >= (0 if key >= 0 else 1), (key, rc)
            if key < 0:
                rid = (-key - 1) >> 24
                held[rid] = held.get(rid, 0) + 1
                assert self._run_of(rid, (-key - 1) & 0xFFFFFF) is None
        assert held == self._held, (held, self._held)
