"""Fragment attention in Triton: one KV tile load serves every worker of a group.

A program owns a tile of query rows of one group (tokens x the query heads of one KV
head) and a slice of the group's KV tiles (split-KV, flash-decoding style). For each KV
tile it loads keys and values once, masks by view position, and updates an online
softmax for the rows of all W workers, so a decode step reads the group's cache once,
not W times. Rotary turns use cos/sin computed in-kernel from ``inv_freq``:

- Shared tiles: the sources every row sees at one offset (the prompt and the committed
  history) packed end to end into full tiles. Each key's cache slot, view position and
  shift come from a per-step map (``map_shared_keys``). The queries stay turned for one
  shift: a tile of one shift turns the queries (when its shift is new) and goes into the
  dot as loaded; a tile of mixed shifts turns its keys, by their shift less the queries'.
- Source tiles: the other sources, a tile at a time; every row's query is turned once
  per source by ``theta = (v - p) - D_f``.

Splits are merged by a second small kernel or, with ``fused_merge``, by the last program
of each row tile to finish (an atomic counter per tile; one launch instead of two).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from .table import FragmentTable, int32s, tensors_to

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _row_tile(qt_group_ptr, qt_start_ptr, qt_end_ptr, group_rows_ptr, batch_rows_ptr, qt, kv_head,
              Q_PER_KV: tl.constexpr, Q_PER_KV_P: tl.constexpr, BLOCK_M: tl.constexpr):
    """The query rows of tile ``qt``: (tokens of one group) x (query heads of ``kv_head``).

    ``tok`` indexes the table's rows, ``brow`` the rows of ``q`` and ``out``."""
    group = tl.load(qt_group_ptr + qt)
    r0 = tl.load(qt_start_ptr + qt)
    r1 = tl.load(qt_end_ptr + qt)
    r = tl.arange(0, BLOCK_M * Q_PER_KV_P)
    tok_i = r // Q_PER_KV_P
    head_i = r % Q_PER_KV_P
    row_ok = (r0 + tok_i < r1) & (head_i < Q_PER_KV)
    tok = tl.load(group_rows_ptr + r0 + tok_i, mask=row_ok, other=0)
    brow = tl.load(batch_rows_ptr + r0 + tok_i, mask=row_ok, other=0)
    return group, tok, brow, kv_head * Q_PER_KV + head_i, row_ok


@triton.jit
def _initial_state(sinks_ptr, head, take, HAS_SINKS: tl.constexpr):
    """A softmax's running (max, sum) before any key, in log2 units: empty, or where ``take``
    holding the head's sink (gpt-oss: one more logit in the denominator, with no value)."""
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + head, mask=take, other=0.0).to(tl.float32) * 1.4426950408889634
        return tl.where(take, sink, -1.0e30), tl.where(take, 1.0, 0.0)
    return tl.full(head.shape, -1.0e30, tl.float32), tl.zeros(head.shape, tl.float32)


@triton.jit
def _merge_tile_splits(ws_acc_ptr, ws_ml_ptr, out_ptr, sinks_ptr, tok, brow, head, row_ok, num_heads, num_splits,
                       stride_ot, stride_oh, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                       HAS_SINKS: tl.constexpr):
    """The fused merge: combine the splits' partial softmax states of a row tile and write
    its output. Workspace loads bypass L1 (``.cg``): they read what other programs of the
    same launch just wrote."""
    dv = tl.arange(0, HEAD_DIM_P)
    base = (tok * num_heads + head) * num_splits
    m_run, l_run = _initial_state(sinks_ptr, head, row_ok, HAS_SINKS)
    o_run = tl.zeros([tok.shape[0], HEAD_DIM_P], tl.float32)
    for sp in range(num_splits):
        m_s = tl.load(ws_ml_ptr + (base + sp) * 2, mask=row_ok, other=-1.0e30, cache_modifier=".cg")
        l_s = tl.load(ws_ml_ptr + (base + sp) * 2 + 1, mask=row_ok, other=0.0, cache_modifier=".cg")
        a_s = tl.load(ws_acc_ptr + (base + sp)[:, None] * HEAD_DIM_P + dv[None, :], mask=row_ok[:, None],
                      other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m_run, m_s)
        c_run = tl.exp2(m_run - m_new)
        c_s = tl.exp2(m_s - m_new)
        l_run = l_run * c_run + l_s * c_s
        o_run = o_run * c_run[:, None] + a_s * c_s[:, None]
        m_run = m_new
    o = o_run / tl.where(l_run > 0, l_run, 1.0)[:, None]
    o_ptr = out_ptr + brow[:, None] * stride_ot + head[:, None] * stride_oh + dv[None, :]
    tl.store(o_ptr, o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (dv < HEAD_DIM)[None, :])


@triton.jit
def _sincos(x):
    """``sin(x), cos(x)`` in float32 for ``|x|`` up to ~1e5, with one reduction to
    ``[-pi/4, pi/4]`` for both (Cody-Waite, pi/2 in three parts; ``j * part`` is exact
    while ``|j| < 2**16``), then Cephes' polynomials. libdevice's sinf and cosf reduce
    once each, and take a slow path past ``|x|`` ~ 48k, where long views put the angles
    of their first rotary pairs."""
    j = tl.floor(x * 0.6366197723675814 + 0.5)
    r = x - j * 1.5703125
    r = r - j * 4.84466552734375e-4
    r = r - j * -6.39757837817001e-07
    z = r * r
    s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r
    c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0
    quadrant = j.to(tl.int32) & 3
    sin = tl.where(quadrant == 0, s, tl.where(quadrant == 1, c, tl.where(quadrant == 2, -s, -c)))
    cos = tl.where(quadrant == 0, c, tl.where(quadrant == 1, -s, tl.where(quadrant == 2, -c, s)))
    return sin, cos


@triton.jit
def _rotate(xa, xb, angle):
    """Turn rotary pairs ``(xa, xb)`` by ``angle``, in float32."""
    sin, cos = _sincos(angle)
    xa = xa.to(tl.float32)
    xb = xb.to(tl.float32)
    return xa * cos - xb * sin, xb * cos + xa * sin


@triton.jit
def _load_pairs(row, ok, HALF: tl.constexpr, IS_NEOX: tl.constexpr):
    """The rotary pairs ``(a, b)`` of rows starting at ``row``: the two halves of the rotary
    dimensions (neox), or their even and odd dimensions (GPT-J), loaded whole then taken
    apart: loaded a pair member at a time, GPT-J's would come 2 bytes a load."""
    if IS_NEOX:
        dim_a = tl.arange(0, HALF)
        xa = tl.load(row[:, None] + dim_a[None, :], mask=ok[:, None], other=0.0)
        xb = tl.load(row[:, None] + HALF + dim_a[None, :], mask=ok[:, None], other=0.0)
    else:
        x = tl.load(row[:, None] + tl.arange(0, 2 * HALF)[None, :], mask=ok[:, None], other=0.0)
        xa, xb = tl.split(tl.reshape(x, [x.shape[0], HALF, 2]))
    return xa, xb


@triton.jit
def _load_kv(k_ptr, v_ptr, blk, within, key_ok, kv_head, dim_p, pass_ok, dv, dv_ok,
             stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
             HALF: tl.constexpr, PASS_P: tl.constexpr, IS_NEOX: tl.constexpr):
    """Keys (rotary pairs and the rest) and values of a tile: token ``within`` of cache block ``blk``."""
    blk = blk.to(tl.int64)
    k_base = k_ptr + blk * stride_kb + within * stride_ks + kv_head * stride_kh
    v_base = v_ptr + blk * stride_vb + within * stride_vs + kv_head * stride_vh
    ka, kb = _load_pairs(k_base, key_ok, HALF, IS_NEOX)
    if PASS_P > 1:
        kp = tl.load(k_base[:, None] + dim_p[None, :], mask=key_ok[:, None] & pass_ok[None, :], other=0.0)
    else:
        kp = ka  # unused: no dimensions past rotary_dim
    vv = tl.load(v_base[:, None] + dv[None, :], mask=key_ok[:, None] & dv_ok[None, :], other=0.0)
    return ka, kb, kp, vv


@triton.jit
def _map_shared_keys_kernel(bt_ptr, src_pack_ptr, src_row_ptr, src_start_ptr, src_off_ptr, keys_ptr,
                            num_keys, num_sources, max_workers, search_steps, stride_bt,
                            BLOCK_SIZE: tl.constexpr, BLOCK: tl.constexpr):
    """For each packed shared key: its cache slot, view position and shift (view - home)."""
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = p < num_keys
    # Binary search for the source holding p: src_pack[lo] <= p < src_pack[hi].
    lo = tl.zeros([BLOCK], tl.int32)
    hi = tl.zeros([BLOCK], tl.int32) + num_sources
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        go_right = tl.load(src_pack_ptr + mid, mask=ok, other=0) <= p
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid)
    into = p - tl.load(src_pack_ptr + lo, mask=ok, other=0)
    start = tl.load(src_start_ptr + lo, mask=ok, other=0)
    home = start + into
    offset = tl.zeros([BLOCK], tl.int32) - 1
    for j in range(max_workers):  # every worker that sees a shared source sees it at one offset
        offset = tl.maximum(offset, tl.load(src_off_ptr + lo * max_workers + j, mask=ok, other=-1))
    row = tl.load(src_row_ptr + lo, mask=ok, other=0)
    blk = tl.load(bt_ptr + row * stride_bt + home // BLOCK_SIZE, mask=ok, other=0)
    tl.store(keys_ptr + p, blk * BLOCK_SIZE + home % BLOCK_SIZE, mask=ok)
    tl.store(keys_ptr + num_keys + p, offset + into, mask=ok)
    tl.store(keys_ptr + 2 * num_keys + p, offset - start, mask=ok)


@triton.jit
def _scores(qa, qb, qp, ka, kb, kp, PREC: tl.constexpr, PASS_P: tl.constexpr):
    s = tl.dot(qa, tl.trans(ka), input_precision=PREC)
    s += tl.dot(qb, tl.trans(kb), input_precision=PREC)
    if PASS_P > 1:
        s += tl.dot(qp, tl.trans(kp), input_precision=PREC)
    return s


@triton.jit
def _softmax_step(s, visible, vv, m_i, l_i, acc, scale_log2, cap_in, cap_out, PREC: tl.constexpr,
                  SOFTCAP: tl.constexpr):
    """One tile of the online softmax: masked scores ``s`` against values ``vv``. With
    ``SOFTCAP``, scaled scores are soft-capped (Gemma 2): ``c tanh(s scale / c)``, with
    ``cap_in = scale / c`` and ``cap_out = c log2(e)``; tanh(x) = 1 - 2 / (e^2x + 1), |x|
    clamped where tanh is 1 in float32."""
    if SOFTCAP:
        x = tl.minimum(tl.maximum(s * cap_in, -15.0), 15.0)
        s = cap_out * (1.0 - 2.0 / (tl.exp2(x * 2.8853900817779268) + 1.0))
    else:
        s = s * scale_log2
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv, input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def _fragment_attn_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, out_ptr, ws_acc_ptr, ws_ml_ptr, lock_ptr,
    inv_freq_ptr, q_pos_ptr, q_view_ptr, row_worker_ptr,
    qt_group_ptr, qt_start_ptr, qt_end_ptr, group_rows_ptr, batch_rows_ptr,
    kvt_ptr_ptr, kvt_src_ptr, src_tile_ptr, grp_pack_ptr, grp_shared_tiles_ptr, keys_ptr,
    src_row_ptr, src_start_ptr, src_end_ptr, src_off_ptr,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_bt, stride_ot, stride_oh, max_workers, num_keys, scale_log2, num_splits,
    window, cap_in, cap_out, sinks_ptr,
    BLOCK_SIZE: tl.constexpr, Q_PER_KV: tl.constexpr, Q_PER_KV_P: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
    HALF: tl.constexpr, PASS_P: tl.constexpr, IS_NEOX: tl.constexpr, IEEE: tl.constexpr,
    FUSED_MERGE: tl.constexpr, SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    qt = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ROWS: tl.constexpr = BLOCK_M * Q_PER_KV_P
    PREC: tl.constexpr = "ieee" if IEEE else "tf32"
    DT = k_ptr.dtype.element_ty

    group, tok, brow, head, row_ok = _row_tile(qt_group_ptr, qt_start_ptr, qt_end_ptr, group_rows_ptr,
                                               batch_rows_ptr, qt, kv_head, Q_PER_KV, Q_PER_KV_P, BLOCK_M)
    pos = tl.load(q_pos_ptr + tok, mask=row_ok, other=0)
    view = tl.load(q_view_ptr + tok, mask=row_ok, other=0)
    worker = tl.load(row_worker_ptr + tok, mask=row_ok, other=0)

    # Rotary pairs (a, b) and the dimensions past rotary_dim.
    dim_p = 2 * HALF + tl.arange(0, PASS_P)
    pass_ok = dim_p < HEAD_DIM
    q_row = q_ptr + brow * stride_qt + head * stride_qh
    qa, qb = _load_pairs(q_row, row_ok, HALF, IS_NEOX)  # turned in float32, kept as loaded
    qp = tl.load(q_row[:, None] + dim_p[None, :], mask=row_ok[:, None] & pass_ok[None, :], other=0.0).to(DT)
    inv_freq = tl.load(inv_freq_ptr + tl.arange(0, HALF))

    dv = tl.arange(0, HEAD_DIM_P)
    dv_ok = dv < HEAD_DIM
    # The sink (if any) joins the softmax once: here, or in the merge of the splits.
    m_i, l_i = _initial_state(sinks_ptr, head, row_ok & (head * 0 + num_splits == 1), HAS_SINKS)
    acc = tl.zeros([ROWS, HEAD_DIM_P], tl.float32)

    t_begin = tl.load(kvt_ptr_ptr + group)
    t_count = tl.load(kvt_ptr_ptr + group + 1) - t_begin
    per_split = tl.cdiv(t_count, num_splits)
    t_lo = t_begin + split * per_split
    t_hi = tl.minimum(t_lo + per_split, t_begin + t_count)
    n = tl.arange(0, BLOCK_N)

    # Shared tiles first: the group's shared sources packed end to end, BLOCK_N keys a
    # tile whatever the sources' lengths, each key's cache slot, view position and shift
    # (view - home) mapped once per step (``map_shared_keys``). Every row sees these keys
    # at the same offsets. The queries are kept turned for one shift ``c_shift``: a tile
    # of that one shift (inside a long fragment) is used as loaded; a tile of another one
    # shift turns the queries anew (fewer sines than turning its keys); a tile of mixed
    # shifts turns its keys by their shift less ``c_shift``, once for all rows.
    # Each branch has its own dots, so a tile used as loaded goes from shared memory
    # straight into the MMA, and only a tile of mixed shifts passes through registers. The
    # loads stay outside the branch, where Triton's pipeliner still prefetches them. This
    # cut register spills (``benchmarks/kernel_resources.py``; with one dot for both, the
    # default decode spilled 152 bytes a thread on sm_90 and 192 on sm_80, Triton 3.9).
    shared_end = t_begin + tl.load(grp_shared_tiles_ptr + group)
    pack_lo = tl.load(grp_pack_ptr + group)
    pack_hi = tl.load(grp_pack_ptr + group + 1)
    qa_c, qb_c = _rotate(qa, qb, (view - pos).to(tl.float32)[:, None] * inv_freq[None, :])
    qa_c = qa_c.to(DT)
    qb_c = qb_c.to(DT)
    c_shift = pack_lo * 0
    for t in range(t_lo, tl.minimum(t_hi, shared_end)):
        packed = pack_lo + (t - t_begin) * BLOCK_N + n
        in_pack = packed < pack_hi
        key_slot = tl.load(keys_ptr + packed, mask=in_pack, other=0)
        key_view = tl.load(keys_ptr + num_keys + packed, mask=in_pack, other=0)
        key_shift = tl.load(keys_ptr + 2 * num_keys + packed, mask=in_pack, other=0)
        ka, kb, kp, vv = _load_kv(k_ptr, v_ptr, key_slot // BLOCK_SIZE, key_slot % BLOCK_SIZE, in_pack, kv_head,
                                  dim_p, pass_ok, dv, dv_ok, stride_kb, stride_ks, stride_kh,
                                  stride_vb, stride_vs, stride_vh, HALF, PASS_P, IS_NEOX)
        lo_shift = tl.min(tl.where(in_pack, key_shift, 2147483647), axis=0)
        hi_shift = tl.max(tl.where(in_pack, key_shift, -2147483647), axis=0)
        if lo_shift == hi_shift:
            if lo_shift != c_shift:
                qa_c, qb_c = _rotate(qa, qb, ((view - pos) - lo_shift).to(tl.float32)[:, None] * inv_freq[None, :])
                qa_c = qa_c.to(DT)
                qb_c = qb_c.to(DT)
                c_shift = lo_shift
            s = _scores(qa_c, qb_c, qp, ka, kb, kp, PREC, PASS_P)
        else:
            ka_t, kb_t = _rotate(ka, kb, (key_shift - c_shift).to(tl.float32)[:, None] * inv_freq[None, :])
            s = _scores(qa_c, qb_c, qp, ka_t.to(DT), kb_t.to(DT), kp, PREC, PASS_P)
        # a sliding window (``window`` view positions; 2^30 for none) cuts a view like any key
        visible = in_pack[None, :] & (key_view[None, :] <= view[:, None]) & (key_view[None, :] > view[:, None] - window)
        m_i, l_i, acc = _softmax_step(s, visible, vv, m_i, l_i, acc, scale_log2, cap_in, cap_out, PREC, SOFTCAP)

    # Then one source at a time (sources the rows see at different offsets, or not at
    # all): the query rotation is computed once per source, not per tile.
    u_lo = tl.maximum(t_lo, shared_end)
    src_lo = tl.load(kvt_src_ptr + u_lo, mask=u_lo < t_hi, other=0)
    src_hi = tl.load(kvt_src_ptr + t_hi - 1, mask=u_lo < t_hi, other=-1) + 1
    for src in range(src_lo, src_hi):
        s_start = tl.load(src_start_ptr + src)
        s_end = tl.load(src_end_ptr + src)
        bt_row = tl.load(src_row_ptr + src)
        offset = tl.load(src_off_ptr + src * max_workers + worker, mask=row_ok, other=-1)
        shift = offset - s_start
        qa_r, qb_r = _rotate(qa, qb, ((view - pos) - shift).to(tl.float32)[:, None] * inv_freq[None, :])
        qa_r = qa_r.to(DT)
        qb_r = qb_r.to(DT)
        limit = (view - shift)[:, None]  # key visible iff home + shift <= view
        present = (offset >= 0)[:, None]
        src_tile = tl.load(src_tile_ptr + src)
        tile_lo = tl.maximum(src_tile, u_lo)
        tile_hi = tl.minimum(src_tile + tl.cdiv(s_end - s_start, BLOCK_N), t_hi)
        for t in range(tile_lo, tile_hi):
            home = s_start + (t - src_tile) * BLOCK_N + n
            key_ok = home < s_end
            blk = tl.load(bt_ptr + bt_row * stride_bt + home // BLOCK_SIZE, mask=key_ok, other=0)
            ka, kb, kp, vv = _load_kv(k_ptr, v_ptr, blk, home % BLOCK_SIZE, key_ok, kv_head, dim_p,
                                      pass_ok, dv, dv_ok, stride_kb, stride_ks, stride_kh,
                                      stride_vb, stride_vs, stride_vh, HALF, PASS_P, IS_NEOX)
            s = _scores(qa_r, qb_r, qp, ka, kb, kp, PREC, PASS_P)
            visible = present & key_ok[None, :] & (home[None, :] <= limit) & (home[None, :] > limit - window)
            m_i, l_i, acc = _softmax_step(s, visible, vv, m_i, l_i, acc, scale_log2, cap_in, cap_out, PREC, SOFTCAP)

    if num_splits == 1:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_ptr = out_ptr + brow[:, None] * stride_ot + head[:, None] * stride_oh + dv[None, :]
        tl.store(o_ptr, o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])
    else:
        num_heads = tl.num_programs(1) * Q_PER_KV
        ws_row = (tok * num_heads + head) * num_splits + split
        tl.store(ws_acc_ptr + ws_row[:, None] * HEAD_DIM_P + dv[None, :], acc, mask=row_ok[:, None])
        tl.store(ws_ml_ptr + ws_row * 2, m_i, mask=row_ok)
        tl.store(ws_ml_ptr + ws_row * 2 + 1, l_i, mask=row_ok)
        if FUSED_MERGE:
            # Every thread's stores precede the counter's release; the last split to arrive
            # acquires them all, merges, and resets the counter for the next launch.
            tl.debug_barrier()
            lock = lock_ptr + qt * tl.num_programs(1) + kv_head
            if tl.atomic_add(lock, 1, sem="acq_rel") == num_splits - 1:
                tl.store(lock, 0)
                _merge_tile_splits(ws_acc_ptr, ws_ml_ptr, out_ptr, sinks_ptr, tok, brow, head, row_ok, num_heads,
                                   num_splits, stride_ot, stride_oh, HEAD_DIM, HEAD_DIM_P, HAS_SINKS)


@triton.jit
def _merge_splits_kernel(
    ws_acc_ptr, ws_ml_ptr, out_ptr, row_out_ptr, sinks_ptr, num_heads, stride_ot, stride_oh, num_splits,
    SPLITS_P: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    """The separate merge: one program per (query row, head), all splits at once (the
    fused merge, by contrast, runs in one program per row tile)."""
    row = tl.program_id(0)  # table row * num_heads + head
    sp = tl.arange(0, SPLITS_P)
    sp_ok = sp < num_splits
    base = row * num_splits + sp
    m = tl.load(ws_ml_ptr + base * 2, mask=sp_ok, other=-1.0e30)
    l = tl.load(ws_ml_ptr + base * 2 + 1, mask=sp_ok, other=0.0)
    m_max = tl.max(m, axis=0)
    head = row % num_heads
    if HAS_SINKS:  # the sink joins the denominator once, here
        sink = tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634
        m_max = tl.maximum(m_max, sink)
    w = tl.exp2(m - m_max) * tl.where(sp_ok, 1.0, 0.0)
    dv = tl.arange(0, HEAD_DIM_P)
    acc = tl.load(ws_acc_ptr + base[:, None] * HEAD_DIM_P + dv[None, :], mask=sp_ok[:, None], other=0.0)
    num = tl.sum(acc * w[:, None], axis=0)
    den = tl.sum(l * w, axis=0)
    if HAS_SINKS:
        den += tl.exp2(sink - m_max)
    o = num / tl.where(den > 0, den, 1.0)
    brow = tl.load(row_out_ptr + row // num_heads)
    tl.store(out_ptr + brow * stride_ot + head * stride_oh + dv, o.to(out_ptr.dtype.element_ty), mask=dv < HEAD_DIM)


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
