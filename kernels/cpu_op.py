"""Fragment attention for the CPU path: prepared once per step, a few batched ops per layer.

Same contract as ``reference.fragment_attention``, other schedule, like the Triton
kernel's: a group's keys are read once, a whole cache block at a time (a *tile*: one
block of one source, the source's tokens unmasked), and every query row of the group is
turned once per tile, by that tile's angle for the row's worker (``view - home - D_f``).
The keys are used as vLLM stored them: nothing is rotated per worker, and the blocks are
gathered in the order vLLM's CPU cache keeps them (keys dimension-major, values
token-major), so the gathers are plain copies. Everything that depends only on the table
(block ids, cos/sin, masks) is built once per step in ``prepare`` and shared by every
layer: a layer costs about fifteen torch ops per group whatever W, two of them matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .table import FragmentTable

TILE_ROWS = 8192  # tiles x query rows turned at once (bounds the turned queries' memory)


@dataclass
class _Rows:
    """Query rows of one group turned for every tile: ``turn(q) = q * cos + q[..., perm] * sin``."""

    rows: torch.Tensor  # [R] rows of q (and out)
    cos: torch.Tensor  # [T, 1, R, 1, D]
    sin: torch.Tensor
    bias: torch.Tensor  # [T, 1, R, 1, block_size]: 0 where the key is visible, -inf where not


@dataclass
class _Group:
    blocks: torch.Tensor  # [T] physical block of each tile
    chunks: list[_Rows]


@dataclass
class Prepared:
    groups: list[_Group]
    perm: torch.Tensor  # [D] partner of each dimension in its rotation pair


def _pairs(head_dim: int, half: int, is_neox: bool) -> torch.Tensor:
    """Rotation partner of every dimension (itself beyond the rotary part)."""
    idx = torch.arange(head_dim)
    if is_neox:
        idx[:half], idx[half:2 * half] = torch.arange(half, 2 * half), torch.arange(half)
    else:
        idx[: 2 * half] = torch.arange(2 * half).view(half, 2).flip(-1).flatten()
    return idx


def _turns(shift: torch.Tensor, inv_freq: torch.Tensor, head_dim: int,
           is_neox: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin [n, D]`` with ``turn(x) = x * cos + x[..., perm] * sin`` (sign folded in)."""
    half = inv_freq.numel()
    angle = shift.double()[:, None] * inv_freq.double()[None, :]
    c, s = angle.cos().float(), angle.sin().float()
    cos = torch.ones(shift.numel(), head_dim)
    sin = torch.zeros(shift.numel(), head_dim)
    if is_neox:
        cos[:, :half], cos[:, half:2 * half] = c, c
        sin[:, :half], sin[:, half:2 * half] = -s, s
    else:
        cos[:, : 2 * half] = c.repeat_interleave(2, dim=1)
        sin[:, : 2 * half] = torch.stack([-s, s], dim=-1).flatten(1)
    return cos, sin


def prepare(table: FragmentTable, block_table: torch.Tensor, block_size: int,
            inv_freq: torch.Tensor, is_neox: bool, head_dim: int,
            row_index: torch.Tensor | None = None) -> Prepared:
    """Per-step work shared by every layer. ``row_index[i]``: where the table's query row
    ``i`` sits in the ``q`` and ``out`` that ``fragment_attention`` gets (default: row ``i``),
    so that a backend can hand over its whole batch without gathering the rows first."""
    qsl = table.query_start_loc.tolist()
    ptr = table.group_src_ptr.tolist()
    seq_group = table.seq_group.tolist()
    groups = []
    for g in range(table.num_groups):
        sources = torch.arange(ptr[g], ptr[g + 1])
        start, end = table.src_start[sources].long(), table.src_end[sources].long()
        first_block = start // block_size
        tiles = (end - 1) // block_size - first_block + 1
        tile_src = torch.repeat_interleave(sources, tiles)  # [T]
        tile_block = torch.repeat_interleave(first_block, tiles) + torch.arange(tile_src.numel()) \
            - torch.repeat_interleave(torch.cumsum(tiles, 0) - tiles, tiles)  # logical block of each tile
        home = tile_block[:, None] * block_size + torch.arange(block_size)[None, :]  # [T, bs]
        outside = (home < table.src_start[tile_src].long()[:, None]) | (home >= table.src_end[tile_src].long()[:, None])
        blocks = block_table[table.src_row[tile_src].long(), tile_block].long()
        seqs = [s for s in range(len(qsl) - 1) if seq_group[s] == g]
        rows = torch.cat([torch.arange(qsl[s], qsl[s + 1]) for s in seqs])
        slots = torch.repeat_interleave(table.seq_slot[seqs].long(), torch.tensor([qsl[s + 1] - qsl[s] for s in seqs]))
        offset = table.src_offset[tile_src][:, slots].long()  # [T, R]
        shift = offset - table.src_start[tile_src].long()[:, None]  # D_f of each tile for each row's worker
        view = table.q_view[rows].long()  # [R]
        angle = (view - table.q_pos[rows].long())[None, :] - shift  # [T, R]
        hidden = outside[:, None, :] | (offset < 0)[:, :, None] \
            | (home[:, None, :] + shift[:, :, None] > view[None, :, None])  # [T, R, bs]
        bias = torch.zeros(hidden.shape).masked_fill_(hidden, float("-inf"))
        step = max(1, TILE_ROWS // max(1, tile_src.numel()))
        chunks = []
        for lo in range(0, rows.numel(), step):
            part = slice(lo, lo + step)
            n = rows[part].numel()
            cos, sin = _turns(angle[:, part].flatten(), inv_freq, head_dim, is_neox)
            shape = (tile_src.numel(), 1, n, 1, head_dim)
            at = rows[part] if row_index is None else row_index[rows[part]]
            chunks.append(_Rows(at, cos.view(shape), sin.view(shape),
                                bias[:, part].view(tile_src.numel(), 1, n, 1, block_size)))
        groups.append(_Group(blocks, chunks))
    return Prepared(groups, _pairs(head_dim, inv_freq.numel(), is_neox))


def fragment_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                       prepared: Prepared, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of ``q [T, Hq, D]``; caches ``[blocks, block_size, Hkv, D]`` (any strides).
    Only the prepared rows of ``out`` are written."""
    out = torch.empty_like(q) if out is None else out
    num_heads, head_dim = q.shape[1], q.shape[2]
    kv_heads = key_cache.shape[2]
    group_size = num_heads // kv_heads
    perm = prepared.perm
    keys_by_block = key_cache.permute(0, 2, 3, 1)  # [blocks, Hkv, D, bs]: vLLM's CPU key order
    values_by_block = value_cache.permute(0, 2, 1, 3)  # [blocks, Hkv, bs, D]
    for g in prepared.groups:
        tiles = g.blocks.numel()
        # index_select: a plain copy per block, where indexing takes a slow generic path
        keys = torch.index_select(keys_by_block, 0, g.blocks).float()  # [T, Hkv, D, bs]
        values = torch.index_select(values_by_block, 0, g.blocks).float()  # [T, Hkv, bs, D]
        for c in g.chunks:
            rows = c.rows.numel()
            x = (torch.index_select(q, 0, c.rows).float() * scale).view(rows, kv_heads, group_size, head_dim)
            x = x.transpose(0, 1)
            turned = x[None] * c.cos + torch.index_select(x, -1, perm)[None] * c.sin  # [T, Hkv, R, G, D]
            scores = torch.matmul(turned.reshape(tiles, kv_heads, rows * group_size, head_dim), keys)
            scores = scores.view(tiles, kv_heads, rows, group_size, -1) + c.bias  # [T, Hkv, R, G, bs]
            top = scores.amax(dim=(0, 4), keepdim=True)
            weights = torch.exp(scores - top)
            total = weights.sum(dim=(0, 4))  # [Hkv, R, G]
            o = torch.matmul(weights.view(tiles, kv_heads, rows * group_size, -1), values).sum(0)
            o = o.view(kv_heads, rows, group_size, head_dim) / total[..., None]
            out[c.rows] = o.transpose(0, 1).reshape(rows, num_heads, head_dim).to(out.dtype)
    return out
