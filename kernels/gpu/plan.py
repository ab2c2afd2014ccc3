"""The launch plan of a step: query tiles (rows of one group) and KV tiles from the fragment
table, the shared sources packed end to end into full tiles. Host work, NumPy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..table import FragmentTable, int32s, tensors_to


@dataclass
class LaunchPlan:
    """Per-step launch tensors derived from a FragmentTable; reused by every layer."""

    row_worker: torch.Tensor
    group_rows: torch.Tensor  # table rows, grouped
    row_out: torch.Tensor  # where each table row sits in q and out
    batch_rows: torch.Tensor  # row_out[group_rows], kept to spare the kernel a dependent load
    qt_group: torch.Tensor
    qt_start: torch.Tensor
    qt_end: torch.Tensor
    kvt_ptr: torch.Tensor  # [G+1] KV tiles of group g: [ptr[g], ptr[g+1]), its shared tiles first
    kvt_src: torch.Tensor  # the source of each unshared KV tile (0 for shared tiles)
    src_tile: torch.Tensor  # [NS] first KV tile of each unshared source
    src_pack: torch.Tensor  # [NS+1] where each source starts in the packed shared keys (unshared: empty)
    grp_pack: torch.Tensor  # [G+1] the packed shared keys of group g: [grp_pack[g], grp_pack[g+1])
    grp_shared_tiles: torch.Tensor  # [G]
    num_shared_keys: int
    block_m: int
    block_n: int
    max_group_tiles: int

    def to(self, device: torch.device | str) -> LaunchPlan:
        return tensors_to(self, device)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def plan(table: FragmentTable, q_per_kv: int, block_n: int = 64, block_m: int | None = None,
         row_index: torch.Tensor | None = None, pack_shared: bool = True) -> LaunchPlan:
    """Query tiles (rows of one group) and KV tiles for a table.

    A group's shared sources (``table.group_shared``) are packed end to end into full
    tiles, however short they are: a committed history of ~20-token steps would otherwise
    fill a third of each 64-key tile. ``pack_shared=False`` gives every source tiles of its
    own (for the benchmark). ``row_index[i]``: where the table's query row ``i`` sits in the
    ``q`` and ``out`` that ``fragment_attention`` gets (default: row ``i``), so that a
    backend can hand over its whole batch without gathering the rows first."""
    # numpy, not torch: the plan is ~30 small integer ops a step, and a torch op on the
    # host costs ~10 us where numpy's costs ~1 us.
    device = table.query_start_loc.device
    qsl = table.query_start_loc.cpu().numpy().astype(np.int64)
    counts = qsl[1:] - qsl[:-1]
    row_worker = np.repeat(table.seq_worker.cpu().numpy(), counts)
    row_group = np.repeat(table.seq_group.cpu().numpy(), counts)
    group_rows = np.argsort(row_group, kind="stable")
    if row_index is not None and tuple(row_index.shape) != group_rows.shape:
        raise ValueError(f"row_index must hold one batch row per query row of the table ({group_rows.size}), "
                         f"got shape {tuple(row_index.shape)}")
    row_out = np.arange(group_rows.size) if row_index is None else row_index.cpu().numpy()
    rows_per_group = np.bincount(row_group, minlength=table.num_groups)
    if block_m is None:
        lo = max(1, 16 // _next_pow2(q_per_kv))  # tl.dot wants >= 16 rows
        most = int(rows_per_group.max()) if rows_per_group.size else 1
        block_m = min(max(_next_pow2(most), lo), max(lo, 64 // _next_pow2(q_per_kv)))
    qt_group, qt_start, qt_end, first = [], [], [], 0
    for g, nrows in enumerate(rows_per_group.tolist()):
        for s in range(first, first + nrows, block_m):
            qt_group.append(g)
            qt_start.append(s)
            qt_end.append(min(s + block_m, first + nrows))
        first += nrows

    def exclusive_cumsum(x: np.ndarray) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(x)]).astype(np.int64)

    ptr = table.group_src_ptr.cpu().numpy().astype(np.int64)
    num_groups, num_sources = ptr.size - 1, int(ptr[-1])
    lengths = (table.src_end - table.src_start).cpu().numpy().astype(np.int64)
    src_group = np.repeat(np.arange(num_groups), ptr[1:] - ptr[:-1])
    shared_count = table.group_shared.cpu().numpy() if pack_shared else np.zeros(num_groups, np.int64)
    shared = np.arange(num_sources) < (ptr[:-1] + shared_count)[src_group]
    src_pack = exclusive_cumsum(np.where(shared, lengths, 0))
    grp_pack = src_pack[ptr]
    shared_tiles = -(-(grp_pack[1:] - grp_pack[:-1]) // block_n)
    ntiles = np.where(shared, 0, -(-lengths // block_n))
    tiles_cum = exclusive_cumsum(ntiles)
    kvt_ptr = exclusive_cumsum(shared_tiles + tiles_cum[ptr[1:]] - tiles_cum[ptr[:-1]])
    src_tile = (kvt_ptr[:-1] + shared_tiles - tiles_cum[ptr[:-1]])[src_group] + tiles_cum[:-1]
    kvt_src = np.zeros(int(kvt_ptr[-1]), dtype=np.int64)
    within = np.arange(int(tiles_cum[-1])) - np.repeat(tiles_cum[:-1], ntiles)
    kvt_src[np.repeat(src_tile, ntiles) + within] = np.repeat(np.arange(num_sources), ntiles)
    per_group = kvt_ptr[1:] - kvt_ptr[:-1]

    launch = LaunchPlan(
        *map(int32s, (row_worker, group_rows, row_out, row_out[group_rows], qt_group, qt_start, qt_end, kvt_ptr,
                      kvt_src, src_tile, src_pack, grp_pack, shared_tiles)),
        int(src_pack[-1]), block_m, block_n, int(per_group.max()) if per_group.size else 0,
    )
    return launch.to(device)
