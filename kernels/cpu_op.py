"""Fragment attention for the CPU path: prepared once per step, a few batched ops per layer.

Same contract as ``reference.fragment_attention``, scheduled like the Triton kernel: a
group's keys are read once for all its workers, and nothing is written back.

- Tiles: a cache block of one source at a time (the source's tokens unmasked), and every
  query row of the group turned once per tile, by that tile's angle for the row's worker
  (``view - home - D_f``): one small matmul per tile and KV head.
- Packed shared keys, once a group's shared sources (those every worker sees at one
  offset: the prompt and the committed history) hold ``pack_from`` keys or more: their
  blocks' slots laid end to end, each key turned from home to view position, and the
  queries, at their view positions, meet them all in one matmul per KV head. From ~2k
  shared tokens of 20-token steps on, this beats the tiles, whose count grows with the
  number of fragments (``benchmarks/cpu/cpu_op_bench.py``).

One softmax spans both. Blocks are gathered in the order vLLM's CPU cache keeps them
(keys dimension-major, values token-major), so the gathers are plain copies. Everything
that depends only on the table (block ids, cos/sin, masks) is built once per step in
``prepare`` and shared by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rotary import partners, turn_table
from .table import FragmentTable

TILE_ROWS = 8192  # tiles x query rows turned at once (bounds the turned queries' memory)


@dataclass
class _Rows:
    """Query rows of one group, turned for every tile (``turn(q) = q * cos + q[..., perm] *
    sin``) and to their view positions (for the packed shared keys)."""

    rows: torch.Tensor  # [R] rows of q (and out)
    cos: torch.Tensor  # [T, 1, R, 1, D]
    sin: torch.Tensor
    bias: torch.Tensor  # [T, 1, R, 1, block_size]: 0 where the key is visible, -inf where not
    view_cos: torch.Tensor  # [1, R, 1, D]
    view_sin: torch.Tensor
    shared_bias: torch.Tensor  # [1, R, 1, S]


@dataclass
class _Shared:
    """A group's packed shared keys: the B cache blocks holding them, laid end to end (S =
    B x block_size slots), and how the key in each slot turns from home to view position
    (slots that hold no shared key: cos = sin = 0, and masked)."""

    blocks: torch.Tensor  # [B]
    cos: torch.Tensor  # [D, S]
    sin: torch.Tensor


@dataclass
class _Group:
    blocks: torch.Tensor  # [T] physical block of each tile
    shared: _Shared
    chunks: list[_Rows]


@dataclass
class Prepared:
    groups: list[_Group]
    perm: torch.Tensor  # [D] partner of each dimension in its rotation pair


def _shared_keys(table: FragmentTable, sources: torch.Tensor, block_table: torch.Tensor, block_size: int,
                 inv_freq: torch.Tensor, is_neox: bool,
                 head_dim: int) -> tuple[_Shared, torch.Tensor, torch.Tensor]:
    """Pack ``sources`` (shared ones): the packed keys, each slot's view position (past
    every row's where no shared key sits), and the sources left to tiles: those reusing a
    slot an earlier source took (one token seen at two places)."""
    if not sources.numel():  # the common case below pack_from: nothing to work out
        return _Shared(sources, torch.zeros(head_dim, 0), torch.zeros(head_dim, 0)), sources, sources
    start, end = table.src_start[sources].long(), table.src_end[sources].long()
    lengths = end - start
    key_src = torch.repeat_interleave(torch.arange(sources.numel()), lengths)
    into = torch.arange(key_src.numel()) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    home = start[key_src] + into
    physical = block_table[table.src_row[sources].long()[key_src], home // block_size].long()
    _, same_slot = torch.unique(physical * block_size + home % block_size, return_inverse=True)
    first = torch.full((key_src.numel(),), key_src.numel()).scatter_reduce(
        0, same_slot, torch.arange(key_src.numel()), "amin")
    reused = torch.zeros(sources.numel(), dtype=torch.bool)
    reused[key_src[first[same_slot] != torch.arange(key_src.numel())]] = True
    if reused.any():
        shared, slot_view, _ = _shared_keys(table, sources[~reused], block_table, block_size, inv_freq,
                                            is_neox, head_dim)
        return shared, slot_view, sources[reused]
    blocks, rank = torch.unique(physical, return_inverse=True)
    slot = rank * block_size + home % block_size
    width = blocks.numel() * block_size
    offset = table.src_offset[sources].long().amax(dim=1)[key_src]  # the workers that see it agree
    cos, sin = turn_table(offset - start[key_src], inv_freq, head_dim, is_neox)
    slot_cos, slot_sin = torch.zeros(head_dim, width), torch.zeros(head_dim, width)
    slot_cos[:, slot], slot_sin[:, slot] = cos.T, sin.T
    slot_view = torch.full((width,), torch.iinfo(torch.int64).max)
    slot_view[slot] = offset + into
    return _Shared(blocks, slot_cos, slot_sin), slot_view, sources[:0]


def prepare(table: FragmentTable, block_table: torch.Tensor, block_size: int,
            inv_freq: torch.Tensor, is_neox: bool, head_dim: int,
            row_index: torch.Tensor | None = None, pack_from: int = 2048, window: int = 0) -> Prepared:
    """Per-step work shared by every layer. ``row_index[i]``: where the table's query row
    ``i`` sits in the ``q`` and ``out`` that ``fragment_attention`` gets (default: row ``i``),
    so that a backend can hand over its whole batch without gathering the rows first.
    ``pack_from``: the fewest shared keys for which a group packs them. ``window``: a
    sliding window of that many view positions (0: none), as ``reference.fragment_attention``."""
    qsl = table.query_start_loc.tolist()
    ptr = table.group_src_ptr.tolist()
    num_shared = table.group_shared.tolist()
    seq_group = table.seq_group.tolist()
    lengths = (table.src_end - table.src_start).long()
    groups = []
    for g in range(table.num_groups):
        packed = torch.arange(ptr[g], ptr[g] + num_shared[g])
        if int(lengths[packed].sum()) < pack_from:
            packed = packed[:0]
        shared, slot_view, reused = _shared_keys(table, packed, block_table, block_size, inv_freq, is_neox,
                                                 head_dim)
        sources = torch.cat([reused, torch.arange(ptr[g] + packed.numel(), ptr[g + 1])])
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
        workers = torch.repeat_interleave(table.seq_worker[seqs].long(), torch.tensor([qsl[s + 1] - qsl[s] for s in seqs]))
        offset = table.src_offset[tile_src][:, workers].long()  # [T, R]
        shift = offset - table.src_start[tile_src].long()[:, None]  # D_f of each tile for each row's worker
        view = table.q_view[rows].long()  # [R]
        to_view = view - table.q_pos[rows].long()  # [R]
        angle = to_view[None, :] - shift  # [T, R]
        hidden = outside[:, None, :] | (offset < 0)[:, :, None] \
            | (home[:, None, :] + shift[:, :, None] > view[None, :, None])  # [T, R, bs]
        if window > 0:
            hidden |= home[:, None, :] + shift[:, :, None] <= view[None, :, None] - window
        bias = torch.zeros(hidden.shape).masked_fill_(hidden, float("-inf"))
        unseen = slot_view[None, :] > view[:, None]
        if window > 0:
            unseen |= slot_view[None, :] <= view[:, None] - window
        shared_bias = torch.zeros(rows.numel(), slot_view.numel()).masked_fill_(unseen, float("-inf"))  # [R, S]
        view_cos, view_sin = turn_table(to_view, inv_freq, head_dim, is_neox)  # [R, D]
        step = max(1, TILE_ROWS // max(1, tile_src.numel()))
        chunks = []
        for lo in range(0, rows.numel(), step):
            part = slice(lo, lo + step)
            n = rows[part].numel()
            cos, sin = turn_table(angle[:, part].flatten(), inv_freq, head_dim, is_neox)
            shape = (tile_src.numel(), 1, n, 1, head_dim)
            at = rows[part] if row_index is None else row_index[rows[part]]
            chunks.append(_Rows(at, cos.view(shape), sin.view(shape),
                                bias[:, part].view(tile_src.numel(), 1, n, 1, block_size),
                                view_cos[part].view(1, n, 1, head_dim), view_sin[part].view(1, n, 1, head_dim),
                                shared_bias[part].view(1, n, 1, -1)))
        groups.append(_Group(blocks, shared, chunks))
    return Prepared(groups, partners(head_dim, inv_freq.numel(), is_neox))


class _Blocks:
    """Whole cache blocks as ``[n, Hkv, D, bs]`` keys and ``[n, Hkv, bs, D]`` values in the
    compute dtype, from vLLM's CPU layouts: "vec" (those orders already: a plain copy per
    block) or "amx" (``cpu_native.cpp``: pairs undone by a permutation of each block's copy;
    the caches' views carry only the block and head strides)."""

    def __init__(self, key_cache: torch.Tensor, value_cache: torch.Tensor, amx: bool) -> None:
        blocks, bs, heads, dim = key_cache.shape
        self.shape = (heads, dim, bs), (heads, bs, dim)
        if amx:
            raw = [c.transpose(1, 2).reshape(blocks, heads, bs * dim) for c in (key_cache, value_cache)]
            # keys [bs/16][D/2][16][2] -> [D/2][2][bs/16][16]; values [D/16][bs/2][16][2] -> [bs/2][2][D/16][16]
            self.keys = raw[0].view(blocks, heads, bs // 16, dim // 2, 16, 2).permute(0, 1, 3, 5, 2, 4)
            self.values = raw[1].view(blocks, heads, dim // 16, bs // 2, 16, 2).permute(0, 1, 3, 5, 2, 4)
        else:
            self.keys = key_cache.permute(0, 2, 3, 1)  # [blocks, Hkv, D, bs]: vLLM's CPU key order
            self.values = value_cache.permute(0, 2, 1, 3)  # [blocks, Hkv, bs, D]

    def keys_of(self, blocks: torch.Tensor) -> torch.Tensor:
        # index_select: a plain copy per block, where indexing takes a slow generic path
        return torch.index_select(self.keys, 0, blocks).float().reshape(-1, *self.shape[0])

    def values_of(self, blocks: torch.Tensor) -> torch.Tensor:
        return torch.index_select(self.values, 0, blocks).float().reshape(-1, *self.shape[1])


def fragment_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                       prepared: Prepared, scale: float, out: torch.Tensor | None = None,
                       amx: bool = False, softcap: float = 0.0, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of ``q [T, Hq, D]``; caches ``[blocks, block_size, Hkv, D]`` (any strides;
    ``amx``: vLLM's amx layout inside each (block, head), as ``cpu_native.fragment_attention``).
    Sums in float32; only the prepared rows of ``out`` are written, in q's dtype. ``softcap``
    and ``sinks``: as ``reference.fragment_attention``."""

    def capped(scores: torch.Tensor) -> torch.Tensor:
        return softcap * torch.tanh(scores / softcap) if softcap > 0 else scores

    out = torch.empty_like(q) if out is None else out
    num_heads, head_dim = q.shape[1], q.shape[2]
    kv_heads, block_size = key_cache.shape[2], key_cache.shape[1]
    q_per_kv = num_heads // kv_heads
    perm = prepared.perm
    cache = _Blocks(key_cache, value_cache, amx)
    for g in prepared.groups:
        tiles, sh = g.blocks.numel(), g.shared
        if tiles:
            keys = cache.keys_of(g.blocks)  # [T, Hkv, D, bs]
            values = cache.values_of(g.blocks)  # [T, Hkv, bs, D]
        if sh.blocks.numel():  # every slot of the blocks: copies, no per-key gather
            width = sh.blocks.numel() * block_size
            sh_keys = cache.keys_of(sh.blocks).permute(1, 2, 0, 3).reshape(kv_heads, head_dim, width)
            sh_keys = sh_keys * sh.cos + torch.index_select(sh_keys, 1, perm) * sh.sin  # at their view positions
            sh_values = cache.values_of(sh.blocks).transpose(0, 1).reshape(kv_heads, width, head_dim)
        for c in g.chunks:
            rows = c.rows.numel()
            x = (torch.index_select(q, 0, c.rows).float() * scale).view(rows, kv_heads, q_per_kv, head_dim)
            x = x.transpose(0, 1)  # [Hkv, R, G, D]
            x_perm = torch.index_select(x, -1, perm)
            top = torch.full((kv_heads, rows, q_per_kv), float("-inf"))
            if sh.blocks.numel():
                at_view = (x * c.view_cos + x_perm * c.view_sin).reshape(kv_heads, rows * q_per_kv, head_dim)
                sh_scores = capped(torch.matmul(at_view, sh_keys).view(kv_heads, rows, q_per_kv, -1)) + c.shared_bias
                top = torch.maximum(top, sh_scores.amax(dim=-1))
            if tiles:
                turned = x[None] * c.cos + x_perm[None] * c.sin  # [T, Hkv, R, G, D]
                scores = torch.matmul(turned.reshape(tiles, kv_heads, rows * q_per_kv, head_dim), keys)
                scores = capped(scores.view(tiles, kv_heads, rows, q_per_kv, -1)) + c.bias  # [T, Hkv, R, G, bs]
                top = torch.maximum(top, scores.amax(dim=(0, 4)))
            total = torch.zeros(kv_heads, rows, q_per_kv)
            if sinks is not None:  # one more logit per head, with no value
                sink = sinks.float().view(kv_heads, 1, q_per_kv)
                top = torch.maximum(top, sink)
                total += torch.exp(sink - top)
            o = torch.zeros(kv_heads, rows * q_per_kv, head_dim)
            if sh.blocks.numel():
                weights = torch.exp(sh_scores - top[..., None])
                total += weights.sum(dim=-1)
                o += torch.matmul(weights.view(kv_heads, rows * q_per_kv, -1), sh_values)
            if tiles:
                weights = torch.exp(scores - top[None, ..., None])
                total += weights.sum(dim=(0, 4))
                o += torch.matmul(weights.view(tiles, kv_heads, rows * q_per_kv, -1), values).sum(0)
            o = o.view(kv_heads, rows, q_per_kv, head_dim) / total[..., None]
            out[c.rows] = o.transpose(0, 1).reshape(rows, num_heads, head_dim).to(out.dtype)
    return out
