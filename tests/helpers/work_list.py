"""The CPU op's work list, made by vectorised NumPy: the reference the compiled ``work_list``
(``kernels/cpu_native.cpp``, behind ``cpu_native.prepare``) is held to (test_cpu_native). It
was the op's own until a step's sixty array operations were measured costing more than a
small batch's attention (benchmarks/cpu/step_breakdown.py)."""

from __future__ import annotations

import numpy as np

from hogwild_kernels.table import FragmentTable


def work_list(table: FragmentTable, block_table, block_size: int, stored_from: int | None = None,
              window: int = 0) -> dict[str, np.ndarray]:
    """The arrays of ``cpu_native.Prepared`` (by its field names) and ``turns``, the distinct
    turns ``entry_turn`` indexes."""
    qsl = table.query_start_loc.numpy().astype(np.int64)
    row_seq = np.repeat(np.arange(qsl.size - 1), np.diff(qsl))
    row_group = table.seq_group.numpy()[row_seq].astype(np.int64)
    row_worker = table.seq_worker.numpy()[row_seq].astype(np.int64)
    q_view = table.q_view.numpy().astype(np.int64)
    to_view = q_view - table.q_pos.numpy()  # [R] turn from home to view position
    # Rows by group.
    group_rows = np.argsort(row_group, kind="stable")
    group_size = np.bincount(row_group, minlength=table.num_groups)
    group_row_ptr = np.concatenate([[0], np.cumsum(group_size)])
    # Tiles: one cache block of one source, for every source of every group (in group order).
    start = table.src_start.numpy().astype(np.int64)
    end = table.src_end.numpy().astype(np.int64)
    first = start // block_size
    tiles = np.where(end > start, (end - 1) // block_size - first + 1, 0)
    tile_src = np.repeat(np.arange(start.size), tiles)
    tile_block = first[tile_src] + np.arange(tile_src.size) - np.repeat(np.cumsum(tiles) - tiles, tiles)
    src_group = np.repeat(np.arange(table.num_groups), np.diff(table.group_src_ptr.numpy()))
    tile_group = src_group[tile_src]
    group_tile_ptr = np.concatenate([[0], np.cumsum(np.bincount(tile_group, minlength=table.num_groups))])
    # Entries: every tile against every row of its group, kept where the row sees a slot.
    per_tile = group_size[tile_group]
    entry_tile = np.repeat(np.arange(tile_src.size), per_tile)
    entry_local = np.arange(entry_tile.size) - np.repeat(np.cumsum(per_tile) - per_tile, per_tile)
    entry_row = group_rows[group_row_ptr[tile_group[entry_tile]] + entry_local]
    src = tile_src[entry_tile]
    offset = table.src_offset.numpy()[src, row_worker[entry_row]].astype(np.int64)
    shift = offset - start[src]  # D_f: the source's place in the row's view, less its home
    base = tile_block[entry_tile] * block_size
    lo = np.maximum(start[src] - base, 0)
    if window > 0:  # home + shift > v - window
        lo = np.maximum(lo, q_view[entry_row] - window + 1 - shift - base)
    hi = np.minimum(np.minimum(end[src] - base, block_size), q_view[entry_row] - shift - base + 1)
    keep = (offset >= 0) & (hi > lo)
    entry_row, entry_tile, entry_local, lo, hi = entry_row[keep], entry_tile[keep], entry_local[keep], lo[keep], hi[keep]
    angle = to_view[entry_row] - shift[keep]
    turns, entry_turn = np.unique(angle, return_inverse=True)
    if window > 0:  # only the tiles some row sees (entries stay in tile order)
        seen = np.bincount(entry_tile, minlength=tile_src.size) > 0
        entry_tile = (np.cumsum(seen) - 1)[entry_tile]
        tile_src, tile_block, tile_group = tile_src[seen], tile_block[seen], tile_group[seen]
        group_tile_ptr = np.concatenate([[0], np.cumsum(np.bincount(tile_group, minlength=table.num_groups))])
    tile_row = table.src_row.numpy()[tile_src].astype(np.int64)
    blocks = block_table.numpy()[tile_row, tile_block]
    stored = tile_row >= (block_table.shape[0] if stored_from is None else stored_from)
    tile_entry_ptr = np.concatenate([[0], np.cumsum(np.bincount(entry_tile, minlength=tile_src.size))])
    return {"group_rows": group_rows, "group_row_ptr": group_row_ptr, "group_tile_ptr": group_tile_ptr,
            "tile_entry_ptr": tile_entry_ptr, "tile_block": blocks, "tile_stored": stored, "entry_row": entry_local,
            "entry_lo": lo, "entry_hi": hi, "entry_turn": entry_turn.reshape(-1), "turns": turns}
