"""Fragment attention for the CPU path, compiled: a work list per step, one call per layer.

Same contract as ``reference.fragment_attention``. ``prepare`` turns the step's fragment
table into a flat work list once per step (vectorised, no Python loop over groups or
fragments): every query row gets its *entries*, the cache blocks it sees with the run of
slots ``[lo, hi)`` visible to it and the *turn* (a row of a cos/sin table) that rotates
its query to where those keys sit in its view. ``fragment_attention`` hands the list to
``cpu_native.cpp``, which works through (row, KV head) tasks on PyTorch's thread pool:
a row costs what plain attention over its keys costs, plus one rotation of its queries
per fragment. So a step's cost follows the keys the views hold, not the fragments they
are cut into, and no packing of the shared history is needed.

The extension is compiled on first use (``torch.utils.cpp_extension``, with
``-march=native``: it is built on the machine that runs it) into PyTorch's extension cache
(``TORCH_EXTENSIONS_DIR``); ``scripts/setup.sh`` builds it ahead. ``available()`` says
whether it could be built; the CPU backend falls back to ``cpu_op`` if not.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from .rotary import partners, turn_table
from .table import FragmentTable

log = logging.getLogger(__name__)
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_native.cpp")


@dataclass
class Prepared:
    """A step's work list, shared by every layer (CPU tensors)."""

    row_at: torch.Tensor  # [R] int64: batch row of each query row (of q and out)
    row_ptr: torch.Tensor  # [R+1] int64: entries of row r are [row_ptr[r], row_ptr[r+1])
    entry_block: torch.Tensor  # [E] int64: physical cache block
    entry_lo: torch.Tensor  # [E] int32: first visible slot of the block
    entry_hi: torch.Tensor  # [E] int32: past the last visible slot
    entry_turn: torch.Tensor  # [E] int32: row of turn_cos / turn_sin
    turn_cos: torch.Tensor  # [U, D] in the op's dtype
    turn_sin: torch.Tensor
    perm: torch.Tensor  # [D] int64: rotation partner of each dimension


def _cpu_tag() -> str:
    """A digest of this CPU's model and flags: a build for another CPU is never reused."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = [l for l in f if l.startswith(("flags", "model name"))][:2]
    except OSError:
        lines = []
    return hashlib.sha1("".join(lines).encode()).hexdigest()[:10]


@functools.cache
def _extension():
    from torch.utils import cpp_extension

    return cpp_extension.load(
        name=f"hogwild_cpu_{_cpu_tag()}", sources=[SOURCE],
        extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)


@functools.cache
def available() -> bool:
    """Whether the extension is built (building it now if it is not: ~30 s, once)."""
    try:
        _extension()
        return True
    except Exception as e:  # no compiler, no ninja, or a build error: the caller falls back
        log.warning("hogwild: the compiled CPU op could not be built (%s); using the PyTorch op", e)
        return False


def prepare(table: FragmentTable, block_table: torch.Tensor, block_size: int, inv_freq: torch.Tensor,
            is_neox: bool, head_dim: int, row_index: torch.Tensor | None = None,
            dtype: torch.dtype = torch.float32) -> Prepared:
    """The work list of a step. ``row_index[i]``: where the table's query row ``i`` sits in
    the ``q`` and ``out`` that ``fragment_attention`` gets (default: row ``i``); ``dtype``:
    the op's (its rotations are tabled in it)."""
    qsl = table.query_start_loc.numpy().astype(np.int64)
    rows = int(qsl[-1])
    row_seq = np.repeat(np.arange(qsl.size - 1), np.diff(qsl))
    row_group = table.seq_group.numpy()[row_seq].astype(np.int64)
    row_worker = table.seq_worker.numpy()[row_seq].astype(np.int64)
    q_view = table.q_view.numpy().astype(np.int64)
    to_view = q_view - table.q_pos.numpy()  # [R] turn from home to view position
    # Tiles: one cache block of one source, for every source of every group.
    start = table.src_start.numpy().astype(np.int64)
    end = table.src_end.numpy().astype(np.int64)
    first = start // block_size
    tiles = np.where(end > start, (end - 1) // block_size - first + 1, 0)
    tile_src = np.repeat(np.arange(start.size), tiles)
    tile_block = first[tile_src] + np.arange(tile_src.size) - np.repeat(np.cumsum(tiles) - tiles, tiles)
    src_group = np.repeat(np.arange(table.num_groups), np.diff(table.group_src_ptr.numpy()))
    group_tiles = np.bincount(src_group[tile_src], minlength=table.num_groups)
    group_first = np.cumsum(group_tiles) - group_tiles
    # Entries: every row against every tile of its group, kept where it sees a slot.
    per_row = group_tiles[row_group]
    entry_row = np.repeat(np.arange(rows), per_row)
    entry_tile = np.repeat(group_first[row_group], per_row) + np.arange(entry_row.size) \
        - np.repeat(np.cumsum(per_row) - per_row, per_row)
    src = tile_src[entry_tile]
    offset = table.src_offset.numpy()[src, row_worker[entry_row]].astype(np.int64)
    shift = offset - start[src]  # D_f: the source's place in the row's view, less its home
    base = tile_block[entry_tile] * block_size
    lo = np.maximum(start[src] - base, 0)
    hi = np.minimum(np.minimum(end[src] - base, block_size), q_view[entry_row] - shift - base + 1)
    keep = (offset >= 0) & (hi > lo)
    entry_row, entry_tile, lo, hi = entry_row[keep], entry_tile[keep], lo[keep], hi[keep]
    angle = to_view[entry_row] - shift[keep]
    turns, entry_turn = np.unique(angle, return_inverse=True)
    cos, sin = turn_table(torch.from_numpy(turns), inv_freq, head_dim, is_neox, dtype)
    blocks = block_table.numpy()[table.src_row.numpy()[tile_src[entry_tile]], tile_block[entry_tile]]
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(entry_row, minlength=rows))])
    row_at = torch.arange(rows) if row_index is None else row_index.long()
    return Prepared(row_at, torch.from_numpy(row_ptr.astype(np.int64)), torch.from_numpy(blocks.astype(np.int64)),
                    torch.from_numpy(lo.astype(np.int32)), torch.from_numpy(hi.astype(np.int32)),
                    torch.from_numpy(entry_turn.reshape(-1).astype(np.int32)), cos, sin,
                    partners(head_dim, inv_freq.numel(), is_neox))


def fragment_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, prepared: Prepared,
                       scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of ``q [T, Hq, D]`` (float32 or float64); caches ``[blocks, block_size,
    Hkv, D]`` of q's dtype (any strides). Only the prepared rows of ``out`` are written."""
    out = torch.empty_like(q) if out is None else out
    p = prepared
    _extension().fragment_attention(q, key_cache, value_cache, out, p.row_at, p.row_ptr, p.entry_block, p.entry_lo,
                                    p.entry_hi, p.entry_turn, p.turn_cos.to(q.dtype), p.turn_sin.to(q.dtype), p.perm,
                                    scale)
    return out
