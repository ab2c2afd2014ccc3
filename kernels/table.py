"""The fragment table: what the attention op reads, for a whole batch.

Query rows come in *sequences* (one worker of a group, or one ordinary request), each a
contiguous run of rows as vLLM lays out a batch. Sequences belong to *groups*. A group
owns a list of *sources*: runs of cached tokens (block-table row, home ``[start, end)``);
each source has, for every worker of its group, the view offset at which that
worker sees it, or -1 if it does not. The W workers of a group see nearly the same
tokens, so a kernel can load each source tile once for the whole group.

``build`` turns per-sequence views into that form: it cuts every fragment at every
boundary any worker of the group uses, so that identical runs become one source. A
group's first sources are its *shared* ones: those every sequence of the group sees at
one offset (the prompt and the committed history, most of a long view). A caller that
knows a group's shared fragments (the plugin's planner: the committed history) hands
them over once per group as arrays (``SeqView.shared``), so that a long history costs
array copies per step, not Python work per fragment.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .seq_view import SeqView, Shared

__all__ = ["FragmentTable", "SeqView", "Shared", "build", "shared_of_groups"]


@dataclass
class FragmentTable:
    """Tensors of the fragment op (int32 unless noted), on the device of the op."""

    query_start_loc: torch.Tensor  # [S+1]
    seq_group: torch.Tensor  # [S]
    seq_worker: torch.Tensor  # [S]
    q_pos: torch.Tensor  # [T] home position of each query row (vLLM rotated q there)
    q_view: torch.Tensor  # [T] view position of each query row
    group_src_ptr: torch.Tensor  # [G+1] sources of group g: [ptr[g], ptr[g+1])
    group_shared: torch.Tensor  # [G] how many of them, first, every sequence sees at one offset
    src_row: torch.Tensor  # [NS]
    src_start: torch.Tensor  # [NS]
    src_end: torch.Tensor  # [NS]
    src_offset: torch.Tensor  # [NS, max_workers], -1: not in that worker's view
    max_workers: int
    max_rows: int  # most query rows of one sequence

    @property
    def num_groups(self) -> int:
        return self.group_src_ptr.numel() - 1

    def to(self, device: torch.device | str) -> FragmentTable:
        return tensors_to(self, device)


def int32s(x) -> torch.Tensor:
    """A contiguous int32 CPU tensor from a list or array (numpy builds the per-step
    tables: a torch op on the host costs ~10 us, a numpy op ~1 us)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int32))


def tensors_to(obj, device: torch.device | str):
    """A copy of dataclass ``obj`` with its int32 tensor fields on ``device``, moved in one
    copy: the per-step tables are a dozen small tensors, and each host-to-GPU copy of its
    own costs a synchronisation."""
    fields = dict(vars(obj))
    names = [k for k, v in fields.items() if isinstance(v, torch.Tensor)]
    if all(fields[k].device == torch.device(device) and fields[k].dtype == torch.int32 for k in names):
        return obj
    flat = torch.cat([fields[k].reshape(-1).to(torch.int32) for k in names])
    if torch.device(device).type == "cuda":
        flat = flat.pin_memory()
    moved = flat.to(device, non_blocking=True).split([fields[k].numel() for k in names])
    for k, part in zip(names, moved):
        fields[k] = part.view(fields[k].shape)
    return type(obj)(**fields)


def _group_sources(views: list[SeqView], num_workers: int) -> tuple[list[tuple[int, int, int, list[int]]], int]:
    """Cut the group's fragments at common boundaries and merge identical pieces; the
    shared ones first, and how many they are.

    A fragment that every view holds at the same offset (the prompt, or a history not
    handed over as ``SeqView.shared``) is already shared: it becomes one source as it
    is, with that offset for every worker. Only the other fragments are cut and matched,
    view by view, so the per-step cost stays near the number of distinct fragments, not
    W times it."""
    counts = Counter(f for v in views for f in set(v.fragments))
    everywhere = {f for f, n in counts.items() if n == len(views)}
    workers = [v.worker for v in views]
    sources: list[tuple[int, int, int, list[int]]] = []
    for row, start, end, offset in sorted(everywhere, key=lambda f: f[3]):
        if end > start:
            seen_at = [-1] * num_workers
            for w in workers:
                seen_at[w] = offset
            sources.append((row, start, end, seen_at))
    rest = [[f for f in v.fragments if f not in everywhere] for v in views]
    cut_sets: dict[int, set[int]] = {}
    for fragments in rest:
        for row, start, end, _ in fragments:
            cut_sets.setdefault(row, set()).update((start, end))
    cuts = {row: sorted(points) for row, points in cut_sets.items()}
    index: dict[tuple[int, int, int, int], int] = {}  # (row, start, end, occurrence) -> source
    for v, fragments in zip(views, rest):
        seen: dict[tuple[int, int, int], int] = {}
        for row, start, end, offset in fragments:
            row_cuts = cuts[row]
            points = row_cuts[bisect_left(row_cuts, start):bisect_right(row_cuts, end)]
            for a, b in zip(points, points[1:]):
                key3 = (row, a, b)
                occurrence = seen.get(key3, 0)
                seen[key3] = occurrence + 1
                key = key3 + (occurrence,)
                if key not in index:
                    index[key] = len(sources)
                    sources.append((row, a, b, [-1] * num_workers))
                sources[index[key]][3][v.worker] = offset + (a - start)
    # Pieces that every view holds at one offset (cut out of different fragments) are shared too.
    alike = [seen_at[workers[0]] >= 0 and all(seen_at[w] == seen_at[workers[0]] for w in workers)
             for _, _, _, seen_at in sources]
    return [x for x, a in zip(sources, alike) if a] + [x for x, a in zip(sources, alike) if not a], sum(alike)


def shared_of_groups(views: Sequence[SeqView]) -> dict[int, Shared | None]:
    """Each group's ``shared`` (by group id, in order of first appearance), checking that its
    sequences hand over one and the same object (the table takes it once per group)."""
    given: dict[int, SeqView] = {}
    for v in views:
        first = given.setdefault(v.group, v)
        if first.shared is not v.shared:
            raise ValueError(f"the sequences of group {v.group} must hand over one and the same `shared` object")
    return {g: v.shared for g, v in given.items()}


def build(views: Sequence[SeqView], device: torch.device | str = "cpu") -> FragmentTable:
    """The table for a batch whose sequences are ``views``, in batch order."""
    groups = sorted({v.group for v in views})
    group_index = {g: i for i, g in enumerate(groups)}
    max_workers = max((v.worker + 1 for v in views), default=1)
    by_group: dict[int, list[SeqView]] = {g: [] for g in groups}
    for v in views:
        by_group[v.group].append(v)
    shared = shared_of_groups(views)
    ptr, num_shared, parts = [0], [], []  # parts: [3 + max_workers, n] int arrays
    for g in groups:
        members = by_group[g]
        given = shared[g]
        sources, found = _group_sources(members, max_workers)
        cols = np.array([(row, start, end, *offs) for row, start, end, offs in sources],
                        dtype=np.int64).reshape(-1, 3 + max_workers).T
        group_parts = [cols[:, :found]]
        if given is not None:
            seen_at = np.full((max_workers, given[0].size), -1, dtype=np.int64)
            seen_at[[v.worker for v in members]] = given[3]
            group_parts.append(np.concatenate([np.stack(given[:3]), seen_at]))
        group_parts.append(cols[:, found:])
        parts += group_parts
        num_shared.append(found + (0 if given is None else given[0].size))
        ptr.append(ptr[-1] + sum(p.shape[1] for p in group_parts))
    src = np.concatenate(parts, axis=1) if parts else np.zeros((3 + max_workers, 0), dtype=np.int64)
    qsl = [0]
    for v in views:
        if len(v.view_positions) != v.num_rows:
            raise ValueError("one view position per query row")
        qsl.append(qsl[-1] + v.num_rows)

    table = FragmentTable(
        query_start_loc=int32s(qsl),
        seq_group=int32s([group_index[v.group] for v in views]),
        seq_worker=int32s([v.worker for v in views]),
        q_pos=int32s([v.first_home + i for v in views for i in range(v.num_rows)]),
        q_view=int32s([p for v in views for p in v.view_positions]),
        group_src_ptr=int32s(ptr),
        group_shared=int32s(num_shared),
        src_row=int32s(src[0]),
        src_start=int32s(src[1]),
        src_end=int32s(src[2]),
        src_offset=int32s(src[3:].T),
        max_workers=max_workers,
        max_rows=max((v.num_rows for v in views), default=0),
    )
    return table.to(device)
