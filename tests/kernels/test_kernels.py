"""The fragment op: PyTorch reference and Triton kernel (interpreter) against a float64 oracle."""

from __future__ import annotations

import dataclasses
import random

import numpy as np

import pytest
import torch

from hogwild_kernels import build
from hogwild_kernels.reference import fragment_attention
from hogwild_kernels import cpu_op, triton_op
from hogwild_kernels.gpu import inner
from hogwild_kernels.gpu import launch as gpu_launch
from tests.helpers.paged import inv_freq_for, naive_attention, random_cache, random_views

CASES = [
    # (block_size, kv_heads, group, head_dim, rotary_dim, neox, workers, decode)
    (16, 1, 4, 64, 64, True, 4, True),
    (32, 2, 3, 64, 32, False, 2, False),
    (16, 1, 1, 64, 64, False, 8, True),
    (128, 1, 8, 32, 32, True, 3, False),
    (32, 1, 2, 80, 64, True, 1, False),
]


def _inputs(case, seed: int, shared: bool = False):
    block_size, kv_heads, group, head_dim, rotary_dim, neox, workers, decode = case
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    lengths, views = random_views(rng, 2, workers, block_size, 70, decode, shared)
    cache = random_cache(lengths, block_size, kv_heads, head_dim, gen=gen)
    rows = sum(v.num_rows for v in views)
    q = torch.randn(rows, kv_heads * group, head_dim, generator=gen)
    return cache, views, q, inv_freq_for(rotary_dim), neox, head_dim**-0.5


@pytest.mark.parametrize("case", CASES)
def test_reference_matches_rerotated_keys(case):
    for seed in range(4):
        cache, views, q, inv_freq, neox, scale = _inputs(case, seed, shared=seed % 2 == 1)
        out = fragment_attention(q, cache.key, cache.value, cache.block_table, build(views), inv_freq, neox, scale)
        expect = naive_attention(q, cache, views, inv_freq, neox, scale)
        assert torch.allclose(out.double(), expect, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("shared", [False, True], ids=["own-views", "shared-history"])
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_reference(case, shared):
    cache, views, q, inv_freq, neox, scale = _inputs(case, 7, shared)
    table = build(views)
    expect = naive_attention(q, cache, views, inv_freq, neox, scale)
    # The rows may also sit anywhere in a larger batch (row_index), which is read and written in place.
    rows = torch.randperm(q.shape[0] + 2, generator=torch.Generator().manual_seed(1))[: q.shape[0]]
    batch_q = torch.zeros(q.shape[0] + 2, *q.shape[1:])
    batch_q[rows] = q
    # Shared sources packed into 16-key tiles (several sources a tile), or given tiles of their own.
    configs = ((1, False, False, 16, True), (3, False, False, 64, False), (3, True, False, 16, True),
               (2, True, True, 32, True))
    for splits, fused, in_batch, block_n, pack in configs:
        launch = triton_op.plan(table, q.shape[1] // cache.key.shape[2], block_n=block_n,
                                row_index=rows if in_batch else None, pack_shared=pack)
        out = torch.full_like(batch_q if in_batch else q, float("nan"))  # poison: every row must be written
        triton_op.fragment_attention(batch_q if in_batch else q, cache.key, cache.value, cache.block_table, table,
                                     inv_freq, neox, scale, out=out, launch=launch, num_splits=splits,
                                     fused_merge=fused)
        got = out[rows] if in_batch else out
        assert not got.isnan().any() and out.isnan().sum() == out.numel() - got.numel()
        assert torch.allclose(got.double(), expect, atol=1e-4, rtol=1e-4)
    assert not gpu_launch._COUNTERS[q.device].any()  # the fused merge leaves its counters reset


def _hand_over_history(views: list) -> list:
    """The same views, each group's common leading fragments handed over once as arrays
    (``SeqView.shared``), as the plugin's planner hands over the committed history."""
    out = []
    for g in sorted({v.group for v in views}):
        members = [v for v in views if v.group == g]
        n = 0
        while all(len(v.fragments) > n + 1 and v.fragments[n] == members[0].fragments[n] for v in members):
            n += 1
        shared = tuple(np.array(col, dtype=np.int64).reshape(-1)
                       for col in zip(*members[0].fragments[:n])) if n else None
        out += [dataclasses.replace(v, fragments=v.fragments[n:], shared=shared) for v in members]
    return out


@pytest.mark.parametrize("case", [CASES[0], CASES[3]])
def test_history_handed_over_as_arrays(case):
    cache, views, q, inv_freq, neox, scale = _inputs(case, 4, shared=True)
    handed = _hand_over_history(views)
    assert handed[0].shared is not None
    expect = naive_attention(q, cache, views, inv_freq, neox, scale)
    table = build(handed)
    assert table.group_shared[0] >= handed[0].shared[0].size
    ref = fragment_attention(q, cache.key, cache.value, cache.block_table, table, inv_freq, neox, scale)
    assert torch.allclose(ref.double(), expect, atol=2e-5, rtol=1e-4)
    prepared = cpu_op.prepare(table, cache.block_table, cache.key.shape[1], inv_freq, neox, q.shape[-1], pack_from=0)
    assert prepared.groups[0].shared.blocks.numel() > 0
    cpu = cpu_op.fragment_attention(q, cache.key, cache.value, prepared, scale)
    assert torch.allclose(cpu.double(), expect, atol=2e-5, rtol=1e-4)
    out = torch.full_like(q, float("nan"))
    launch = triton_op.plan(table, q.shape[1] // cache.key.shape[2], block_n=16)
    triton_op.fragment_attention(q, cache.key, cache.value, cache.block_table, table, inv_freq, neox, scale,
                                 out=out, num_splits=2, launch=launch)
    assert torch.allclose(out.double(), expect, atol=1e-4, rtol=1e-4)
    copy = dataclasses.replace(handed[0], shared=tuple(a.copy() for a in handed[0].shared))
    with pytest.raises(ValueError, match="one and the same `shared` object"):
        build([handed[0], copy])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_triton_in_half_precision(case, dtype):
    """Half-precision inputs against the float64 oracle over the same rounded inputs. The
    kernel rounds three things to the dtype (the turned queries and the softmax weights
    before its dots, as flash attention does, and the output), each by up to the unit
    roundoff u: 4u in relative norm with the float32 sums (measured: 1.3-1.7u in bfloat16,
    0.5-0.6u in float16). bfloat16 runs with the interpreter's tl.dot fixed (interpreter.py)."""
    u = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    cache, views, q, inv_freq, neox, scale = _inputs(case, 11)
    cache.key, cache.value, q = cache.key.to(dtype), cache.value.to(dtype), q.to(dtype)
    expect = naive_attention(q, cache, views, inv_freq, neox, scale)
    for splits in (1, 2):
        out = torch.full_like(q, float("nan"))
        triton_op.fragment_attention(q, cache.key, cache.value, cache.block_table, build(views), inv_freq,
                                     neox, scale, out=out, num_splits=splits)
        assert ((out.double() - expect).norm() / expect.norm()).item() < 4 * u


def test_group_sources_are_shared():
    """Identical runs in several workers' views become one source with several offsets."""
    views = [
        build.__globals__["SeqView"](0, w, 1, 9, [(0, 0, 4, 0), (1 + w, 0, 10, 4)], [13])
        for w in range(3)
    ]
    table = build(views)
    assert table.src_row.tolist().count(0) == 1
    assert table.src_offset[table.src_row.tolist().index(0)].tolist() == [0, 0, 0]
    assert table.group_shared.tolist() == [1]  # the run every view holds at one offset


def test_in_kernel_sincos_holds_for_long_views():
    """The kernel's own sin/cos against float64, for angles up to those of 100k-token views."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(x_ptr, sin_ptr, cos_ptr, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        sin, cos = inner._sincos(tl.load(x_ptr + i, mask=i < n, other=0.0))
        tl.store(sin_ptr + i, sin, mask=i < n)
        tl.store(cos_ptr + i, cos, mask=i < n)

    gen = torch.Generator().manual_seed(0)
    shifts = torch.randint(-100_000, 100_000, (4096,), generator=gen).float()
    x = torch.cat([torch.linspace(-7, 7, 1024), shifts * inv_freq_for(128, 1e6)[torch.arange(4096) % 64]])
    sin, cos = torch.empty_like(x), torch.empty_like(x)
    probe[(triton.cdiv(x.numel(), 1024),)](x, sin, cos, x.numel(), BLOCK=1024)
    assert (sin.double() - x.double().sin()).abs().max() < 1e-6
    assert (cos.double() - x.double().cos()).abs().max() < 1e-6


def test_bad_shapes_are_refused():
    cache = random_cache([5], 16, 2, 64)
    q = torch.randn(1, 3, 64)  # 3 query heads over 2 KV heads
    with pytest.raises(ValueError, match="multiple of KV heads"):
        triton_op.fragment_attention(q, cache.key, cache.value, cache.block_table,
                                     build([]), inv_freq_for(64), True, 1.0)
    with pytest.raises(ValueError, match="rotary_dim"):
        triton_op.fragment_attention(torch.randn(1, 2, 64), cache.key, cache.value, cache.block_table,
                                     build([]), inv_freq_for(8), True, 1.0)
    cache, views, q, inv_freq, neox, scale = _inputs(CASES[0], 1)
    table = build(views)
    with pytest.raises(ValueError, match="q has 1 rows but the table has"):
        triton_op.fragment_attention(q[:1], cache.key, cache.value, cache.block_table, table, inv_freq, neox, scale)
    with pytest.raises(ValueError, match="row_index must hold one batch row per query row"):
        triton_op.plan(table, 4, row_index=torch.arange(q.shape[0] + 1))
    launch = triton_op.plan(table, 4)
    with pytest.raises(ValueError, match=r"keys must be \[3, \d+\] \(map_shared_keys of this launch plan\)"):
        triton_op.fragment_attention(q, cache.key, cache.value, cache.block_table, table, inv_freq, neox, scale,
                                     launch=launch, keys=torch.zeros(3, launch.num_shared_keys + 5, dtype=torch.int32))


@pytest.mark.parametrize("case", CASES)
def test_cpu_op_matches_rerotated_keys(case):

    for seed in range(4):
        cache, views, q, inv_freq, neox, scale = _inputs(case, seed, shared=seed % 2 == 1)
        expect = naive_attention(q, cache, views, inv_freq, neox, scale)
        for pack_from in (0, 1 << 30):  # shared keys packed whenever there are any, or never
            prepared = cpu_op.prepare(build(views), cache.block_table, cache.key.shape[1], inv_freq, neox,
                                      q.shape[-1], pack_from=pack_from)
            out = cpu_op.fragment_attention(q, cache.key, cache.value, prepared, scale)
            assert torch.allclose(out.double(), expect, atol=2e-5, rtol=1e-4)


def test_cpu_op_packs_a_token_seen_twice_once():
    """Shared sources that reuse a cache slot (one token at two view places) go to tiles."""
    from hogwild_kernels.table import SeqView

    cache = random_cache([40, 40], 32, 1, 64, gen=torch.Generator().manual_seed(0))
    history = [(0, 0, 10, 0), (0, 5, 15, 10), (1, 2, 30, 20)]
    views = [SeqView(0, w, 1, 39, history + [(w, 30 if w else 31, 40, 48)], [57 if w else 56]) for w in (0, 1)]
    q = torch.randn(2, 2, 64, generator=torch.Generator().manual_seed(1))
    inv_freq = inv_freq_for(64)
    prepared = cpu_op.prepare(build(views), cache.block_table, 32, inv_freq, True, 64, pack_from=0)
    assert prepared.groups[0].shared.blocks.numel() > 0 and prepared.groups[0].blocks.numel() > 0
    out = cpu_op.fragment_attention(q, cache.key, cache.value, prepared, 0.125)
    expect = naive_attention(q, cache, views, inv_freq, True, 0.125)
    assert torch.allclose(out.double(), expect, atol=2e-5, rtol=1e-4)


def test_triton_reads_vllms_triton_cache_layout_in_place():
    """The CUDA backend hands the kernel strided views of vLLM's [blocks, heads, bs, 2*D] cache."""
    case = CASES[1]
    cache, views, q, inv_freq, neox, scale = _inputs(case, 3)
    d = cache.key.shape[-1]
    kv_cache = torch.cat([cache.key, cache.value], dim=-1).transpose(1, 2).contiguous()
    key_cache, value_cache = triton_op.vllm_caches(kv_cache, d)
    assert torch.equal(key_cache, cache.key) and torch.equal(value_cache, cache.value)
    assert key_cache.data_ptr() == kv_cache.data_ptr() and not key_cache.is_contiguous()
    out = torch.full_like(q, float("nan"))
    triton_op.fragment_attention(q, key_cache, value_cache, cache.block_table, build(views), inv_freq,
                                 neox, scale, out=out, num_splits=2)
    assert torch.allclose(out.double(), naive_attention(q, cache, views, inv_freq, neox, scale), atol=1e-4, rtol=1e-4)


def test_cuda_impl_writes_hogwild_rows_of_the_output(monkeypatch):
    """HogwildTritonImpl.forward on the interpreter: the kernel reads and writes the batch's
    hogwild rows in place (batch order != view order) and leaves every other row alone."""
    from types import SimpleNamespace

    from vllm_hogwild import runtime
    from vllm_hogwild.attention import LayerKind, Layers, Rotary
    from vllm_hogwild.cuda_backend import HogwildLaunch, HogwildTritonImpl

    case = CASES[0]
    cache, views, q, inv_freq, neox, scale = _inputs(case, 5)
    heads, d = q.shape[1], q.shape[2]
    kv_cache = torch.cat([cache.key, cache.value], dim=-1).transpose(1, 2).contiguous()
    table = build(views)
    batch = q.shape[0] + 3  # three rows that are not hogwild rows
    rows = torch.randperm(batch, generator=torch.Generator().manual_seed(0))[: q.shape[0]]
    batch_q = torch.randn(batch, heads, d)
    batch_q[rows] = q
    monkeypatch.setattr(runtime, "layers", lambda: Layers((Rotary(inv_freq, neox),), {"attn": LayerKind(0, 0)}))
    impl = HogwildTritonImpl(heads, d, scale, cache.key.shape[2], None, None, "auto")
    launch = triton_op.plan(table, heads // cache.key.shape[2], row_index=rows)
    meta = SimpleNamespace(hogwild=HogwildLaunch(table, launch, cache.block_table, all_rows=True))
    output = torch.full((batch, heads * d), float("nan"))
    impl.forward(SimpleNamespace(layer_name="attn"), batch_q, None, None, kv_cache, meta, output)
    expect = naive_attention(q, cache, views, inv_freq, neox, scale)
    got = output.view(-1, heads, d)
    assert torch.allclose(got[rows].double(), expect, atol=1e-4, rtol=1e-4)
    others = torch.ones(batch, dtype=torch.bool)
    others[rows] = False
    assert got[others].isnan().all()


def test_tables_move_in_one_copy_and_keep_their_values():
    cache, views, q, *_ = _inputs(CASES[1], 3)
    table = build(views)
    launch = triton_op.plan(table, 3)
    for obj in (table, launch):
        assert obj.to("cpu") is obj  # already there: nothing copied
        wide = dataclasses.replace(obj, **{k: v.long() for k, v in vars(obj).items() if isinstance(v, torch.Tensor)})
        moved = wide.to("cpu")  # packed into one int32 buffer, then split into views
        for k, v in vars(obj).items():
            got = getattr(moved, k)
            if isinstance(v, torch.Tensor):
                assert got.dtype == torch.int32 and torch.equal(got, v), k
            else:
                assert got == v


# The attention variants of model families (sliding window, soft cap, sinks), each path
# against the float64 oracle (``test_cpu_native.py`` covers the compiled CPU op).
VARIANTS = {"window": dict(window=7), "softcap": dict(softcap=1.5), "sinks": dict(sinks=True),
            "all": dict(window=5, softcap=2.0, sinks=True)}


def _variant(name: str, heads: int, seed: int) -> dict:
    found = dict(VARIANTS[name])
    if found.pop("sinks", False):
        found["sinks"] = 2 * torch.randn(heads, generator=torch.Generator().manual_seed(seed))
    return found


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES[:3])
def test_reference_and_cpu_op_variants(case, variant):
    for seed in range(2):
        cache, views, q, inv_freq, neox, scale = _inputs(case, seed, shared=seed % 2 == 1)
        kwargs = _variant(variant, q.shape[1], seed)
        expect = naive_attention(q, cache, views, inv_freq, neox, scale, **kwargs)
        out = fragment_attention(q, cache.key, cache.value, cache.block_table, build(views), inv_freq, neox, scale,
                                 **kwargs)
        assert torch.allclose(out.double(), expect, atol=2e-5, rtol=1e-4)
        window = kwargs.pop("window", 0)
        for pack_from in (0, 1 << 30):
            prepared = cpu_op.prepare(build(views), cache.block_table, cache.key.shape[1], inv_freq, neox,
                                      q.shape[-1], pack_from=pack_from, window=window)
            out = cpu_op.fragment_attention(q, cache.key, cache.value, prepared, scale, **kwargs)
            assert torch.allclose(out.double(), expect, atol=2e-5, rtol=1e-4), (pack_from, variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES[:2])
def test_triton_variants(case, variant):
    cache, views, q, inv_freq, neox, scale = _inputs(case, 7, shared=True)
    kwargs = _variant(variant, q.shape[1], 7)
    expect = naive_attention(q, cache, views, inv_freq, neox, scale, **kwargs)
    table = build(views)
    # one split; splits merged by the separate merge and by the fused one (where the sink joins)
    for splits, fused, pack in ((1, False, True), (3, False, False), (2, True, True)):
        launch = triton_op.plan(table, q.shape[1] // cache.key.shape[2], block_n=16, pack_shared=pack)
        out = triton_op.fragment_attention(q, cache.key, cache.value, cache.block_table, table, inv_freq, neox,
                                           scale, launch=launch, num_splits=splits, fused_merge=fused, **kwargs)
        assert torch.allclose(out.double(), expect, atol=1e-4, rtol=1e-4), (splits, fused, variant)
