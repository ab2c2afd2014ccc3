"""Fragment attention for the CPU path: prepared once per step, a few batched ops per layer.

Same contract as ``reference.fragment_attention``, other algorithm. Since
``<R(theta - D_f) q, k> = <R(theta) q, R(D_f) k>``, each query row is turned once to its
view position and each worker's copy of the group's keys once by its fragment shifts.
Everything that depends only on the table (gather indices, cos/sin, masks) is built once
per step in ``prepare`` and shared by every layer, so a layer costs a fixed handful of
torch ops per group instead of a Python loop over sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .table import FragmentTable


@dataclass
class _Slot:
    rows: torch.Tensor  # query rows of this worker
    q_cos: torch.Tensor  # [R, half]
    q_sin: torch.Tensor
    k_cos: torch.Tensor  # [N, half]
    k_sin: torch.Tensor
    mask: torch.Tensor  # [R, N] True where hidden


@dataclass
class _Group:
    blocks: torch.Tensor  # [N] physical block of each key
    offsets: torch.Tensor  # [N] slot inside its block
    slots: list[_Slot]


@dataclass
class Prepared:
    groups: list[_Group]
    half: int
    is_neox: bool


def _angles(shift: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    angle = shift.double()[:, None] * inv_freq.double()[None, :]
    return angle.cos().float(), angle.sin().float()


def prepare(table: FragmentTable, block_table: torch.Tensor, block_size: int,
            inv_freq: torch.Tensor, is_neox: bool) -> Prepared:
    """Per-step work shared by every layer."""
    qsl = table.query_start_loc.tolist()
    ptr = table.group_src_ptr.tolist()
    groups = []
    for g in range(table.num_groups):
        homes, rows_of_key, src_of_key = [], [], []
        for i in range(ptr[g], ptr[g + 1]):
            start, end = int(table.src_start[i]), int(table.src_end[i])
            homes.append(torch.arange(start, end))
            rows_of_key.append(torch.full((end - start,), int(table.src_row[i])))
            src_of_key.append(torch.full((end - start,), i))
        home, krow, ksrc = torch.cat(homes), torch.cat(rows_of_key), torch.cat(src_of_key)
        blocks = block_table[krow, home // block_size].long()
        slots = []
        for s in (s for s in range(len(qsl) - 1) if int(table.seq_group[s]) == g):
            rows = torch.arange(qsl[s], qsl[s + 1])
            slot = int(table.seq_slot[s])
            offset = table.src_offset[ksrc, slot].long()
            shift = offset - table.src_start[ksrc].long()  # D_f of each key's fragment
            view = table.q_view[rows].long()
            q_cos, q_sin = _angles(view - table.q_pos[rows].long(), inv_freq)
            k_cos, k_sin = _angles(shift, inv_freq)
            hidden = (offset[None, :] < 0) | (home[None, :] + shift[None, :] > view[:, None])
            slots.append(_Slot(rows, q_cos, q_sin, k_cos, k_sin, hidden))
        groups.append(_Group(blocks, home % block_size, slots))
    return Prepared(groups, inv_freq.numel(), is_neox)


def _turn(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, half: int, is_neox: bool) -> torch.Tensor:
    """Rotate ``x [..., n, h, d]`` by per-row angles ``cos/sin [..., n, half]``."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    if is_neox:
        a, b, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)
    pairs = x[..., : 2 * half].unflatten(-1, (half, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    turned = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([turned, x[..., 2 * half:]], dim=-1)


def fragment_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                       prepared: Prepared, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of ``q [T, Hq, D]``; caches ``[blocks, block_size, Hkv, D]`` (any strides)."""
    out = torch.empty_like(q) if out is None else out
    kv_heads = key_cache.shape[2]
    group_size = q.shape[1] // kv_heads
    half, neox = prepared.half, prepared.is_neox
    for g in prepared.groups:
        keys = key_cache[g.blocks, g.offsets].float()
        values = value_cache[g.blocks, g.offsets].float()
        for s in g.slots:
            k = _turn(keys, s.k_cos, s.k_sin, half, neox)
            qr = _turn(q[s.rows].float(), s.q_cos, s.q_sin, half, neox).unflatten(1, (kv_heads, group_size))
            scores = torch.einsum("rkgd,nkd->rkgn", qr, k) * scale
            probs = torch.softmax(scores.masked_fill(s.mask[:, None, None, :], float("-inf")), dim=-1)
            out[s.rows] = torch.einsum("rkgn,nkd->rkgd", probs, values).flatten(1, 2).to(out.dtype)
    return out
