"""The per-instance scheduler: vLLM V1's continuous batching, one iteration at a time.

Each iteration has a token budget (``max_num_batched_tokens``). RUNNING requests are
scheduled first, in order, each taking ``num_tokens - num_computed_tokens`` new tokens
(1 for a decode, the rest of the prompt for a prefill, cut to the budget with chunked
prefill); when KV blocks run short the last running request is preempted (recompute) and the
allocation retried. If nothing was preempted, WAITING requests are admitted FCFS while there
is budget, a free sequence slot and blocks, after matching their prompt against the prefix
cache. The step's result is an :class:`IterationPlan` that :mod:`sim.perf` times; the
scheduler never calls the performance model itself.

Decode-only stretches are also planned in closed form (:meth:`Instance.plan_decode_run`):
when every running request decodes and nothing can be admitted, the batch stays the same
until its first member stops, so ``k`` iterations can be applied at once.

The running batch is kept in two parts, in vLLM's order: an aggregated *decode batch* of
requests that decode one token per iteration, then a short *tail* list of the others
(prefilling, recomputing, or decoding behind a prefilling request). The decode batch is never
scanned per iteration. It keeps a step counter (iterations it has run), each member's offset
``num_computed_tokens - step`` at join (so its counters are ``offset + step`` now, written back
to the request only when it leaves: lazy counters), members grouped by KV-block phase
(``offset mod block_size``: the group ``(-step) mod block_size`` needs one new block this
iteration), the sum of offsets (attended context in O(1)) and a heap of stop steps (the step
at which each member samples its ``stop_tokens``-th output). Joining, leaving, scheduling the
batch for one iteration and planning or finishing a k-iteration run cost O(log B) or O(block
size), not O(B), and the results are exactly those of scanning the batch request by request.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from itertools import accumulate

from sim.instance.config import InstanceConfig
from sim.instance.kv import KVCache, self_keys
from sim.instance.request import Request, RequestStatus

INF = float("inf")
WAITING = RequestStatus.WAITING
_NO_HIT = ((), 0, 0)
"""A prefix match that found nothing: ``(keys, hit_tokens, evictable_blocks)``."""
_NO_KEYS: tuple | range = ()
"""No prefix-cache keys (typed as keys are, so that setting it does not narrow the type)."""


@dataclass(slots=True, init=False)
class IterationPlan:
    """One scheduled iteration: who runs how many tokens, and the batch sums for sim/perf.

    ``IterationPlan()`` is an empty plan (the fields' defaults), built once per iteration by a
    plain ``__init__`` (a dataclass's generated one, with its default factories, costs more).
    """

    reqs: list[Request] = field(default_factory=list)
    """Scheduled requests, in schedule order."""
    num_new: list[int] = field(default_factory=list)
    """Tokens scheduled for each (same order)."""
    num_prefill_tokens: int = 0
    num_prefill_seqs: int = 0
    prefill_ctx_tokens: int = 0
    prefill_new_x_ctx: int = 0
    prefill_new_sq: int = 0
    num_decode_seqs: int = 0
    decode_ctx_tokens: int = 0
    num_preempted: int = 0
    """Requests preempted while building this plan."""
    batch_seqs: int = 0
    """Members of the instance's aggregated decode batch scheduled for one token each; they
    come before ``reqs`` in schedule order and are not listed there (their counts are in
    ``num_decode_seqs`` and ``decode_ctx_tokens``)."""
    batch_reqs: list[Request] | None = None
    """The decode-batch members, listed only when the instance's ``record_batch_members`` is
    set (tests; building the list is O(batch))."""

    def __init__(self) -> None:
        self.reqs = []
        self.num_new = []
        self.num_prefill_tokens = self.num_prefill_seqs = self.prefill_ctx_tokens = 0
        self.prefill_new_x_ctx = self.prefill_new_sq = self.num_decode_seqs = 0
        self.decode_ctx_tokens = self.num_preempted = self.batch_seqs = 0
        self.batch_reqs = None

    def shape_args(self) -> tuple[int, int, int, int, int, int, int]:
        """The seven batch sums in :meth:`LatencyBackend.iteration_time_s` order."""
        return (self.num_prefill_tokens, self.num_prefill_seqs, self.prefill_ctx_tokens,
                self.prefill_new_x_ctx, self.prefill_new_sq, self.num_decode_seqs,
                self.decode_ctx_tokens)


class Instance:
    """Queues, running batch and KV blocks of one vLLM engine."""

    record_batch_members = False
    """List decode-batch members in each plan (``IterationPlan.batch_reqs``; tests only)."""

    def __init__(self, index: int, cfg: InstanceConfig, num_blocks: int,
                 hash_block_tokens: int = 16) -> None:
        """Create an idle instance.

        Args:
            index: position in the cluster.
            cfg: vLLM flags.
            num_blocks: KV blocks (from the memory model or the override).
            hash_block_tokens: tokens per prefix hash of the workload.
        """
        self.index = index
        self.cfg = cfg
        self.kv = KVCache(num_blocks, cfg.block_size, max(hash_block_tokens, cfg.block_size),
                          cfg.enable_prefix_caching)
        self._bs = cfg.block_size
        """Tokens per KV block (``kv.block_size``)."""
        self.waiting: deque[Request] = deque()
        self.pending_kv: deque[Request] = deque()
        """Requests whose KV must be pulled into this instance (it is their Follow)."""
        self.ready_kv: list[Request] = []
        """Hand-ins whose KV arrived; they join the running batch at the next iteration."""
        self.awaiting_out: list[Request] = []
        """Requests whose share here is done and whose KV waits for the Follow to pull it."""
        self.num_transfers_in = 0
        self.num_transfers_out = 0
        self.queued_prefill_tokens = 0
        """Prompt (or recompute) tokens not yet computed, over waiting and running requests."""
        self.busy = False
        self.hash_block_tokens = hash_block_tokens
        # running batch = decode batch (aggregated, first) + tail (explicit, after it)
        self._tail: list[Request] = []
        """Running requests after the decode batch, in schedule order (prefilling ones and
        whatever follows them). Mutated in place only (the simulator's view keeps it)."""
        self._batch: dict[int, tuple[Request, int]] = {}
        """Decode batch: join number -> (request, offset); offset = num_computed_tokens at
        join - step at join, tokens. Insertion order is schedule order."""
        self._phase: list[dict[int, Request]] = [{} for _ in range(cfg.block_size)]
        """Decode-batch members by ``offset mod block_size`` (join number -> request)."""
        self._hist = [0] * cfg.block_size
        """Sizes of the phase groups (members by ``offset mod block_size``)."""
        self._stops: list[tuple[int, int, Request]] = []
        """Heap of ``(stop step, join number, request)``; entries of members that left early
        (preempted) are stale and skipped."""
        self._register_pending: dict[int, Request] = {}
        """Decode-batch members with prompt hashes still to offer the prefix cache."""
        self._sum_offset = 0
        """Sum of the decode batch's offsets, tokens."""
        self._step = 0
        """Iterations the decode batch has run (its clock)."""
        self._joins = 0
        """Join numbers handed out so far."""
        self._run_seqs = 0
        self._run_crossing: list[int] = []
        self.run_ctx_tokens = 0
        self.run_owed_blocks = 0
        """Blocks the decode run in flight still has to take (it took the empty ones at
        planning; the rest evict cached entries when the run is settled: cut or finished)."""
        self._hit_memo: tuple | None = None
        """``(request, kv.version, preemptions, outputs, result)`` of the last prefix match
        (the queue's head is matched again and again while it waits)."""
        self._own_keys_memo: tuple = (-1, 0, 0, ())
        """``(rid, first, count, keys)`` of the last :meth:`_own_keys` answer."""
        self._head_keys: tuple | range = ()
        """Prefix-cache keys the waiting queue's head would reuse (from the last admission
        check); a decode run must not evict them."""

    # ---- queue ---------------------------------------------------------------------------
    def enqueue(self, r: Request) -> None:
        """Add a request to the waiting queue (FCFS)."""
        r.instance = self.index
        r.status = WAITING
        self.waiting.append(r)
        total = r.num_prompt_tokens + r.num_output_tokens  # (outstanding_prefill, inlined)
        c = r.num_computed_tokens
        if not r.num_output_tokens or c < total - 1:
            self.queued_prefill_tokens += total - c

    @property
    def capacity_tokens(self) -> int:
        """KV capacity, tokens."""
        return self.kv.num_blocks * self.kv.block_size

    # ---- running batch ---------------------------------------------------------------------
    @property
    def registering(self) -> bool:
        """Whether decode-batch members still offer prompt blocks to the prefix cache."""
        return bool(self._register_pending)

    @property
    def num_running(self) -> int:
        """Requests in the running batch."""
        return len(self._batch) + len(self._tail)

    @property
    def running(self) -> list[Request]:
        """The running batch in schedule order (a new list; counters brought up to date).

        O(batch): for tests, invariant checks and inspection, not the hot path.
        """
        out = []
        for r, off in self._batch.values():
            self._write_counters(r, off)
            out.append(r)
        return out + self._tail

    def add_running(self, r: Request) -> None:
        """Append ``r`` (status RUNNING already) to the end of the running batch."""
        if not self._tail:
            out = r.num_output_tokens  # (_is_decoding, inlined)
            if out > 0 and r.num_computed_tokens == r.num_prompt_tokens + out - 1:
                self._join(r)
                return
        self._tail.append(r)

    @staticmethod
    def _is_decoding(r: Request) -> bool:
        """Whether ``r``'s next iteration is a plain decode step (one token, KV complete)."""
        out = r.num_output_tokens
        return out > 0 and r.num_computed_tokens == r.num_prompt_tokens + out - 1

    def _join(self, r: Request) -> None:
        """Add a decoding request (counters up to date) at the end of the decode batch."""
        seq = self._joins
        self._joins = seq + 1
        off = r.num_computed_tokens - self._step
        self._batch[seq] = (r, off)
        ph = off % self._bs
        self._phase[ph][seq] = r
        self._hist[ph] += 1
        self._sum_offset += off
        heapq.heappush(self._stops, (r.stop_tokens + r.num_prompt_tokens - 1 - off, seq, r))
        if r.hashes is not None and self.kv.enable_prefix_caching and self._can_register(r):
            self._register_pending[seq] = r

    def _leave(self, seq: int) -> Request:
        """Remove decode-batch member ``seq`` and write its counters back."""
        batch = self._batch
        r, off = batch.pop(seq)
        bs = self._bs
        ph = off % bs
        del self._phase[ph][seq]
        self._hist[ph] -= 1
        self._sum_offset -= off
        if self._register_pending:
            self._register_pending.pop(seq, None)
        c = off + self._step  # _write_counters, inlined
        r.num_computed_tokens = c
        r.num_output_tokens = c - r.num_prompt_tokens + 1
        r.num_blocks = -(-c // bs)
        if not batch:
            self._stops.clear()
        return r

    def _write_counters(self, r: Request, off: int) -> None:
        """Bring a decode-batch member's counters to the batch's current step."""
        c = off + self._step
        r.num_computed_tokens = c
        r.num_output_tokens = c - r.num_prompt_tokens + 1
        r.num_blocks = -(-c // self._bs)

    def _unbatch(self) -> None:
        """Move every decode-batch member to the front of the tail (explicit scheduling)."""
        members = [self._leave(seq) for seq in list(self._batch)]
        self._tail[:0] = members

    def _promote(self) -> None:
        """Move decoding requests at the head of the tail into the decode batch."""
        tail = self._tail
        i = 0
        while i < len(tail) and self._is_decoding(tail[i]):
            self._join(tail[i])
            i += 1
        if i:
            del tail[:i]

    def _pop_stopped(self) -> list[Request]:
        """Remove decode-batch members that reached their stop step; schedule order."""
        stops, batch, step = self._stops, self._batch, self._step
        out = []
        while stops and stops[0][0] <= step:
            _, seq, _r = heapq.heappop(stops)
            if seq in batch:
                out.append(seq)
        if len(out) > 1:
            out.sort()
        return [self._leave(seq) for seq in out]

    # ---- one iteration --------------------------------------------------------------------
    def schedule(self, ready_by: float = INF) -> IterationPlan | None:
        """Build the next iteration (vLLM V1 order); None when there is nothing to run.

        Args:
            ready_by: admit only waiting requests that arrived by this time (async
                scheduling: the plan was made while the previous iteration ran). Arrivals
                are appended in time order and preempted requests (which arrived earlier)
                go to the front, so the requests not yet visible are a suffix of the queue.
        """
        if not self._batch and not self._tail and not self.waiting:
            return None
        plan = IterationPlan()
        budget = self.cfg.max_num_batched_tokens
        if self._batch:
            if len(self._batch) > budget:
                self._unbatch()  # the budget cuts the batch: schedule member by member
            else:
                budget = self._schedule_batch(plan, budget)
        if self._tail:
            budget = self._schedule_running(plan, budget)
        if not plan.num_preempted:
            self._schedule_waiting(plan, budget, ready_by)
        return plan if plan.reqs or plan.batch_seqs else None

    def _schedule_batch(self, plan: IterationPlan, budget: int) -> int:
        """Schedule one token for every decode-batch member (they come first in vLLM's order).

        The members whose next token starts a block (phase group ``(-step) mod block_size``)
        allocate one block each, in order; allocating them together evicts the same cache
        entries. When blocks run short, requests are preempted from the end of the running
        batch, exactly as member-by-member scheduling would.
        """
        kv = self.kv
        group = self._phase[-self._step % kv.block_size]
        need = len(group)
        if need:
            if need <= kv.num_blocks - kv.num_used:
                kv.allocate(need)
            else:
                self._schedule_batch_short(plan, group)
        batch = self._batch
        b = len(batch)
        if b:
            plan.batch_seqs = b
            plan.num_decode_seqs += b
            plan.decode_ctx_tokens += self._sum_offset + b * (self._step + 1)
            if self.record_batch_members:
                plan.batch_reqs = [r for r, _ in batch.values()]
        return budget - b

    def _schedule_batch_short(self, plan: IterationPlan, group: dict[int, Request]) -> None:
        """Blocks for ``group`` one member at a time, preempting from the end when short.

        Once the free blocks cover every member left, they take theirs in one allocation
        (which evicts the same cache entries, LRU first, as one block at a time would).
        """
        kv = self.kv
        batch, tail = self._batch, self._tail
        members = list(group)
        for i, seq in enumerate(members):
            if seq not in batch:
                return  # preempted as a victim: so was everything after it
            if kv.num_blocks - kv.num_used >= len(members) - i:
                rest = 1  # members from i on still in the batch (victims are a suffix)
                while i + rest < len(members) and members[i + rest] in batch:
                    rest += 1
                kv.allocate(rest)
                return
            while kv.num_blocks - kv.num_used < 1:
                plan.num_preempted += 1
                if tail:
                    self.preempt(tail.pop())
                    continue
                vseq = next(reversed(batch))
                self.preempt(self._leave(vseq))
                if vseq == seq:
                    return  # it preempted itself: scheduling stops (vLLM does the same)
            kv.allocate(1)

    def _schedule_running(self, plan: IterationPlan, budget: int) -> int:
        kv = self.kv
        bs = kv.block_size
        thr = self.cfg.long_prefill_token_threshold
        running = self._tail
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            c = r.num_computed_tokens
            out = r.num_output_tokens
            n = r.num_prompt_tokens + out - c
            if thr and n > thr:
                n = thr
            if n > budget:
                n = budget
            need = -(-(c + n) // bs) - r.num_blocks
            if need > 0:
                while need > kv.num_blocks - kv.num_used:
                    victim = running.pop()
                    self.preempt(victim)
                    plan.num_preempted += 1
                    if victim is r:
                        break
                else:
                    kv.allocate(need)
                    r.num_blocks += need
                if r.status != RequestStatus.RUNNING:
                    break  # r itself was preempted: stop scheduling (vLLM does the same)
            self._add(plan, r, n)
            budget -= n
            i += 1
        return budget

    def _schedule_waiting(self, plan: IterationPlan, budget: int, ready_by: float = INF) -> None:
        kv = self.kv
        cfg = self.cfg
        waiting = self.waiting
        bs = kv.block_size
        chunked = cfg.enable_chunked_prefill
        thr = cfg.long_prefill_token_threshold
        full_isl = cfg.scheduler_reserve_full_isl
        max_seqs = cfg.max_num_seqs
        batch, tail = self._batch, self._tail
        while (waiting and budget > 0
               and len(batch) + len(tail) + self.num_transfers_in < max_seqs):
            r = waiting[0]
            if r.arrival_s > ready_by:
                break  # arrived while the previous iteration ran (async scheduling)
            keys, hit, pinned = self._prefix_hit(r)
            c = r.num_computed_tokens
            start = c if c > hit else hit
            total = r.num_prompt_tokens + r.num_output_tokens
            n = total - start
            if not chunked and n > budget:
                break
            if thr and n > thr:
                n = thr
            if n > budget:
                n = budget
            held = r.num_blocks + hit // bs
            need = -(-(start + n) // bs) - held
            full = -(-total // bs) - held if full_isl else need
            # taking evictable cached blocks consumes free blocks too
            if (need if need >= full else full) + pinned > kv.num_blocks - kv.num_used:
                break
            if r.hashes is not None and not c:
                kv.num_query_tokens += r.num_prompt_tokens
                r.num_cached_prompt_tokens = 0
            if keys:
                self._take_prefix(r, keys, hit)
            if need > kv.num_blocks - kv.num_used - kv.num_evictable:
                kv.allocate(need)  # evicts cached entries
            else:
                kv.num_used += need  # (kv.allocate of empty blocks, inlined)
            r.num_blocks += need
            waiting.popleft()
            tail.append(r)
            r.status = RequestStatus.RUNNING
            self._add(plan, r, n)
            budget -= n

    def _prefix_hit(self, r: Request) -> tuple[tuple | range, int, int]:
        """Cached leading blocks of a not-yet-started request, without taking them.

        Returns:
            ``(keys, hit_tokens, evictable_blocks)``: the matching cache keys, the prompt
            tokens they cover, and how many of their blocks are evictable now (taking those
            uses free blocks).
        """
        kv = self.kv
        if (r.num_computed_tokens or r.num_blocks or not kv.enable_prefix_caching
                or (r.hashes is None and not r.num_preemptions)):
            return _NO_HIT  # nothing of it can be cached: no prompt hashes, no own blocks
        memo = self._hit_memo
        if (memo is not None and memo[0] is r and memo[1] == kv.version
                and memo[2] == r.num_preemptions and memo[3] == r.num_output_tokens):
            return memo[4]
        out = self._prefix_hit_now(r)
        self._hit_memo = (r, kv.version, r.num_preemptions, r.num_output_tokens, out)
        return out

    def _prefix_hit_now(self, r: Request) -> tuple[tuple | range, int, int]:
        """:meth:`_prefix_hit` computed from the cache (no memo)."""
        kv = self.kv
        h = kv.match_prefix(r.hashes, r.num_prompt_tokens) if r.hashes is not None else 0
        if h:
            keys: tuple | range = tuple(r.hashes[:h].tolist())  # type: ignore[index]
            first = h * kv.blocks_per_hash
            pinned = kv.evictable_blocks(keys)
        else:
            keys, first, pinned = (), 0, 0
        if r.num_preemptions and kv.enable_prefix_caching:
            limit = (r.num_tokens - 1) // kv.block_size - first  # recompute >= 1 token
            own = kv.match_own_blocks(r.rid, first, limit)
            if own:
                mine = self._own_keys(r.rid, first, own)
                keys = (*keys, *mine) if keys else mine
                first += own
                pinned += own  # a waiting request's own entries are unreferenced (evictable)
        if not keys:
            return _NO_HIT
        return keys, first * kv.block_size, pinned

    def _own_keys(self, rid: int, first: int, count: int) -> range:
        """``self_keys(rid, first, count)``, the same object while the query repeats.

        A waiting head is matched again and again; the same object keeps
        :meth:`KVCache.evictable_before`'s memo of the kept keys valid. (Without prompt
        hashes a request's cache keys are this ``range``: nothing per block is built.)
        """
        memo = self._own_keys_memo
        if memo[0] == rid and memo[1] == first and memo[2] == count:
            return memo[3]
        keys = self_keys(rid, first, count)
        self._own_keys_memo = (rid, first, count, keys)
        return keys

    def _take_prefix(self, r: Request, keys: tuple | range, hit: int) -> None:
        """Reference the cached prefix of an admitted request (skips its prefill)."""
        kv = self.kv
        kv.acquire(keys)
        kv.num_hit_tokens += hit
        r.shared_hashes = keys
        r.num_shared_blocks = hit // kv.block_size
        r.num_blocks = r.num_shared_blocks
        before = self.outstanding_prefill(r)
        r.num_computed_tokens = hit
        if not r.num_preemptions:
            r.num_cached_prompt_tokens = hit
        self.queued_prefill_tokens -= before - self.outstanding_prefill(r)

    @staticmethod
    def _add(plan: IterationPlan, r: Request, n: int) -> None:
        plan.reqs.append(r)
        plan.num_new.append(n)
        c = r.num_computed_tokens
        if n == 1 and r.num_output_tokens and c == r.num_tokens - 1:
            plan.num_decode_seqs += 1
            plan.decode_ctx_tokens += c + 1
        else:
            plan.num_prefill_tokens += n
            plan.num_prefill_seqs += 1
            plan.prefill_ctx_tokens += c
            plan.prefill_new_x_ctx += n * c
            plan.prefill_new_sq += n * n

    @staticmethod
    def outstanding_prefill(r: Request) -> int:
        """Tokens ``r`` must compute before it next samples, beyond a plain decode step."""
        total = r.num_prompt_tokens + r.num_output_tokens
        c = r.num_computed_tokens
        return total - c if (not r.num_output_tokens or c < total - 1) else 0

    def preempt(self, r: Request) -> None:
        """Evict a running request: free its blocks, requeue it first for recompute.

        With prefix caching its full private blocks stay cached (evictable) under per-request
        keys, so readmission can skip recomputing whatever was not evicted meanwhile.
        """
        kv = self.kv
        full = r.num_computed_tokens // kv.block_size
        kept = kv.cache_own_blocks(r.rid, r.num_shared_blocks, full)
        r.num_blocks -= kept
        self.release_blocks(r)
        self.queued_prefill_tokens -= self.outstanding_prefill(r)
        r.num_computed_tokens = 0
        r.num_preemptions += 1
        r.status = RequestStatus.WAITING
        self.waiting.appendleft(r)
        self.queued_prefill_tokens += r.num_tokens

    def release_blocks(self, r: Request) -> None:
        """Free ``r``'s private blocks and drop its prefix-cache references."""
        kv = self.kv
        kv.free(r.num_blocks - r.num_shared_blocks)
        if r.shared_hashes:
            kv.release(r.shared_hashes)
        r.num_blocks = 0
        r.num_shared_blocks = 0
        r.shared_hashes = ()

    def complete(self, plan: IterationPlan) -> list[Request]:
        """Apply a finished iteration: advance counters, sample tokens.

        Returns:
            Requests that sampled their last token on this instance (``stop_tokens``), in
            schedule order; they are removed from the running batch but keep their blocks
            (the caller frees them or hands them over).
        """
        kv = self.kv
        caching = kv.enable_prefix_caching
        if plan.batch_seqs:
            self._step += 1
            if self._register_pending:
                self._register_batch()
            stopped = self._pop_stopped() if self._stops[0][0] <= self._step else []
        else:
            stopped = []
        n_batch_stopped = len(stopped)
        queued = 0
        for r, n in zip(plan.reqs, plan.num_new, strict=True):
            out = r.num_output_tokens
            total = r.num_prompt_tokens + out
            c = r.num_computed_tokens
            if not out or c < total - 1:  # a prefill or recompute chunk: see outstanding_prefill
                c2 = c + n
                after = 0 if c2 >= total or (out and c2 == total - 1) else total - c2
                queued += total - c - after
            c += n
            r.num_computed_tokens = c
            if caching and r.hashes is not None:
                self._register(r)
            if c == total:
                r.num_output_tokens = out + 1
                if out + 1 >= r.stop_tokens:
                    stopped.append(r)
        self.queued_prefill_tokens -= queued
        n_tail_stopped = len(stopped) - n_batch_stopped
        if n_tail_stopped:
            tail = self._tail
            if n_tail_stopped == len(tail):
                tail.clear()  # every scheduled request is in the tail: all of it stopped
            else:
                drop = set(map(id, stopped[n_batch_stopped:]))
                tail[:] = [r for r in tail if id(r) not in drop]  # in place
        if self._tail:
            self._promote()
        return stopped

    def _register_batch(self) -> None:
        """Offer the decode-batch members' next prompt blocks to the prefix cache."""
        pending = self._register_pending
        for seq, r in list(pending.items()):
            self._register(r)
            if not self._can_register(r):
                del pending[seq]

    def register_prefix(self, r: Request) -> None:
        """Offer ``r``'s computed full prompt blocks to the prefix cache (after a KV hand-in)."""
        self._register(r)

    def _can_register(self, r: Request) -> bool:
        """Whether :meth:`_register` could still add prefix-cache entries for ``r``."""
        j = len(r.shared_hashes)
        if j and r.shared_hashes[-1] < 0:
            return False
        covered = min(r.num_computed_tokens, r.num_prompt_tokens) // self.kv.hash_block_tokens
        return j < covered and j < len(r.hashes)  # type: ignore[arg-type]

    def _registration_due(self) -> bool:
        """Whether a decode-batch member's next prompt hash can enter the cache now.

        Registration stops at the first hash already cached (by another request); it resumes
        once that entry is evicted, at the member's next single iteration. A decode run does
        not register, so it waits until no member's next hash is free. (A run with pending
        registrations never evicts, and a hand-in pulled meanwhile cuts it.)
        """
        refs = self.kv._refs
        for r in self._register_pending.values():
            if int(r.hashes[len(r.shared_hashes)]) not in refs:  # type: ignore[index]
                return True
        return False

    def _register(self, r: Request) -> None:
        kv = self.kv
        covered = min(r.num_computed_tokens, r.num_prompt_tokens) // kv.hash_block_tokens
        j = len(r.shared_hashes)
        if j and r.shared_hashes[-1] < 0:
            return  # readmitted on its own cached blocks: nothing left to share
        if j >= covered or j >= len(r.hashes):  # type: ignore[arg-type]
            return
        new = []
        for key in r.hashes[j:covered].tolist():  # type: ignore[index]
            if not kv.register(key):
                break
            new.append(key)
        if new:
            r.shared_hashes = (*r.shared_hashes, *new)
            r.num_shared_blocks += len(new) * kv.blocks_per_hash

    # ---- closed-form decode runs -----------------------------------------------------------
    def plan_decode_run(self, limit: int) -> int:
        """Plan and reserve a decode-only run; returns its length k (0: schedule normally).

        A run is possible when every running request decodes (the tail is empty) and nothing
        could join the batch (empty queue, no free sequence slot, or the head of the queue
        cannot get its blocks). k is bounded by ``limit``, by the first member to reach its
        stop token (top of the stop heap), and by empty blocks. The phase groups give how many
        sequences cross a block boundary at each of the next ``block_size`` iterations, so
        block counts of the run are O(1) afterwards (:meth:`run_new_blocks`).
        """
        batch = self._batch
        if self._tail or not batch:
            return 0
        if self._register_pending and self._registration_due():
            return 0  # one iteration registers it (runs do not), as one-by-one iterations do
        seqs = len(batch)
        budget = self.cfg.max_num_batched_tokens
        if seqs > budget:
            return 0
        step = self._step
        stops = self._stops
        while stops[0][1] not in batch:
            heapq.heappop(stops)
        k = stops[0][0] - step
        if k > limit:
            k = limit
        self.run_ctx_tokens = self._sum_offset + seqs * (step + 1)
        if k < 2:
            return 0
        kv = self.kv
        bs = kv.block_size
        hist = self._hist
        q = -step % bs
        # blocks the first two iterations add (the phase groups q and q - 1 mod bs)
        two = hist[q] + hist[q - 1] if bs > 2 else seqs * (2 // bs)
        if two > kv.num_blocks - kv.num_used:
            return 0  # not even two iterations fit, whatever is evicted (the usual case at
            # a full cache; checked before the waiting head, whose answer would not matter)
        self._head_keys = _NO_KEYS
        if (self.waiting and seqs + self.num_transfers_in < self.cfg.max_num_seqs
                and self._head_admissible(budget - seqs)):
            return 0
        # group sizes needing a new block at run iterations 0, 1, ..., bs - 1
        order = hist[q::-1] + hist[:q:-1]
        crossing = [0, *accumulate(order[:-1])]
        self._run_crossing = crossing
        self._run_seqs = seqs
        # Blocks: the empty ones are taken now; beyond them the run may evict cached entries,
        # which it does lazily (shrink_decode_run / finish_decode_run) so that exactly the
        # entries one-by-one iterations would have evicted by then are gone. Not while members
        # still offer prompt blocks to the cache (evictions would let them register). Evicting
        # prefix entries of the waiting queue's head shrinks its hit; with
        # scheduler_reserve_full_isl its admission test (whole sequence + pinned blocks <=
        # free) then only gets harder, so only without it are the head's entries kept.
        empty = kv.num_blocks - kv.num_used - kv.num_evictable
        cap = empty
        want = seqs * (k // bs) + crossing[k % bs]
        if want > empty and kv.num_evictable and not self._register_pending:
            keep = _NO_KEYS if self.cfg.scheduler_reserve_full_isl else self._head_keys
            cap += kv.evictable_before(want - empty, keep)
        if want > cap:
            k = min(k, (cap // seqs) * bs + bs - 1)
            while k > 0 and seqs * (k // bs) + crossing[k % bs] > cap:
                k -= 1
            if k < 2:
                return 0
            want = seqs * (k // bs) + crossing[k % bs]
        now = want if want <= empty else empty
        kv.num_used += now  # (kv.allocate of empty blocks: nothing to evict)
        self.run_owed_blocks = want - now
        return k
    def _head_admissible(self, budget: int) -> bool:
        """Whether the head of the waiting queue could be admitted now (no side effects)."""
        if budget <= 0:
            return False
        r = self.waiting[0]
        kv = self.kv
        cfg = self.cfg
        keys, hit, pinned = self._prefix_hit(r)
        self._head_keys = keys
        c = r.num_computed_tokens
        start = c if c > hit else hit
        total = r.num_prompt_tokens + r.num_output_tokens
        n = total - start
        if not cfg.enable_chunked_prefill and n > budget:
            return False
        thr = cfg.long_prefill_token_threshold
        if thr and n > thr:
            n = thr
        bs = kv.block_size
        held = r.num_blocks + hit // bs
        need = -(-(start + (n if n < budget else budget)) // bs) - held
        if cfg.scheduler_reserve_full_isl:
            full = -(-total // bs) - held
            if full > need:
                need = full
        return need + pinned <= kv.num_blocks - kv.num_used

    def run_new_blocks(self, j: int) -> int:
        """Blocks the current decode run's batch has added after ``j`` of its iterations."""
        bs = self.kv.block_size
        return self._run_seqs * (j // bs) + self._run_crossing[j % bs]

    def shrink_decode_run(self, planned: int, done: int) -> None:
        """Cut a run of ``planned`` iterations to ``done`` (``done <= planned``) and settle it.

        Afterwards the instance holds exactly the blocks of the ``done`` iterations: extra
        reserved ones are freed, owed ones taken (evicting cached entries, LRU first, as those
        iterations would have when run one by one). ``done == planned`` only settles.
        """
        held = self.run_new_blocks(planned) - self.run_owed_blocks
        target = self.run_new_blocks(done)
        self.run_owed_blocks = 0
        if target < held:
            self.kv.free(held - target)
        elif target > held:
            ok = self.kv.allocate(target - held)
            assert ok, "a decode run's blocks were taken meanwhile"

    def finish_decode_run(self, done: int) -> list[Request]:
        """Apply ``done`` reserved decode iterations; returns the requests that stopped."""
        if self.run_owed_blocks:
            ok = self.kv.allocate(self.run_owed_blocks)
            assert ok, "a decode run's blocks were taken meanwhile"
            self.run_owed_blocks = 0
        self._step += done
        if self._register_pending:
            # the run was planned when no member could register; an allocation pulled in
            # meanwhile (which cut the run to the iteration in flight) may have evicted the
            # entry a member waited on: its last iteration registers, as one-by-one would
            self._register_batch()
        if self._stops and self._stops[0][0] <= self._step:
            return self._pop_stopped()
        return []

    def decode_batch(self) -> tuple[int, int]:
        """``(num_seqs, attended context tokens)`` of the run planned last."""
        return self._run_seqs, self.run_ctx_tokens
