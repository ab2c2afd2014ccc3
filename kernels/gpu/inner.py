"""The inner loop of the fragment kernel: the math of one tile, as ``@triton.jit`` functions the
programs (``kernel.py``) call: which query rows a tile holds, the rotation (sin, cos, turn),
the loads of keys and values, the scores and the online softmax step, and the merge of a
tile's splits."""

from __future__ import annotations

import triton
import triton.language as tl


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
