"""The cluster's discrete-event loop: the only clock in the simulator.

One heap of tuples ``(t_s, kind, seq, a, b)``; ``kind`` orders same-time events
(:class:`EventKind`): iteration ends and KV-transfer ends first, then arrivals (streamed from
the workload arrays by a cursor, never pushed), then scheduling of every instance that became
idle or received work at that time. ``seq`` comes from the simulator's own counter.

An instance runs one iteration at a time; with pipeline parallelism an iteration takes the
whole pipeline's latency (micro-batches of different requests overlapping in the stages are
not modelled, so PP throughput is conservative; a request can never get tokens faster than
one per pipeline latency).

Decode-only stretches run in closed form (:mod:`sim.engine.decode_run`): an instance whose
batch cannot change until its first member stops plans ``k`` iterations as one event. An
arrival or a KV hand-in routed to it cuts the run at the iteration in flight. A run takes its
KV blocks from the empty ones at once and, beyond them, evicts cached entries lazily: the run
is settled (its evictions applied, LRU first) when it ends or is cut, and before any other
change to that instance's KV cache (a release, a registration, a pulled hand-in), so the
cache always ends up as one-event-per-iteration simulation leaves it.

Async scheduling (``InstanceConfig.async_scheduling``, vLLM's ``--async-scheduling``): the
iteration that starts when iteration N ends was planned while N ran, so it admits only waiting
requests that arrived, and KV hand-ins that landed, by the start of N (a request preempted
while planning is requeued then, so it is visible to the next plan as without the option).
Running requests continue as usual. When that plan would be empty the engine idles and
schedules at once whatever is ready; an idle instance schedules an arrival at once. An arrival
during a decode run of such an instance cuts the run one iteration after the one in flight
when the run already holds that iteration's KV blocks (else after the one in flight, and the
next iteration is planned alone, without the arrival): no run is planned while something
waits to become visible, so fast-forward stays exact.

Inter-token gaps (vLLM's ITL, :meth:`Simulator.itl_gaps`; ``SimConfig.record_itl``) are kept
exactly and compactly. A token is sampled when an iteration ends, and an instance's iterations
run back to back, so a token whose request sampled its previous one as the iteration began
has that iteration's duration as its gap: a single iteration appends its duration and that
number of tokens, a decode run its line, length and batch size. The other gaps (a hand-over to
the Follow, a preemption's recompute, a token the budget held back, a decode-batch newcomer's
first token after one of these) are appended one by one. Explicitly scheduled requests are
checked per iteration against their last seen token (time and output count, per request);
decode-batch members only when they join (the batch's join numbers ascend) or leave it.
:meth:`Simulator.itl_parts` gives the record as kept; :class:`sim.engine.itl.InterTokenGaps`
summarises it without expanding it (:meth:`Simulator.itl_gaps` expands it, for small runs).

Use :meth:`Simulator.run` with a router, or drive it one arrival at a time (the Gymnasium
environment does): ``info = sim.next_arrival()`` runs to the next arrival and returns it,
``sim.view()`` snapshots the cluster, ``sim.route(decision)`` places it.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
from array import array
from collections import deque
from enum import IntEnum
from itertools import chain, compress
from operator import add, attrgetter, itemgetter
from typing import Any

import numpy as np

from sim.catalog import GpuSpec, ModelSpec
from sim.engine.config import ClusterConfig, SimConfig
from sim.engine.decode_run import DecodeLine, cum_time_s, iters_within
from sim.engine.links import Link
from sim.engine.placement import build_instances
from sim.instance import Instance, IterationPlan, Reason, Request, RequestStatus
from sim.routing import ClusterView, Decision, RequestInfo, make_request_info
from sim.workload import Workload

logger = logging.getLogger(__name__)
INF = float("inf")
_QUEUED = attrgetter("queued_prefill_tokens")
_TRANSFERS_IN = attrgetter("num_transfers_in")
_TRANSFERS_OUT = attrgetter("num_transfers_out")
RUN_LIMIT = 1 << 30
RUNS_PACKED = 1 << 14
"""Decode runs recorded (for inter-token gaps) before they are packed into arrays."""
_RUN_LINE, _RUN_INTS = itemgetter(0), itemgetter(1, 2, 3)
_DISCARD: Any = deque(maxlen=0).append
"""Takes an item and keeps nothing (decode runs when inter-token gaps are not recorded)."""
RUNNING = RequestStatus.RUNNING
TRANSFERRING = RequestStatus.TRANSFERRING
_decode_line = tuple.__new__
"""``_decode_line(DecodeLine, values)``: a DecodeLine of four values (no argument parsing)."""


class EventKind(IntEnum):
    """Same-time order: completions first, then arrivals, then scheduling."""

    ITERATION_END = 0
    TRANSFER_END = 1


ITERATION_END = int(EventKind.ITERATION_END)
TRANSFER_END = int(EventKind.TRANSFER_END)


class _Op:
    """What an instance is executing: one planned iteration, or a decode run of k iterations."""

    __slots__ = ("plan", "k_done", "line", "start_s", "end_s", "version", "last_start_s",
                 "itl_w")

    def __init__(self) -> None:
        self.plan: IterationPlan | None = None
        self.k_done = 0
        self.line: DecodeLine | None = None
        self.start_s = 0.0
        self.end_s = 0.0
        self.version = 0
        self.last_start_s = 0.0
        """Start of its last iteration (async-scheduling instances only)."""
        self.itl_w = 0
        """Tokens its (first) iteration samples whose gap is that iteration's duration."""


class Simulator:
    """A cluster of vLLM-like instances serving one workload."""

    def __init__(
        self,
        model: ModelSpec,
        gpu: GpuSpec,
        cluster: ClusterConfig,
        sim: SimConfig,
        workload: Workload,
        router=None,
        rng: np.random.Generator | None = None,
    ) -> None:
        """Build instances, KV caches and links.

        Args:
            model: the model every instance serves.
            gpu: the GPU type of the cluster.
            cluster: nodes and instances.
            sim: backend and run options.
            workload: the requests (arrays).
            router: ``(ClusterView, RequestInfo) -> Decision``; needed by :meth:`run`.
            rng: randomness for the output-length prediction noise.
        """
        self.model, self.gpu, self.cluster_cfg, self.cfg = model, gpu, cluster, sim
        self.workload = workload
        self.router = router
        built = build_instances(model, gpu, cluster, sim, workload.hash_block_tokens)
        self.instances: list[Instance] = built.instances
        self.backends = built.backends
        self.nodes = built.nodes
        self._link_spec = built.link_bandwidth
        self._ops = [_Op() for _ in self.instances]
        self._links: dict[tuple[int, int], Link] = {}
        self._link_list: list[Link] = []
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self._check = sim.check_invariants
        self._ff = sim.fast_forward
        insts = self.instances
        self._async = [i.cfg.async_scheduling for i in insts]
        """Instances that plan an iteration while the previous one runs (async scheduling)."""
        self._q_waiting = [i.waiting for i in insts]
        self._q_batch = [i._batch for i in insts]
        self._q_tail = [i._tail for i in insts]
        self._q_pending = [i.pending_kv for i in insts]
        self._view_fields: dict[str, Any] = {
            "num_waiting": self._num_waiting,
            "num_running": self._num_running,
            "queued_prefill_tokens": self._queued_prefill,
            "kv_used_blocks": self._kv_used_all,
            "num_transfers_in": self._num_transfers_in,
            "num_transfers_out": self._num_transfers_out,
        }
        self._view_static: dict = {}
        """Per-role answers cached by the views (roles and KV totals never change)."""
        self._block_size = insts[0].kv.block_size
        self._kv_bytes_per_token = model.kv_bytes_per_token
        self._dirty: set[int] = set()
        self._pull_blocked: list[tuple | None] = [None] * len(insts)
        """Per instance, the state in which its hand-in queue's head last could not be pulled
        (see _try_pull)."""
        self._idle_check = False
        """Whether an event ran since the event heap last emptied (hand-over cycle check)."""
        self._roles_t = self._roles  # builds the role/KV caches once (static)
        self.now_s = 0.0
        self._cursor = 0
        n = len(workload)
        self.requests: list[Request | None] = [None] * n
        self._pending: Request | None = None
        # vLLM caps max_model_len at max_num_batched_tokens when chunked prefill is off
        self._inst_max_len = [
            min(model.max_position_embeddings, i.cfg.max_model_len or 1 << 62,
                (1 << 62) if i.cfg.enable_chunked_prefill else i.cfg.max_num_batched_tokens)
            for i in self.instances
        ]
        self._capacity_tokens = [i.capacity_tokens for i in self.instances]
        """KV capacity of each instance, tokens (static)."""
        out = workload.output_tokens
        cv = sim.output_prediction_cv
        if cv > 0:
            rng = rng or np.random.default_rng(0)
            noise = rng.lognormal(-0.5 * np.log1p(cv * cv), np.sqrt(np.log1p(cv * cv)), n)
            self.predicted_output = np.maximum(1, np.rint(out * noise)).astype(np.int64)
        else:
            self.predicted_output = out.astype(np.int64)
        self._arrivals = workload.arrival_s.tolist()
        self._prompts = workload.prompt_tokens.tolist()
        self._outputs = workload.output_tokens.tolist()
        self._predicted = self.predicted_output.tolist()
        self.num_events = 0
        self.num_iterations = 0
        self.num_runs = 0
        self.finished = False
        # inter-token gaps (see itl_gaps)
        self._itl = sim.record_itl
        self._tok_t = [0.0] * n
        """Per request: when its last explicitly seen token was sampled, seconds. A decode
        batch member's later tokens are implicit (its instance's iterations)."""
        self._tok_n = [0] * n
        """Per request: its output count at that token (< num_output_tokens once a decode
        batch sampled more)."""
        self._itl_dts = array("d")
        """Single iterations that sampled regular tokens: duration, seconds ..."""
        self._itl_ws = array("q")
        """... and how many tokens had that duration as their gap."""
        self._itl_runs: list[tuple] = []
        """Decode runs not yet packed: ``(line, k, seqs, weight of the first iteration)``."""
        self._itl_run_chunks: list[tuple[np.ndarray, np.ndarray]] = []
        """Packed decode runs: lines ``(m, 4)`` float64 and ``(k, seqs, weight)`` ``(m, 3)``
        int64 (see _pack_runs)."""
        self._itl_irr = array("d")
        """Every other gap (hand-over, recompute, starved by the token budget), seconds."""
        self._itl_seen = [0] * len(insts)
        self._itl_odd = [False] * len(insts)
        self._on_sampled = self._sampled if self._itl else self._first_tokens
        self._on_run = self._itl_runs.append if self._itl else _DISCARD
        """Per instance: a request may have joined the decode batch without sampling when its
        last iteration ended (a hand-in, one the budget held back, a recompute chunk); until
        newcomers are checked every one of them is taken to have sampled then."""
        """Per instance: decode-batch join numbers below this already ran an iteration there
        (or left): the members whose gaps are their instance's iteration durations."""

    # ---- public driving API ----------------------------------------------------------------
    def run(self) -> list[Request]:
        """Simulate the whole workload with ``self.router``; returns every entered request.

        Python's cyclic garbage collector is paused while it runs (and restored after): the
        simulation creates no reference cycles worth collecting, and with a million live
        requests the collector's full passes cost several percent of the run.
        """
        if self.router is None:
            raise ValueError("Simulator.run needs a router; pass router=... or drive it with "
                             "next_arrival()/route()")
        if hasattr(self.router, "reset"):
            self.router.reset()
        router = self.router
        next_arrival, view, route = self.next_arrival, self.view, self.route
        paused = gc.isenabled()
        gc.disable()
        try:
            while (info := next_arrival()) is not None:
                route(router(view(), info))
        finally:
            if paused:
                gc.enable()
        return self.entered_requests()

    def next_arrival(self) -> RequestInfo | None:
        """Advance to the next arrival and return it (None when the workload is done)."""
        if self._pending is not None:
            raise RuntimeError("route() the pending arrival before asking for the next one")
        heap = self._heap
        arrivals = self._arrivals
        limit = self.cfg.time_limit_s or INF
        dirty = self._dirty
        ops = self._ops
        insts = self.instances
        heappop = heapq.heappop
        on_stop = self._on_stop
        sampled, runs_append = self._on_sampled, self._on_run
        dts_append, ws_append = self._itl_dts.append, self._itl_ws.append
        # the next arrival's time is fixed until this call returns it
        t_arr = arrivals[self._cursor] if self._cursor < len(arrivals) else INF
        while True:
            t_heap = heap[0][0] if heap else INF
            if dirty and (t_heap if t_heap <= t_arr else t_arr) > self.now_s:
                # every event and arrival of this instant is in: schedule what changed
                self._schedule_dirty()
                continue
            if not heap and self._idle_check and self._mark_stuck_handovers():
                continue
            if t_heap <= t_arr:  # the next event (same as _pop_event, inlined)
                if t_heap == INF or t_heap > limit:
                    self._finish(limit)
                    return None
                t, kind, _, a, b = heappop(heap)
                self.now_s = t
                self.num_events += 1
                self._idle_check = True
                if kind == ITERATION_END:
                    op = ops[a]
                    if b == op.version:  # else a cut run re-pushed its end
                        # _on_iteration_end, inlined (the hottest path)
                        inst = insts[a]
                        inst.busy = False
                        plan = op.plan
                        if plan is not None:
                            stopped = inst.complete(plan)
                            if plan.reqs:
                                sampled(a, op, plan.reqs, t)
                            elif op.itl_w:  # decode-batch tokens only
                                dts_append(t - op.start_s)
                                ws_append(op.itl_w)
                            self.num_iterations += 1
                            op.plan = None
                        else:
                            k = op.k_done
                            stopped = inst.finish_decode_run(k)
                            self.num_iterations += k
                            runs_append((op.line, k, inst._run_seqs, op.itl_w))
                            op.line = None
                        for r in stopped:
                            on_stop(inst, r, t)
                        dirty.add(a)
                else:
                    self._on_transfer_end(a, b)
                if self._check:
                    self.check_invariants()
                continue
            if t_arr == INF or t_arr > limit:
                self._finish(limit)
                return None
            self.now_s = t_arr
            return self._admit_arrival()

    def _mark_stuck_handovers(self) -> bool:
        """Nothing is in flight anywhere: mark instances stuck in a hand-over cycle dirty.

        No block will be freed before the next arrival then. An idle instance holding KV for
        another Follow while it cannot pull its own hand-ins is stuck for good (a hand-over
        cycle): starting it makes it keep one of its shares (_cancel_stuck_handover). Checked
        once per idle spell; returns whether any instance was marked.
        """
        self._idle_check = False
        stuck = [inst.index for inst in self.instances
                 if not inst.busy and inst.pending_kv and inst.awaiting_out]
        self._dirty.update(stuck)
        return bool(stuck)

    def view(self) -> ClusterView:
        """Snapshot of per-instance load now (arrays of shape ``(n_instances,)``, lazy)."""
        roles = self._roles_t
        values = self._view_fields.copy()
        values["kv_total_blocks"] = self._kv_total
        return ClusterView._trusted(self.now_s, roles, self._block_size, self._role_index,
                                    values, self._view_static)

    # lazy view fields (read now, when the router first asks for them); map() over the
    # instances' own queues and counters keeps a 64-instance field at a few microseconds
    def _num_waiting(self) -> list[int]:
        return list(map(len, self._q_waiting))

    def _num_running(self) -> list[int]:
        out = list(map(len, self._q_batch))
        tails = self._q_tail
        for i in compress(range(len(tails)), tails):  # the few instances with a tail
            out[i] += len(tails[i])
        return out

    def _queued_prefill(self) -> list[int]:
        return list(map(_QUEUED, self.instances))

    def _kv_used_all(self) -> list[int]:
        """:meth:`_kv_used` of every instance (inlined: routers read it at every arrival)."""
        out = []
        now = self.now_s
        for inst, op in zip(self.instances, self._ops, strict=True):
            used = inst.kv.num_used
            line = op.line
            if line is not None and inst.busy:
                used += inst.run_owed_blocks
                j = iters_within(line, now - op.start_s) + 1
                k = op.k_done
                if j < k:
                    bs = inst.kv.block_size
                    seqs, crossing = inst._run_seqs, inst._run_crossing
                    used -= (seqs * (k // bs) + crossing[k % bs]
                             - seqs * (j // bs) - crossing[j % bs])
            out.append(used)
        return out

    def _num_transfers_in(self) -> list[int]:
        return list(map(add, map(_TRANSFERS_IN, self.instances), map(len, self._q_pending)))

    def _num_transfers_out(self) -> list[int]:
        return list(map(_TRANSFERS_OUT, self.instances))

    def _kv_used(self, idx: int) -> int:
        """KV blocks in use now; a decode run counts only the iterations begun so far."""
        inst = self.instances[idx]
        op = self._ops[idx]
        if op.line is None or not inst.busy:
            return inst.kv.num_used
        j = iters_within(op.line, self.now_s - op.start_s) + 1
        used = inst.kv.num_used + inst.run_owed_blocks  # as if the run took all its blocks
        if j >= op.k_done:
            return used
        return used - (inst.run_new_blocks(op.k_done) - inst.run_new_blocks(j))

    def route(self, decision: Decision) -> Request:
        """Place the pending arrival according to ``decision`` (or reject it, counted)."""
        r = self._pending
        if r is None:
            raise RuntimeError("no pending arrival: call next_arrival() first")
        self._pending = None
        reason = self._check_decision(r, decision)
        if reason:  # Reason.NONE is 0
            self._terminate(r, RequestStatus.REJECTED, reason)
            return r
        inst = self.instances[r.lead]
        r.stop_tokens = r.split_tokens
        inst.enqueue(r)
        if inst.busy and self._async[r.lead]:
            self._cut(r.lead, arrival=True)
        else:
            self._touch(r.lead)
        return r

    def _pack_runs(self) -> None:
        """Move the recorded decode runs into compact arrays (56 bytes a run, no objects)."""
        runs = self._itl_runs
        if runs:
            m = len(runs)
            self._itl_run_chunks.append((
                np.fromiter(chain.from_iterable(map(_RUN_LINE, runs)), np.float64, 4 * m)
                .reshape(m, 4),
                np.fromiter(chain.from_iterable(map(_RUN_INTS, runs)), np.int64, 3 * m)
                .reshape(m, 3)))
            runs.clear()

    def itl_parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The inter-token gaps sampled so far, as recorded (compact; see :meth:`itl_gaps`).

        Needs ``SimConfig.record_itl``. Memory is O(iterations run one by one + decode runs +
        irregular gaps), not O(tokens).

        Returns:
            ``(values_s, counts, run_lines, run_ints)``:

            - ``values_s`` ``(n,) float64`` and ``counts`` ``(n,) int64``: single gaps,
              seconds, each occurring ``counts`` times (``counts >= 0``; 0 means none);
            - ``run_lines`` ``(m, 4) float64``: per decode run its
              :class:`~sim.engine.decode_run.DecodeLine` ``(a_s, slope_s, floor_s, const_s)``:
              iteration ``j`` (0-based) lasted ``max(floor_s, a_s + slope_s * j) + const_s``;
            - ``run_ints`` ``(m, 3) int64``: per decode run ``(k, seqs, first)``: its
              iterations, the gaps each of iterations ``1..k-1`` ends (its batch size) and the
              gaps its first iteration ends.
        """
        if not self._itl:
            raise RuntimeError("inter-token gaps were not recorded: set SimConfig.record_itl")
        values = np.concatenate([np.array(self._itl_dts, np.float64),
                                 np.array(self._itl_irr, np.float64)])
        counts = np.concatenate([np.array(self._itl_ws, np.int64),
                                 np.ones(len(self._itl_irr), np.int64)])
        self._pack_runs()
        if self._itl_run_chunks:
            lines = np.concatenate([x[0] for x in self._itl_run_chunks])
            ints = np.concatenate([x[1] for x in self._itl_run_chunks])
        else:
            lines, ints = np.zeros((0, 4), np.float64), np.zeros((0, 3), np.int64)
        return values, counts, lines, ints

    def itl_gaps(self) -> tuple[np.ndarray, np.ndarray]:
        """Every inter-token gap sampled so far, pooled over requests (vLLM's ITL), expanded.

        A gap is the time between two consecutive output tokens of one request. A running
        request samples at the end of each iteration of its instance, and iterations run back
        to back, so most gaps are iteration durations: a single iteration is recorded once
        with the number of tokens whose gap it is, a decode run of ``k`` iterations of ``n``
        sequences as its line (``k`` durations, each ``n`` times). The others are recorded
        one by one: output ``split + 1`` on the Follow (KV transfer, waiting for blocks, a
        planned-ahead iteration under async scheduling), the token after a preemption's
        recompute, a token the budget held back an iteration or more. Gaps of requests the
        time limit failed are included (without a time limit every gap is a completed
        request's). Expanded here (one value per iteration, vectorised) from
        :meth:`itl_parts`. Needs ``SimConfig.record_itl``.

        Returns:
            ``(gaps_s, counts)``: distinct-ish gap values, seconds, and how many times each
            occurs (int64, > 0); ``counts.sum()`` gaps in all.
        """
        v0, w0, lines, ints = self.itl_parts()
        vals, cnts = [v0], [w0]
        if len(lines):
            a, s, f, c = lines.T
            k, seqs, first = ints.T
            run = np.repeat(np.arange(k.size), k)
            starts = np.cumsum(k) - k
            j = np.arange(run.size, dtype=np.int64) - starts[run]
            # t_j = max(floor, a + slope * j) + const (DecodeLine), as the run timed it
            vals.append(np.maximum(f[run], a[run] + s[run] * j) + c[run])
            w = seqs[run]
            w[starts] = first
            cnts.append(w)
        v, w = np.concatenate(vals), np.concatenate(cnts)
        keep = w > 0
        return v[keep], w[keep]

    def entered_requests(self) -> list[Request]:
        """Requests that arrived (in arrival order)."""
        return list(filter(None, self.requests[: self._cursor]))  # (a Request is truthy)

    @property
    def num_entered(self) -> int:
        """Arrivals so far."""
        return self._cursor

    # ---- arrivals and decisions ---------------------------------------------------------------
    @property
    def _roles(self) -> tuple[str, ...]:
        roles = getattr(self, "_roles_cache", None)
        if roles is None:
            roles = tuple(i.cfg.role for i in self.instances)
            self._roles_cache = roles
            self._kv_total = np.array([i.kv.num_blocks for i in self.instances], np.int64)
            self._kv_total.setflags(write=False)
            self._role_index = {}
            for role in set(roles):
                arr = np.array([k for k, r in enumerate(roles) if r == role], dtype=np.int64)
                arr.setflags(write=False)
                self._role_index[role] = arr
        return roles

    def _admit_arrival(self) -> RequestInfo:
        i = self._cursor
        self._cursor += 1
        w = self.workload
        hashes = None
        if w.hash_offsets is not None:
            hashes = w.hash_ids[w.hash_offsets[i]: w.hash_offsets[i + 1]]  # type: ignore[index]
        r = Request(i, self._arrivals[i], self._prompts[i], self._outputs[i], hashes)
        self.requests[i] = r
        if len(self._itl_runs) >= RUNS_PACKED:
            self._pack_runs()
        self._pending = r
        return make_request_info(i, r.arrival_s, r.num_prompt_tokens, self._predicted[i])

    def _check_decision(self, r: Request, d: Decision) -> Reason:
        n = len(self.instances)
        if d.reject:
            return Reason.ROUTER_REJECTED
        lead, follow, split = int(d.lead), int(d.follow), int(d.split_tokens)
        if not (0 <= lead < n and 0 <= follow < n) or split < 1:
            logger.debug("invalid decision %s for request %d", d, r.rid)
            return Reason.INVALID_DECISION
        out = r.max_output_tokens
        if follow == lead or split >= out:
            follow, split = lead, out
        r.lead, r.follow, r.split_tokens = lead, follow, split
        total = r.num_prompt_tokens + out
        max_len = self._inst_max_len
        if total > max_len[lead] or total > max_len[follow]:
            return Reason.PROMPT_EXCEEDS_MAX_MODEL_LEN
        capacity = self._capacity_tokens
        if r.num_prompt_tokens + split > capacity[lead]:
            return Reason.PROMPT_EXCEEDS_KV_CAPACITY
        if total > capacity[follow]:
            return Reason.FOLLOW_CANNOT_HOLD_KV
        return Reason.NONE

    def _terminate(self, r: Request, status: RequestStatus, reason: Reason) -> None:
        r.status = status
        r.reason = reason
        r.finish_s = self.now_s

    # ---- events ----------------------------------------------------------------------------
    def _push(self, t: float, kind: int, a: int, b: int) -> None:
        heapq.heappush(self._heap, (t, kind, next(self._seq), a, b))

    def _pop_event(self) -> None:
        t, kind, _, a, b = heapq.heappop(self._heap)
        self.now_s = t
        self.num_events += 1
        self._idle_check = True
        if kind == ITERATION_END:
            self._on_iteration_end(a, b)
        else:
            self._on_transfer_end(a, b)
        if self._check:
            self.check_invariants()

    def _touch(self, idx: int) -> None:
        """Work arrived at instance ``idx``: schedule it now, or cut its decode run."""
        if not self.instances[idx].busy:
            self._dirty.add(idx)
            return
        self._cut(idx)

    def _cut(self, idx: int, arrival: bool = False) -> None:
        """End a decode run after the iteration in flight; free blocks reserved beyond it.

        ``arrival``: the cut is for a request that arrived at an async-scheduling instance.
        It is first scheduled into the iteration after the next one, so the run keeps the
        next iteration too when it already holds that iteration's blocks (no evictions owed
        for it); otherwise the run ends after the iteration in flight and the next iteration
        is planned alone (the arrival is not visible to it), which gives the same result.
        """
        op = self._ops[idx]
        if op.line is None:
            return
        inst = self.instances[idx]
        if op.k_done <= 1:
            if inst.run_owed_blocks:
                inst.shrink_decode_run(op.k_done, op.k_done)  # settle its evictions now
            return
        done = iters_within(op.line, self.now_s - op.start_s) + 1  # include the one in flight
        if arrival and done < op.k_done and (
                inst.run_new_blocks(done + 1)
                <= inst.run_new_blocks(op.k_done) - inst.run_owed_blocks):
            done += 1
            if done == op.k_done:
                return  # the run ends there anyway (and owes no evictions: checked above)
        if done < op.k_done:
            inst.shrink_decode_run(op.k_done, done)
            op.k_done = done
            op.end_s = op.start_s + cum_time_s(op.line, done)
            if self._async[idx]:
                op.last_start_s = op.start_s + cum_time_s(op.line, done - 1)
            op.version = v = op.version + 1
            heapq.heappush(self._heap, (op.end_s, ITERATION_END, next(self._seq), idx, v))
        elif inst.run_owed_blocks:
            inst.shrink_decode_run(op.k_done, op.k_done)  # settle its evictions now

    def _schedule_dirty(self) -> None:
        dirty = self._dirty
        insts = self.instances
        if len(dirty) == 1:
            idx = dirty.pop()
            inst = insts[idx]
            if not inst.busy and (inst._batch or inst._tail or inst.waiting or inst.ready_kv
                                  or inst.pending_kv):
                self._start(idx)
            return
        order = sorted(dirty)
        dirty.clear()
        for idx in order:
            inst = insts[idx]
            # an idle instance with nothing queued, running or handed in has nothing to start
            if not inst.busy and (inst._batch or inst._tail or inst.waiting or inst.ready_kv
                                  or inst.pending_kv):
                self._start(idx)

    def _start(self, idx: int) -> None:
        """Start instance ``idx``'s next iteration or decode run (it is idle)."""
        inst = self.instances[idx]
        op = self._ops[idx]
        if self._async[idx] and op.version and op.end_s == self.now_s:
            # async scheduling, the instance was busy until now: this iteration was planned
            # while the last one ran, so it sees only what was ready when that one started
            self._start_planned_ahead(idx, op.last_start_s)
            return
        ready = inst.ready_kv
        if ready:
            for r in ready:
                r.status = RUNNING
                inst.add_running(r)
            inst.num_transfers_in -= len(ready)
            ready.clear()
            self._itl_odd[idx] = True  # hand-ins: their next gap is irregular
        pending = inst.pending_kv
        # (the test _try_pull starts with, for an idle instance: a free slot and the blocks)
        if pending and (len(inst._batch) + len(inst._tail) + inst.num_transfers_in
                        < inst.cfg.max_num_seqs) and (
                -(-pending[0].num_computed_tokens // inst._bs)
                <= inst.kv.num_blocks - inst.kv.num_used):
            self._try_pull(inst)
        if self._ff and inst._batch and not inst._tail:
            k = inst.plan_decode_run(RUN_LIMIT)
            if k:
                self._begin_run(idx, inst, op, k)
                return
        plan = inst.schedule()
        if plan is None:
            if self._itl:
                self._itl_preempted(inst)
            plan = self._schedule_after_stuck_handover(inst)
            if plan is None:
                return
        self._begin_iteration(idx, inst, op, plan)

    def _start_planned_ahead(self, idx: int, ready_by: float) -> None:
        """:meth:`_start` of an async-scheduling instance whose last iteration ends now.

        Hand-ins that landed and requests that arrived after ``ready_by`` (the start of the
        iteration that just ended) are deferred to the iteration after this one.
        """
        inst = self.instances[idx]
        op = self._ops[idx]
        ready = inst.ready_kv
        if ready:
            self._join_ready(inst, ready_by)
            self._itl_odd[idx] = True  # hand-ins: their next gap is irregular
        if inst.pending_kv:
            self._try_pull(inst)
        deferred = bool(ready or (inst.waiting and inst.waiting[-1].arrival_s > ready_by))
        if self._ff and inst._batch and not inst._tail and not deferred:
            k = inst.plan_decode_run(RUN_LIMIT)
            if k:
                self._begin_run(idx, inst, op, k)
                return
        plan = inst.schedule(ready_by) if deferred else inst.schedule()
        if plan is None and self._itl:
            self._itl_preempted(inst)
        if plan is None and deferred:
            # the iteration would be empty: the engine idles and schedules at once what
            # became ready while the last iteration ran
            self._join_ready(inst, INF)
            self._itl_odd[idx] = True
            plan = inst.schedule()
        if plan is None:
            plan = self._schedule_after_stuck_handover(inst)
            if plan is None:
                return
        self._begin_iteration(idx, inst, op, plan)

    def _begin_run(self, idx: int, inst: Instance, op: _Op, k: int) -> None:
        """Start the decode run of ``k`` iterations that ``inst`` just planned."""
        now = self.now_s
        # Python floats (a backend may give numpy scalars: same values, but the clock and
        # every event time derived from them would then be slow numpy arithmetic)
        line = _decode_line(DecodeLine, map(float, self.backends[idx].decode_line(
            inst._run_seqs, inst.run_ctx_tokens)))
        op.plan = None
        op.line = line
        op.k_done = k
        op.start_s = now
        op.end_s = end = now + cum_time_s(line, k)
        op.itl_w = inst._run_seqs
        if self._itl and inst._joins != self._itl_seen[idx]:  # (see _begin_iteration)
            if self._itl_odd[idx]:
                op.itl_w -= self._itl_joined(idx, inst, now + cum_time_s(line, 1))
            else:
                self._itl_seen[idx] = inst._joins
        if self._async[idx]:
            op.last_start_s = now + cum_time_s(line, k - 1)
        inst.busy = True
        op.version = v = op.version + 1
        heapq.heappush(self._heap, (end, ITERATION_END, next(self._seq), idx, v))
        self.num_runs += 1

    def _begin_iteration(self, idx: int, inst: Instance, op: _Op, plan) -> None:
        """Start one planned iteration of ``inst``."""
        now = self.now_s
        for r in plan.reqs:
            if r.first_scheduled_s < 0:
                r.first_scheduled_s = now
        dt = float(self.backends[idx].iteration_time_s(  # (a Python float: see _begin_run)
            plan.num_prefill_tokens, plan.num_prefill_seqs, plan.prefill_ctx_tokens,
            plan.prefill_new_x_ctx, plan.prefill_new_sq, plan.num_decode_seqs,
            plan.decode_ctx_tokens))
        op.plan = plan
        op.line = None
        op.start_s = op.last_start_s = now
        op.end_s = end = now + dt
        # inter-token gaps: the decode batch's members that ran the last iteration here
        # sample with a gap of this iteration's duration; newcomers and requests that left
        # the batch now are settled here (see itl_gaps)
        if self._itl:
            b = plan.batch_seqs
            if b and inst._joins != self._itl_seen[idx]:
                if self._itl_odd[idx]:  # a newcomer may not have sampled as this one started
                    b -= self._itl_joined(idx, inst, end)
                else:
                    self._itl_seen[idx] = inst._joins
            op.itl_w = b
            if plan.num_preempted or len(inst._tail) > len(plan.reqs):
                self._itl_left_batch(idx, inst, plan)
        inst.busy = True
        op.version = v = op.version + 1
        heapq.heappush(self._heap, (end, ITERATION_END, next(self._seq), idx, v))

    @staticmethod
    def _first_tokens(idx: int, op: _Op, reqs: list[Request], t: float) -> None:
        """:meth:`_sampled` without inter-token gaps (``SimConfig.record_itl`` off)."""
        for r in reqs:
            if r.num_output_tokens == 1 and r.first_token_s < 0:
                r.first_token_s = t

    def _sampled(self, idx: int, op: _Op, reqs: list[Request], t: float) -> None:
        """After a single iteration ending at ``t``: first-token times and inter-token gaps.

        A request of ``reqs`` (the plan's explicitly scheduled ones) sampled a token when its
        output count moved. Its gap is the iteration's duration when its last token was
        sampled as the iteration started (or it left the decode batch then: its count moved
        by more than one), else an irregular gap is recorded. The iteration's duration is
        recorded once, with the number of tokens it is the gap of.
        """
        tok_t, tok_n = self._tok_t, self._tok_n
        w = op.itl_w
        start = op.start_s
        for r in reqs:
            out = r.num_output_tokens
            rid = r.rid
            if out != tok_n[rid]:
                if out == 1:
                    r.first_token_s = t
                else:
                    prev = tok_t[rid]
                    if prev == start or out - tok_n[rid] > 1:
                        w += 1
                    else:
                        self._itl_irr.append(t - prev)
                tok_t[rid] = t
                tok_n[rid] = out
            elif out:  # a recompute chunk: it may join the decode batch without sampling
                self._itl_odd[idx] = True
        if w:
            self._itl_dts.append(t - start)
            self._itl_ws.append(w)

    def _itl_joined(self, idx: int, inst: Instance, first_end_s: float) -> int:
        """Settle the decode batch's newcomers on ``inst`` as its next iteration starts.

        A newcomer whose last token was not sampled when the last iteration here ended (now)
        gets an irregular gap, ending at ``first_end_s`` (end of the first iteration).

        Returns:
            How many newcomers got one (the rest sample with the iteration's duration).
        """
        seen = self._itl_seen[idx]
        self._itl_seen[idx] = inst._joins
        self._itl_odd[idx] = False
        batch = inst._batch
        now = self.now_s
        tok_t = self._tok_t
        n = 0
        for seq in reversed(batch):  # join numbers ascend: newcomers are the last entries
            if seq < seen:
                break
            prev = tok_t[batch[seq][0].rid]
            if prev != now:
                self._itl_irr.append(first_end_s - prev)
                n += 1
        return n

    def _itl_left_batch(self, idx: int, inst: Instance, plan) -> None:
        """Requests that left the decode batch while ``plan`` was built, not sampling in it.

        Preempted ones (the first ``num_preempted`` of the queue) and those the token budget
        left out (the running tail behind ``plan.reqs``) sampled their last token when the
        last iteration here ended (now) if they ran in the batch since their last explicit
        token.
        """
        left = list(itertools.islice(inst.waiting, plan.num_preempted))
        held = inst._tail[len(plan.reqs):]
        if held:
            self._itl_odd[idx] = True  # they may join the decode batch without sampling
        self._itl_left(left + held)

    def _itl_preempted(self, inst: Instance) -> None:
        """A plan came out empty: any running request it had was preempted.

        The victims went to the front of the queue in reverse running order, so the decode
        batch's members that already sampled there (its oldest, preempted last) come first:
        they are exactly the leading requests whose output count moved since their last
        explicit token (every other queued request's was settled when it was preempted).
        """
        tok_t, tok_n = self._tok_t, self._tok_n
        now = self.now_s
        for r in inst.waiting:
            out = r.num_output_tokens
            if out == tok_n[r.rid]:
                return
            tok_t[r.rid] = now
            tok_n[r.rid] = out

    def _itl_left(self, reqs) -> None:
        """Settle the last token of requests that just left a decode batch (or never joined).

        One that sampled in the batch since its last explicit token sampled its last token
        when the last iteration here ended (now).
        """
        tok_t, tok_n = self._tok_t, self._tok_n
        now = self.now_s
        for r in reqs:
            out = r.num_output_tokens
            if out != tok_n[r.rid]:
                tok_t[r.rid] = now
                tok_n[r.rid] = out

    @staticmethod
    def _join_ready(inst: Instance, ready_by: float) -> None:
        """Hand-ins whose KV landed by ``ready_by`` join the running batch (in order)."""
        ready = inst.ready_kv
        keep = []
        for r in ready:
            if r.transfer_end_s <= ready_by:
                r.status = RequestStatus.RUNNING
                inst.add_running(r)
                inst.num_transfers_in -= 1
            else:
                keep.append(r)
        ready[:] = keep

    def _on_iteration_end(self, idx: int, version: int) -> None:
        op = self._ops[idx]
        if version != op.version:
            return  # a cut run re-pushed its end
        inst = self.instances[idx]
        inst.busy = False
        now = self.now_s
        if op.plan is not None:
            stopped = inst.complete(op.plan)
            self._on_sampled(idx, op, op.plan.reqs, now)
            self.num_iterations += 1
            op.plan = None
        else:
            stopped = inst.finish_decode_run(op.k_done)
            self.num_iterations += op.k_done
            self._on_run((op.line, op.k_done, inst._run_seqs, op.itl_w))
            op.line = None
        for r in stopped:
            self._on_stop(inst, r, now)
        self._dirty.add(idx)

    def _on_stop(self, inst: Instance, r: Request, t: float) -> None:
        if r.num_output_tokens >= r.max_output_tokens:
            inst.release_blocks(r)
            r.status = RequestStatus.COMPLETED
            r.finish_s = t
            return
        r.status = RequestStatus.AWAITING_TRANSFER
        r.lead_done_s = t
        self._tok_t[r.rid] = t  # its next token comes from elsewhere (an irregular gap)
        self._tok_n[r.rid] = r.num_output_tokens
        inst.num_transfers_out += 1
        inst.awaiting_out.append(r)
        follow = self.instances[r.follow]
        follow.pending_kv.append(r)
        self._try_pull(follow)

    # ---- KV hand-over ------------------------------------------------------------------------
    def _try_pull(self, f: Instance) -> None:
        """The Follow pulls pending KV while it has blocks and sequence slots (DistServe)."""
        pending = f.pending_kv
        kv = f.kv
        bs = kv.block_size
        max_seqs = f.cfg.max_num_seqs
        batch, tail = f._batch, f._tail
        idx = f.index
        op = self._ops[idx]
        blocked = self._pull_blocked
        while pending:
            r = pending[0]
            seqs = len(batch) + len(tail) + f.num_transfers_in
            # The answer for this head depends on the slots, the blocks and the run in flight
            # (op.version names it; as it runs, the blocks it could give back only shrink),
            # so while none of them changed, a head that could not be pulled still cannot.
            state = blocked[idx]
            if state is not None and state[0] is r and state == self._pull_state(f, r, seqs):
                return
            if seqs >= max_seqs:
                blocked[idx] = self._pull_state(f, r, seqs)
                return
            need = -(-r.num_computed_tokens // bs)
            # blocks a decode run in flight still takes are not free
            free = kv.num_blocks - kv.num_used - f.run_owed_blocks
            if need > free:
                if op.line is None or not f.busy:
                    blocked[idx] = self._pull_state(f, r, seqs)
                    return
                j = min(iters_within(op.line, self.now_s - op.start_s) + 1, op.k_done)
                if need > free + f.run_new_blocks(op.k_done) - f.run_new_blocks(j):
                    blocked[idx] = self._pull_state(f, r, seqs)
                    return
                self._cut(idx)  # the run reserved blocks this hand-in can use now
            elif f.busy and (f.run_owed_blocks
                             or need > kv.num_blocks - kv.num_used - kv.num_evictable):
                # this allocation evicts cached entries: a decode run there must hold only the
                # blocks of the iterations begun so far (its reservation would make the hand-in
                # evict more than one-event-per-iteration simulation does), so it is cut and
                # settled first; its own owed evictions also come first
                self._cut(idx)
            kv.allocate(need)
            pending.popleft()
            self.instances[r.lead].awaiting_out.remove(r)
            f.num_transfers_in += 1
            r.status = TRANSFERRING
            now = self.now_s
            r.transfer_start_s = now
            link = self._links.get((r.lead, r.follow)) or self._link(r.lead, r.follow)
            link.add(r, r.num_computed_tokens * self._kv_bytes_per_token, now)
            self._push_link(link)

    def _pull_state(self, f: Instance, head: Request, seqs: int) -> tuple:
        """What decides whether ``f`` can pull ``head`` now, but for the time (see _try_pull)."""
        return (head, seqs, f.kv.num_used, f.run_owed_blocks, f.busy, self._ops[f.index].version)

    def _schedule_after_stuck_handover(self, inst: Instance):
        """Plan of an instance that could plan nothing, after breaking a hand-over deadlock.

        See :meth:`_cancel_stuck_handover`; None when there was none to break or still
        nothing runs.
        """
        if not self._cancel_stuck_handover(inst):
            return None
        return inst.schedule()

    def _cancel_stuck_handover(self, inst: Instance) -> bool:
        """Break a hand-over deadlock: keep one finished share here and decode it locally.

        Pull-based hand-over can deadlock when two instances are each other's Follow and both
        are full of KV waiting to move. When this instance can run nothing, cannot pull what
        waits for it, and holds KV waiting for another Follow, the oldest such request stays
        here as a colocated request (``handover_cancelled``) so blocks free up again.
        """
        if (inst.num_running or inst.ready_kv or inst.num_transfers_in or not inst.pending_kv
                or not inst.awaiting_out):
            return False
        r = inst.awaiting_out.pop(0)
        follow = self.instances[r.follow]
        follow.pending_kv.remove(r)
        inst.num_transfers_out -= 1
        r.follow = inst.index
        r.split_tokens = r.stop_tokens = r.max_output_tokens
        r.handover_cancelled = True
        r.lead_done_s = -1.0
        r.status = RequestStatus.RUNNING
        inst.add_running(r)
        self._itl_odd[inst.index] = True
        logger.debug("request %d: hand-over cancelled on instance %d", r.rid, inst.index)
        self._try_pull(follow)  # its queue head changed
        return True

    def _link(self, src: int, dst: int) -> Link:
        key = (src, dst)
        link = self._links.get(key)
        if link is None:
            bw, lat = self._link_spec(src, dst)
            link = Link(len(self._link_list), bw, lat)
            self._links[key] = link
            self._link_list.append(link)
        return link

    def _push_link(self, link: Link) -> None:
        nd = link.next_done()
        if nd is not None:
            heapq.heappush(self._heap, (nd[0], TRANSFER_END, next(self._seq), link.index,
                                        link.version))

    def _on_transfer_end(self, link_idx: int, version: int) -> None:
        link = self._link_list[link_idx]
        if version != link.version:
            return
        now = self.now_s
        _, r = link.next_done()  # type: ignore[misc]  # (the version matched: one in flight)
        link.pop(r, now)
        lead, follow = self.instances[r.lead], self.instances[r.follow]
        if not lead.busy:  # (_touch, inlined)
            self._dirty.add(lead.index)
        elif lead.waiting or lead.run_owed_blocks:
            # freed blocks may admit a waiting request; a decode run there also settles its
            # evictions before the release. With nothing waiting, a run goes on unchanged.
            self._cut(lead.index)
        lead.release_blocks(r)
        lead.num_transfers_out -= 1
        r.num_blocks = -(-r.num_computed_tokens // follow._bs)
        r.stop_tokens = r.max_output_tokens
        r.instance = follow.index
        r.transfer_end_s = now
        # before registering: a decode run there settles first
        if follow.busy:
            self._cut(follow.index)
        else:
            self._dirty.add(follow.index)
        if r.hashes is not None and follow.kv.enable_prefix_caching:
            follow.register_prefix(r)  # received prompt blocks are cached like computed ones
        follow.ready_kv.append(r)  # joins the batch when the instance next schedules
        if lead.pending_kv:
            self._try_pull(lead)
        if link.remaining:  # (_push_link, inlined)
            heapq.heappush(self._heap, (link.next_done()[0],  # type: ignore[index]
                                        TRANSFER_END, next(self._seq), link_idx, link.version))

    # ---- end of run ----------------------------------------------------------------------------
    def _finish(self, limit: float) -> None:
        """Fail whatever is still in flight (time limit) and check conservation."""
        if self.finished:
            return
        self.finished = True
        if limit < INF:
            self.now_s = limit
        for r in self.requests[: self._cursor]:
            if r is not None and not r.is_terminal:
                if limit == INF:
                    raise AssertionError(f"request {r.rid} not terminal at the end: {r}")
                self._terminate(r, RequestStatus.FAILED, Reason.SIMULATION_ENDED)

    def check_invariants(self) -> None:
        """Assert KV and queue invariants on every instance."""
        out = Instance.outstanding_prefill
        for inst in self.instances:
            queued = sum(out(r) for r in inst.waiting) + sum(out(r) for r in inst.running)
            assert inst.queued_prefill_tokens == queued, (inst.index, inst.queued_prefill_tokens,
                                                          queued)
            inst.kv.check()
            held = sum(r.num_blocks - r.num_shared_blocks for r in inst.running)
            assert held <= inst.kv.num_used, (inst.index, held, inst.kv.num_used)
            assert len(inst.running) <= inst.cfg.max_num_seqs
