"""Per-step planning on the model-runner side: batch rows to fragment views.

Pure Python (no torch, no vLLM). The model-runner hook registers each worker request when it
first appears, marks it finished when vLLM drops it, and once per step asks for a plan:
for every batch row of a hogwild worker, its view as (source row, start, end, offset)
fragments. A source row is the batch row of a worker still running, or an *extra* row
for a finished worker, whose blocks stay allocated (the scheduler holds them) until its
whole group ends. For the CPU path (a ``Packing``), a group's committed history is a row of
the packed store's blocks instead (``packing.py``), and the plan says which tokens to copy
into it this step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from hogwild_kernels.seq_view import SeqView, Shared
from vllm_hogwild.group import GroupTracker
from vllm_hogwild.layouts import Fragment, view_position
from vllm_hogwild.packing import BlockPool, PackedHistory
from vllm_hogwild.worker_requests import WorkerStamp, stream_starts


# Copies into the packed store, one per token: source row, home, packed row, index, turn
# (packing.PackOrder, with block-table rows for workers; hogwild_kernels.cpu_native.Copies
# once the rows are looked up)
RowCopies = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Packing:
    """The packed store a plan may use (``packing.py``): its block size and how many blocks
    it holds, for all the runner's groups."""

    block_size: int
    blocks: int


class RunnerRequest(Protocol):
    """What the planner reads of a worker's request (vLLM's CachedRequestState)."""

    prompt_token_ids: list[int]
    output_token_ids: list[int]
    block_ids: tuple[list[int], ...]


@dataclass
class _Member:
    state: RunnerRequest
    worker: int
    written: int = 0  # tokens with keys in the cache after its last scheduled step
    finished: bool = False


class _HistoryArrays:
    """A group's shared history as int arrays, brought up to date each step from the
    fragments added since the last (a long run holds thousands; they are converted once,
    not every step)."""

    def __init__(self) -> None:
        self._source: list[Fragment] | None = None
        self._seen = 0
        self._last: Fragment | None = None  # the last fragment seen (replaced when it grows)
        self.columns = np.zeros((4, 0), dtype=np.int64)  # worker, start, end, offset

    def sync(self, history: list[Fragment]) -> np.ndarray:
        if history is self._source and len(history) == self._seen and (not history or history[-1] is self._last):
            return self.columns  # nothing committed since the last step (most steps)
        keep = max(0, self._seen - 1) if history is self._source and self._seen <= len(history) else 0
        new = np.array([(f.source, f.start, f.end, f.offset) for f in history[keep:]], dtype=np.int64)
        self.columns = np.concatenate([self.columns[:, :keep], new.reshape(-1, 4).T], axis=1)
        self._source, self._seen = history, len(history)  # the last fragment may still grow
        self._last = history[-1] if history else None
        return self.columns


@dataclass
class _Group:
    tracker: GroupTracker
    members: dict[str, _Member] = field(default_factory=dict)
    history: _HistoryArrays = field(default_factory=_HistoryArrays)
    packed: PackedHistory | None = None


@dataclass
class StepPlan:
    """Hogwild rows of one step: ``batch_rows[i]`` is the batch row of ``seqs[i]``.

    Fragment rows ``< num_batch_rows`` are batch rows; row ``num_batch_rows + k`` holds
    ``extra_blocks[k]`` (a finished worker's block ids); the rows after those,
    ``packed_blocks`` (a group's packed history: blocks of the packed store, not of the
    cache), filled by ``copies`` before attention.
    """

    seqs: list[SeqView]  # the group's shared history as ``shared`` (one object for all its sequences)
    batch_rows: list[int]
    extra_blocks: list[list[int]]
    packed_blocks: list[list[int]] = field(default_factory=list)
    copies: list[RowCopies] = field(default_factory=list)


def _tokens(state: RunnerRequest, start: int, end: int) -> list[int]:
    """Tokens ``[start, end)`` of a request, without copying the whole (growing) request."""
    prompt = state.prompt_token_ids
    n = len(prompt)
    return list(prompt[start:min(end, n)]) + list(state.output_token_ids[max(start - n, 0):max(end - n, 0)])


class Planner:
    """All hogwild groups one model runner serves."""

    def __init__(self, decode: Callable[[int], str]) -> None:
        self._decode = decode
        self._groups: dict[str, _Group] = {}
        self._group_of: dict[str, str] = {}
        self._pending: dict[str, dict[str, _Member]] = {}
        self._pool: BlockPool | None = None  # the packed store's blocks (with a Packing)

    def __bool__(self) -> bool:
        return bool(self._groups)

    def state(self) -> dict[str, int]:
        """What it holds: running groups, their worker requests, groups still assembling,
        blocks of the packed store in use."""
        return {"groups": len(self._groups), "worker_requests": len(self._group_of),
                "assembling": len(self._pending), "packed_blocks": self._pool.in_use if self._pool else 0}

    def add(self, req_id: str, stamp: WorkerStamp, state: RunnerRequest) -> None:
        """Register a worker request; its group starts once all W workers are known."""
        flag, key = stamp.flag, stamp.group
        pending = self._pending.setdefault(key, {})
        pending[req_id] = _Member(state, stamp.worker)
        if len(pending) < flag.workers:
            return
        del self._pending[key]
        starts = stream_starts(stamp.prompt_len, stamp.framing, flag.workers)
        tracker = GroupTracker(flag.layout, flag.boundary, stamp.prompt_len, starts, stamp.spans())
        self._groups[key] = _Group(tracker, pending)
        self._group_of.update((rid, key) for rid in pending)

    def finish(self, req_ids: Sequence[str]) -> None:
        """Mark workers finished; a group whose workers all finished is dropped."""
        for rid in req_ids:
            key = self._group_of.pop(rid, None)
            if key is None:
                self._drop_pending(rid)
                continue
            group = self._groups[key]
            group.members[rid].finished = True
            if all(m.finished for m in group.members.values()):
                if group.packed is not None:
                    group.packed.release(self._pool)
                del self._groups[key]

    def _drop_pending(self, rid: str) -> None:
        for key, pending in list(self._pending.items()):
            if pending.pop(rid, None) is not None and not pending:
                del self._pending[key]

    def plan(self, rows: Sequence[tuple[str, int, int]], packing: Packing | None = None) -> StepPlan | None:
        """Views for a batch given as ``(req_id, query rows, tokens incl. this step)``;
        with ``packing``, each group's shared history is packed as far as the store allows."""
        batch = {rid: i for i, (rid, _, _) in enumerate(rows)}
        plan = StepPlan([], [], [])
        live = [g for g in self._groups.values() if any(rid in batch for rid in g.members)]
        source_rows: list[dict[int, int]] = []  # per group: worker -> fragment row
        for group in live:
            self._advance(group, rows, batch)
            source_row = {}
            for rid, m in sorted(group.members.items(), key=lambda x: x[1].worker):
                if rid in batch:
                    source_row[m.worker] = batch[rid]
                else:
                    source_row[m.worker] = len(rows) + len(plan.extra_blocks)
                    plan.extra_blocks.append(list(m.state.block_ids[0]))
            source_rows.append(source_row)
        if packing is not None and self._pool is None:
            self._pool = BlockPool(packing.blocks)
        first_packed_row = len(rows) + len(plan.extra_blocks)
        for gi, (group, source_row) in enumerate(zip(live, source_rows)):
            by_worker = {m.worker: (rid, m) for rid, m in group.members.items()}
            lengths = [by_worker[w][1].written for w in range(len(by_worker))]
            views = group.tracker.split_views(lengths)
            history = group.tracker.shared_history()
            shared = None
            if history:
                columns = group.history.sync(history)
                rows_of = np.array([source_row[w] for w in range(len(by_worker))], dtype=np.int64)
                if packing is None:
                    worker, start, end, offset = columns
                    shared = (rows_of[worker], start, end, offset)
                else:
                    shared = self._pack(group, columns, rows_of, packing, plan, first_packed_row)
            for w, (rid, m) in sorted(by_worker.items()):
                if rid not in batch:
                    continue
                _, num_rows, total = rows[batch[rid]]
                first = total - num_rows
                rest = views[w][0] + views[w][1]
                frags = [(source_row[f.source], f.start, f.end, f.offset) for f in rest]
                # Query rows are this step's tokens: never in the committed history.
                positions = [view_position(rest, w, first + i) for i in range(num_rows)]
                plan.seqs.append(SeqView(gi, w, num_rows, first, frags, positions, shared))
                plan.batch_rows.append(batch[rid])
        return plan if plan.seqs else None

    def _pack(self, group: _Group, columns: np.ndarray, rows_of: np.ndarray, packing: Packing, plan: StepPlan,
              first_packed_row: int) -> Shared:
        """The group's shared history as its packed run (a row of ``plan.packed_blocks``)
        and the fragments past it; the step's copies into the run go to ``plan.copies``."""
        prompt_len = group.tracker.state.prompt_len
        if group.packed is None:
            group.packed = PackedHistory(packing.block_size)
        packed = group.packed
        order = packed.advance(columns, prompt_len, self._pool)
        worker, start, end, offset = packed.rest(columns, prompt_len)
        shared = (rows_of[worker], start, end, offset)
        if not packed.packed:
            return shared
        row = first_packed_row + len(plan.packed_blocks)
        plan.packed_blocks.append(list(packed.blocks))
        if len(order):
            plan.copies.append((rows_of[order.worker], order.home, np.full(len(order), row), order.index,
                                order.turn))
        columns = np.empty((4, 1 + worker.size), dtype=np.int64)  # the run, then the rest
        columns[:, 0] = (row, 0, packed.packed, prompt_len)
        columns[0, 1:], columns[1, 1:], columns[2, 1:], columns[3, 1:] = shared
        return tuple(columns)

    def _advance(self, group: _Group, rows: Sequence[tuple[str, int, int]], batch: dict[str, int]) -> None:
        """Commit steps written before this step, then count this step's tokens."""
        texts: dict[int, list[str]] = {}
        for rid, m in group.members.items():
            before = rows[batch[rid]][2] - rows[batch[rid]][1] if rid in batch else m.written
            start = group.tracker.scanned(m.worker)
            if before > start:
                texts[m.worker] = [self._decode(t) for t in _tokens(m.state, start, before)]
            if rid in batch:
                m.written = rows[batch[rid]][2]
        group.tracker.commit_written(texts)
