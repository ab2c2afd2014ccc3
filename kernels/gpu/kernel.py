"""The fragment kernel's programs: ``_fragment_attn_kernel`` (a tile of query rows of one group
against a slice of the group's KV tiles), ``_merge_splits_kernel`` (the splits' partial
softmaxes merged) and ``_map_shared_keys_kernel`` (the per-step map of the packed shared
keys). The math of a tile is ``inner.py``'s."""

from __future__ import annotations

import triton
import triton.language as tl

from .inner import (_initial_state, _load_kv, _load_pairs, _merge_tile_splits, _rotate, _row_tile, _scores,
                    _softmax_step)


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
    # cut register spills (``benchmarks/gpu/kernel_resources.py``; with one dot for both, the
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
