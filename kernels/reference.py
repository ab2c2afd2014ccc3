"""Fragment attention in plain PyTorch: the reference, and the CPU path of the plugin.

For query row ``t`` (home position ``p``, view position ``v``) and a source placed in its
view with shift ``D_f = offset - start``, the query is rotated once more by
``theta = (v - p) - D_f`` and a key at home ``h`` is visible iff ``h + D_f <= v``
(docs/design.md, section 1). Keys are read where vLLM wrote them, never rewritten.
"""

from __future__ import annotations

import torch

from .rotary import rotate
from .table import FragmentTable


def gather_keys(cache: torch.Tensor, block_table_row: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Tokens ``[start, end)`` of one request from a paged cache ``[blocks, block_size, H, D]``."""
    block_size = cache.shape[1]
    home = torch.arange(start, end, device=cache.device)
    blocks = block_table_row[home // block_size].long()
    return cache[blocks, home % block_size]


def fragment_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    table: FragmentTable,
    inv_freq: torch.Tensor,
    is_neox: bool,
    scale: float,
    out: torch.Tensor | None = None,
    window: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of ``q: [T, Hq, D]`` over each row's view; caches are ``[blocks, block_size, Hkv, D]``.

    Computes in float32 (float64 if given float64) and writes ``out`` in ``q``'s dtype.
    The attention variants of model families, all in view positions: ``window`` (sliding
    window: a row at view position ``v`` sees the keys at ``(v - window, v]``; 0: none),
    ``softcap`` (scaled scores become ``softcap * tanh(s / softcap)``; 0: none), ``sinks``
    (``[Hq]``: one more logit per head in the softmax's denominator, with no value).
    """
    num_heads = q.shape[1]
    num_kv_heads = key_cache.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"query heads {num_heads} not a multiple of KV heads {num_kv_heads}")
    q_per_kv = num_heads // num_kv_heads
    out = torch.empty_like(q) if out is None else out
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qsl = table.query_start_loc.tolist()
    seq_group = table.seq_group.tolist()
    ptr = table.group_src_ptr.tolist()
    sources = list(zip(table.src_row.tolist(), table.src_start.tolist(), table.src_end.tolist()))
    for g in range(table.num_groups):
        seqs = [s for s, sg in enumerate(seq_group) if sg == g]
        if not seqs:
            continue
        rows = torch.cat([torch.arange(qsl[s], qsl[s + 1]) for s in seqs]).to(q.device)
        slots = torch.cat(
            [torch.full((qsl[s + 1] - qsl[s],), int(table.seq_worker[s])) for s in seqs]
        ).to(q.device)
        qg = q[rows].to(compute)
        pos = table.q_pos[rows].long()
        view = table.q_view[rows].long()
        scores, values = [], []
        for i in range(ptr[g], ptr[g + 1]):
            row, start, end = sources[i]
            keys = gather_keys(key_cache, block_table[row], start, end).to(compute)
            vals = gather_keys(value_cache, block_table[row], start, end).to(compute)
            offset = table.src_offset[i].long()[slots]
            shift = offset - start
            qr = rotate(qg, ((view - pos) - shift)[:, None], inv_freq, is_neox)
            keys = keys.repeat_interleave(q_per_kv, dim=1)
            s = torch.einsum("rhd,nhd->rhn", qr, keys) * scale
            if softcap > 0:
                s = softcap * torch.tanh(s / softcap)
            home = torch.arange(start, end, device=q.device)
            visible = (offset[:, None] >= 0) & (home[None, :] + shift[:, None] <= view[:, None])
            if window > 0:
                visible &= home[None, :] + shift[:, None] > view[:, None] - window
            scores.append(s.masked_fill(~visible[:, None, :], float("-inf")))
            values.append(vals.repeat_interleave(q_per_kv, dim=1))
        if not scores:
            raise ValueError(f"group {g} has query rows but no source to attend to")
        scores = torch.cat(scores, dim=2)
        if sinks is not None:  # a column of the sink's logit, whose value is 0
            scores = torch.cat([scores, sinks.to(compute)[None, :, None].expand(len(rows), -1, 1)], dim=2)
            values.append(torch.zeros_like(values[0][:1]))
        probs = torch.softmax(scores, dim=2)
        out[rows] = torch.einsum("rhn,nhd->rhd", probs, torch.cat(values, dim=0)).to(out.dtype)
    return out
