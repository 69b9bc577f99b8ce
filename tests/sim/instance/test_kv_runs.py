"""Own-block runs of :class:`KVCache` against a one-entry-per-block reference model.

A preempted request's own blocks are stored as one LRU entry (a run) that shrinks tail first
when evicted and loses its leading blocks when the request is readmitted. The reference
model below keeps one LRU entry per block, as vLLM does; every operation must leave both
with the same counts, the same resident keys and the same eviction order.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from sim.instance import KVCache
from sim.instance.kv import self_key, self_keys

BIG_PROMPT = 10**6


class PerBlockKV:
    """The reference: every own block is its own LRU entry (sizes: bph or 1)."""

    def __init__(self, num_blocks: int, bph: int) -> None:
        self.num_blocks, self.bph = num_blocks, bph
        self.num_used = self.num_evictable = 0
        self.refs: dict[int, int] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()

    def size(self, key: int) -> int:
        return self.bph if key >= 0 else 1

    def allocate(self, n: int) -> bool:
        if n > self.num_blocks - self.num_used:
            return False
        empty = self.num_blocks - self.num_used - self.num_evictable
        while n > empty:
            key = self.lru.popitem(False)[0]
            del self.refs[key]
            self.num_evictable -= self.size(key)
            empty += self.size(key)
        self.num_used += n
        return True

    def free(self, n: int) -> None:
        self.num_used -= n

    def acquire(self, keys: tuple) -> None:
        for key in keys:
            rc = self.refs[key]
            if rc == 0:
                del self.lru[key]
                self.num_evictable -= self.size(key)
                self.num_used += self.size(key)
            self.refs[key] = rc + 1

    def release(self, keys: tuple) -> None:
        for key in reversed(keys):
            self.refs[key] -= 1
            if self.refs[key] == 0:
                self.lru[key] = None
                self.num_evictable += self.size(key)
                self.num_used -= self.size(key)

    def register(self, key: int) -> bool:
        if key in self.refs:
            return False
        self.refs[key] = 1
        return True

    def cache_own_blocks(self, rid: int, first: int, last: int) -> int:
        moved = 0
        for b in range(last - 1, first - 1, -1):
            key = self_key(rid, b)
            if key not in self.refs:
                self.refs[key] = 0
                self.lru[key] = None
                moved += 1
        self.num_used -= moved
        self.num_evictable += moved
        return moved

    def match_prefix(self, chain: tuple) -> int:
        h = 0
        while h < len(chain) and chain[h] in self.refs:
            h += 1
        return h

    def match_own_blocks(self, rid: int, first: int, limit: int) -> int:
        n = 0
        while n < limit and self_key(rid, first + n) in self.refs:
            n += 1
        return n

    def evictable_before(self, want: int, keep: tuple) -> int:
        got, cap = 0, max(want, 1)
        for key in self.lru:
            if key in keep:
                break
            got += self.size(key)
            if got >= cap:
                break
        return got

    def evictable_blocks(self, keys: tuple) -> int:
        return sum(self.size(k) for k in keys if self.refs[k] == 0)


def eviction_order(kv: KVCache) -> list[int]:
    """``kv``'s LRU with every run spelled out block by block (tail first)."""
    out = []
    for key, run in kv._lru.items():
        if key >= 0:
            out.append(key)
        else:
            out.extend(self_key(run[0], b) for b in range(run[2] - 1, run[1] - 1, -1))
    return out


def same(kv: KVCache, ref: PerBlockKV) -> None:
    kv.check()
    assert (kv.num_used, kv.num_evictable) == (ref.num_used, ref.num_evictable)
    assert eviction_order(kv) == list(ref.lru)
    for key in ref.refs:
        assert kv.resident(key), key


def both(kv: KVCache, ref: PerBlockKV, name: str, *args):
    got, want = getattr(kv, name)(*args), getattr(ref, name)(*args)
    assert got == want, (name, args, got, want)
    return got


class Scenario:
    """Requests sharing prompt chains, preempted and readmitted at random, on both caches."""

    def __init__(self, seed: int, bph: int) -> None:
        self.rng = rng = np.random.default_rng(seed)
        self.bph = bph
        num_blocks = int(rng.integers(20, 120))
        self.kv, self.ref = KVCache(num_blocks, 16, 16 * bph), PerBlockKV(num_blocks, bph)
        self.chains = [tuple(1000 * g + i for i in range(8)) for g in range(3)]
        self.running: dict[int, list] = {}  # rid -> [chain, shared keys, shared blocks, private]
        self.waiting: dict[int, tuple] = {}  # rid -> chain (preempted: it has own blocks)
        self.pool: list[int] = []  # blocks taken by "other requests"
        self.next_rid = 1

    def both(self, name: str, *args):
        return both(self.kv, self.ref, name, *args)

    def admit(self) -> None:
        """Admit a new request or a preempted one (matching its prefix and own blocks)."""
        rng, kv, ref, waiting = self.rng, self.kv, self.ref, self.waiting
        if waiting and rng.random() < 0.5:
            rid = int(rng.choice(sorted(waiting)))
            chain = waiting[rid]
        else:
            rid, self.next_rid = self.next_rid, self.next_rid + 1
            chain = self.chains[int(rng.integers(len(self.chains)))][:int(rng.integers(0, 9))]
        h = kv.match_prefix(np.array(chain, dtype=np.int64), BIG_PROMPT)
        assert h == ref.match_prefix(chain)
        keys = chain[:h]
        first = h * self.bph
        self.both("evictable_blocks", keys)
        own = 0
        if rid in waiting:
            own = self.both("match_own_blocks", rid, first, int(rng.integers(0, 40)))
            if own and rng.random() < 0.3:
                own = int(rng.integers(1, own + 1))  # take fewer (a shorter limit)
            mine = self_keys(rid, first, own)  # the scheduler passes a range when it can
            keys = mine if own and not keys and rng.random() < 0.7 else keys + tuple(mine)
            for want in (0, 1, 5, 30):
                self.both("evictable_before", want, keys)
        private = int(rng.integers(0, 12))
        if rng.random() < 0.1:
            return  # the head stays blocked
        self.both("acquire", keys)
        if not self.both("allocate", private):
            self.both("release", keys)
        else:
            waiting.pop(rid, None)
            self.running[rid] = [chain, keys, first + own, private]

    def probe(self) -> None:
        """A request's own-block match without admitting it (even a running one's)."""
        rid = int(self.rng.choice(sorted(self.waiting) + sorted(self.running)))
        for first in (0, 1, 3):
            self.both("match_own_blocks", rid, first, int(self.rng.integers(0, 40)))

    def share(self) -> None:
        """A running request turns private blocks into its chain's next entry."""
        rid = int(self.rng.choice(sorted(self.running)))
        chain, keys, shared, private = self.running[rid]
        j = len(keys)
        if private >= self.bph and j < len(chain) and (not keys or keys[-1] >= 0):
            if self.both("register", chain[j]):
                self.running[rid] = [chain, keys + (chain[j],), shared + self.bph,
                                     private - self.bph]

    def leave(self, preempt: bool) -> None:
        """A running request finishes, or is preempted (its own full blocks stay cached)."""
        rid = int(self.rng.choice(sorted(self.running)))
        chain, keys, shared, private = self.running.pop(rid)
        if preempt:
            full = shared + int(self.rng.integers(0, private + 1))
            private -= self.both("cache_own_blocks", rid, shared, full)
            self.waiting[rid] = chain
        self.both("free", private)
        self.both("release", keys)

    def step(self) -> None:
        op = int(self.rng.integers(0, 7))
        if op == 0 or (op == 1 and not self.waiting and not self.running):
            self.admit()
        elif op == 1:
            self.probe()
        elif op in (2, 3, 4) and self.running:
            if op == 2:
                self.share()
            else:
                self.leave(preempt=op == 3)
        elif op == 5:  # memory pressure: evicts
            n = int(self.rng.integers(1, 25))
            if self.both("allocate", n):
                self.pool.append(n)
        elif op == 6 and self.pool:
            self.both("free", self.pool.pop(int(self.rng.integers(len(self.pool)))))
        same(self.kv, self.ref)


def run_random(seed: int, bph: int, steps: int = 400) -> None:
    scenario = Scenario(seed, bph)
    for _ in range(steps):
        scenario.step()


@pytest.mark.parametrize("bph", [1, 2, 3])
@pytest.mark.parametrize("seed", range(40))
def test_runs_match_the_per_block_reference(seed, bph):
    run_random(seed, bph)
