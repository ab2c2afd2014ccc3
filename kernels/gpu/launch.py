"""The fragment op on a GPU: checks its inputs, maps the packed shared keys, launches the
programs (``kernel.py``) for a launch plan (``plan.py``) and merges the splits."""

from __future__ import annotations

import torch
import triton

from ..table import FragmentTable
from .kernel import _fragment_attn_kernel, _map_shared_keys_kernel, _merge_splits_kernel
from .plan import LaunchPlan, _next_pow2, plan

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def map_shared_keys(table: FragmentTable, launch: LaunchPlan, block_table: torch.Tensor,
                    block_size: int) -> torch.Tensor:
    """``[3, K]`` int32: for each of the K packed shared keys, its cache slot (block x
    block_size + place in the block), view position, and shift (view - home position).

    It depends only on the step (tables, block table), so a backend computes it once per
    step and hands it to every layer's ``fragment_attention``: the block-table lookups and
    the search for each key's source then run once per step, not once per layer."""
    num_keys = launch.num_shared_keys
    keys = torch.empty(3, max(num_keys, 1), dtype=torch.int32, device=block_table.device)
    if num_keys:
        block = 256
        num_sources = table.src_row.numel()
        _map_shared_keys_kernel[(triton.cdiv(num_keys, block),)](
            block_table, launch.src_pack, table.src_row, table.src_start, table.src_offset, keys,
            num_keys, num_sources, table.max_workers, num_sources.bit_length(), block_table.stride(0),
            BLOCK_SIZE=block_size, BLOCK=block,
        )
    return keys


def vllm_caches(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value views ``[blocks, block_size, kv_heads, head_size]`` of vLLM's Triton
    attention cache, which arrives as ``[blocks, kv_heads, block_size, 2 * head_size]``:
    the kernel reads it in place, through strides."""
    key_cache, value_cache = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    return key_cache, value_cache


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _split_counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counters for the fused merge, one per (row tile, KV head). The last
    split resets its counter, so one buffer per device is zeroed once and reused (one
    launch at a time per device: vLLM runs attention on one stream)."""
    counters = _COUNTERS.get(device)
    if counters is None or counters.numel() < n:
        counters = _COUNTERS[device] = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
    return counters


def _check(q, key_cache, value_cache, inv_freq) -> None:
    if q.dim() != 3:
        raise ValueError(f"q must be [tokens, heads, head_dim], got shape {tuple(q.shape)}")
    if key_cache.dim() != 4 or key_cache.shape != value_cache.shape:
        raise ValueError(
            "key/value caches must both be [blocks, block_size, kv_heads, head_dim], got "
            f"{tuple(key_cache.shape)} and {tuple(value_cache.shape)}"
        )
    head_dim = q.shape[2]
    if key_cache.shape[3] != head_dim or q.shape[1] % key_cache.shape[2]:
        raise ValueError(
            f"q shape {tuple(q.shape)} does not fit cache shape {tuple(key_cache.shape)} "
            "(head_dim must match, query heads a multiple of KV heads)"
        )
    if q.dtype not in _DTYPES or key_cache.dtype not in _DTYPES:
        raise ValueError(f"dtypes {q.dtype}/{key_cache.dtype} unsupported; allowed: {_DTYPES}")
    rotary_dim = 2 * inv_freq.numel()
    if rotary_dim > head_dim or rotary_dim < 32 or rotary_dim & (rotary_dim - 1):
        raise ValueError(
            f"rotary_dim {rotary_dim} unsupported for head_dim {head_dim}: "
            "needs a power of two in 32..head_dim"
        )
    if head_dim > 256 or q.stride(2) != 1 or key_cache.stride(3) != 1 or value_cache.stride(3) != 1:
        raise ValueError(f"head_dim {head_dim} must be <= 256 with contiguous last dimensions")


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
    launch: LaunchPlan | None = None,
    num_splits: int | None = None,
    split_factor: int = 2,
    num_warps: int = 4,
    num_stages: int = 3,
    fused_merge: bool = False,
    keys: torch.Tensor | None = None,
    window: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as ``reference.fragment_attention``; caches ``[blocks, block_size, Hkv, D]``.

    With a ``launch`` planned with ``row_index``, ``q`` and ``out`` are a whole batch and only
    the table's rows are read and written. ``fused_merge``: the last split of each row tile
    merges the splits (one launch, not two). ``keys``: ``map_shared_keys`` of this step
    (worked out here if not given). ``window``, ``softcap``, ``sinks``: as
    ``reference.fragment_attention``."""
    _check(q, key_cache, value_cache, inv_freq)
    _, num_heads, head_dim = q.shape
    num_rows = table.q_pos.numel()
    num_kv_heads = key_cache.shape[2]
    q_per_kv = num_heads // num_kv_heads
    out = torch.empty_like(q) if out is None else out
    if num_rows == 0:
        return out
    if launch is None:
        if q.shape[0] < num_rows:
            raise ValueError(f"q has {q.shape[0]} rows but the table has {num_rows} query rows")
        launch = plan(table, q_per_kv)
    elif launch.row_out.numel() != num_rows:
        raise ValueError(f"launch plan is for {launch.row_out.numel()} query rows, the table has {num_rows}")
    if keys is None:
        keys = map_shared_keys(table, launch, block_table, key_cache.shape[1])
    elif keys.shape != (3, max(launch.num_shared_keys, 1)):
        raise ValueError(f"keys must be [3, {launch.num_shared_keys}] (map_shared_keys of this launch plan), "
                         f"got shape {tuple(keys.shape)}")
    num_qt = launch.qt_group.numel()
    if num_splits is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 1
        programs = split_factor * sms  # enough programs to fill the GPU with a few decode rows
        num_splits = max(1, min(launch.max_group_tiles, -(-programs // max(1, num_qt * num_kv_heads))))
    head_dim_p = _next_pow2(head_dim)
    half = inv_freq.numel()
    rest = head_dim - 2 * half
    pass_p = max(16, _next_pow2(rest)) if rest else 1  # tl.dot wants K >= 16
    if num_splits > 1:
        ws_acc = torch.empty(num_rows * num_heads * num_splits, head_dim_p, device=q.device, dtype=torch.float32)
        ws_ml = torch.empty(num_rows * num_heads * num_splits, 2, device=q.device, dtype=torch.float32)
    else:
        ws_acc = ws_ml = out
    fused_merge = fused_merge and num_splits > 1
    counters = _split_counters(q.device, num_qt * num_kv_heads) if fused_merge else out
    sinks = out if sinks is None else sinks.to(q.device, torch.float32).contiguous()
    has_sinks = sinks is not out
    _fragment_attn_kernel[(num_qt, num_kv_heads, num_splits)](
        q, key_cache, value_cache, block_table, out, ws_acc, ws_ml, counters,
        inv_freq.to(q.device, torch.float32), table.q_pos, table.q_view, launch.row_worker,
        launch.qt_group, launch.qt_start, launch.qt_end, launch.group_rows, launch.batch_rows,
        launch.kvt_ptr, launch.kvt_src, launch.src_tile, launch.grp_pack, launch.grp_shared_tiles, keys,
        table.src_row, table.src_start, table.src_end, table.src_offset,
        q.stride(0), q.stride(1), key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_table.stride(0), out.stride(0), out.stride(1), table.max_workers, launch.num_shared_keys,
        scale * 1.4426950408889634, num_splits,
        window if window > 0 else 1 << 30, scale / softcap if softcap > 0 else 0.0, softcap * 1.4426950408889634,
        sinks,
        BLOCK_SIZE=key_cache.shape[1], Q_PER_KV=q_per_kv, Q_PER_KV_P=_next_pow2(q_per_kv),
        BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, HEAD_DIM=head_dim, HEAD_DIM_P=head_dim_p,
        HALF=half, PASS_P=pass_p, IS_NEOX=is_neox, IEEE=q.dtype == torch.float32, FUSED_MERGE=fused_merge,
        SOFTCAP=softcap > 0, HAS_SINKS=has_sinks, num_warps=num_warps, num_stages=num_stages,
    )
    if num_splits > 1 and not fused_merge:
        _merge_splits_kernel[(num_rows * num_heads,)](
            ws_acc, ws_ml, out, launch.row_out, sinks, num_heads, out.stride(0), out.stride(1), num_splits,
            SPLITS_P=_next_pow2(num_splits), HEAD_DIM=head_dim, HEAD_DIM_P=head_dim_p, HAS_SINKS=has_sinks,
        )
    return out
