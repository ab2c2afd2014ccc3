"""The compiled CPU fragment op against the float64 oracle: random views, the views of real
text (hundreds of fragments), vLLM's cache layout, rows anywhere in a batch, and the paths
without registers of known length."""

from __future__ import annotations

import random

import pytest
import torch

from hogwild_kernels import SeqView, build, cpu_native, cpu_op, isa
from tests.helpers.paged import OUTPUT_ROUNDOFF, PagedCache, inv_freq_for, layout_views, naive_attention, random_cache, random_views
from vllm_hogwild import envs

if not cpu_native.available():  # the suite's setup builds it; without a compiler the backend falls back
    pytest.skip("the compiled CPU op could not be built on this machine", allow_module_level=True)

# Every x86 level this CPU runs, each its own build (VLLM_HOGWILD_CPU_ISA): the machine's own,
# AVX2 + FMA (x86-64-v3) and, where the CPU has it, AVX-512 (x86-64-v4). The C++ sizes its
# registers to the level, so each build is held to the reference on its own.
LEVELS = [at for at in isa.LEVELS if isa.runs_level(isa.this_cpu(), at)]


@pytest.fixture(autouse=True, params=LEVELS)
def level(request, monkeypatch):
    monkeypatch.setenv(envs.CPU_ISA.name, request.param)
    assert cpu_native.available(), request.param
    return request.param

CASES = [
    # (block_size, kv_heads, group, head_dim, rotary_dim, neox, workers, decode)
    (16, 1, 4, 64, 64, True, 4, True),
    (32, 2, 3, 64, 32, False, 2, False),
    (16, 1, 1, 128, 128, False, 8, True),
    (128, 1, 8, 80, 64, True, 3, False),
    (8, 2, 2, 48, 32, True, 2, False),  # neither block size nor head size has a register path
]


def vllm_layout(cache: PagedCache) -> tuple[torch.Tensor, torch.Tensor]:
    """The same cache as strided views of vLLM's CPU layout (keys dimension-major per block)."""
    keys = cache.key.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    values = cache.value.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    return keys, values




def reference(q, cache, views, inv_freq, neox, scale, dtype, atol, dots: bool, **variant):
    """The float64 reference of the op in ``dtype`` and the bound it owes (see OUTPUT_ROUNDOFF).
    ``dots``: the op takes bfloat16 dots over these caches (``cpu_native.bf16_dots``). Then
    the reference rounds the turned query to bfloat16 as the op does, and the op owes u more
    of sum_j p_j |v_j| for the weights it rounds to bfloat16 (each within u of its own)."""
    expect = naive_attention(q, cache, views, inv_freq, neox, scale, dots=torch.bfloat16 if dots else None,
                             **variant)
    bound = OUTPUT_ROUNDOFF[dtype] * expect.abs() + atol
    if dots:
        weighted = naive_attention(q, PagedCache(cache.key, cache.value.abs(), cache.block_table), views, inv_freq,
                                   neox, scale, dots=torch.bfloat16, **variant)
        bound = bound + OUTPUT_ROUNDOFF[dtype] * weighted
    return expect, bound


def check(q, cache, views, inv_freq, neox, scale, dtype, atol, window=0, softcap=0.0, sinks=None):
    """The op in ``dtype`` (inputs rounded to it) against float64 over those same inputs;
    with a family's attention variant (sliding window, soft cap, sinks) if given."""
    cache = PagedCache(cache.key.to(dtype), cache.value.to(dtype), cache.block_table)
    q = q.to(dtype)
    prepared = cpu_native.prepare(build(views), cache.block_table, cache.key.shape[1], inv_freq, neox,
                                  q.shape[-1], dtype=cpu_native.compute_dtype(dtype), window=window)
    variant = dict(softcap=softcap, sinks=sinks)
    for keys, values in ((cache.key, cache.value), vllm_layout(cache)):
        expect, bound = reference(q, cache, views, inv_freq, neox, scale, dtype, atol, cpu_native.bf16_dots(keys),
                                  window=window, softcap=softcap, sinks=sinks)
        out = cpu_native.fragment_attention(q, keys, values, prepared, scale, **variant)
        assert out.dtype == dtype
        assert ((out.double() - expect).abs() <= bound).all(), (out.double() - expect).abs().max()
    # A group's walk cut into runs of tiles (the op's choice depends on the thread count):
    # every cut merges to the same rows.
    for splits in (1, 2, 5):
        out = cpu_native.fragment_attention(q, keys, values, prepared, scale, splits=splits, **variant)
        assert ((out.double() - expect).abs() <= bound).all(), (splits, (out.double() - expect).abs().max())


def random_case(case, seed: int):
    """Two groups of random views of ``case``'s shapes (a shared history for odd seeds), their
    cache and queries, and the generator that drew them."""
    block_size, kv_heads, group, head_dim, rotary_dim, neox, workers, decode = case
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    lengths, views = random_views(rng, 2, workers, block_size, 70, decode, shared=seed % 2 == 1)
    cache = random_cache(lengths, block_size, kv_heads, head_dim, gen=gen)
    q = torch.randn(sum(v.num_rows for v in views), kv_heads * group, head_dim, generator=gen)
    return views, cache, q, gen


@pytest.mark.parametrize("case", CASES)
def test_matches_rerotated_keys(case):
    block_size, kv_heads, group, head_dim, rotary_dim, neox, workers, decode = case
    for seed in range(4):
        views, cache, q, _ = random_case(case, seed)
        for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 2e-5), (torch.bfloat16, 2e-5),
                            (torch.float16, 2e-5)):
            check(q, cache, views, inv_freq_for(rotary_dim), neox, head_dim**-0.5, dtype, atol)


# The attention variants of model families: Mistral's sliding window (here shorter than the
# views, cutting fragments and the rows' own runs), Gemma 2's soft cap (low enough to bite
# on these scores), gpt-oss's sinks, and all of them at once (gpt-oss has window and sinks).
VARIANTS = {"window": dict(window=7), "softcap": dict(softcap=1.5), "sinks": dict(sinks=True),
            "all": dict(window=5, softcap=2.0, sinks=True)}


def variant_of(name: str, heads: int, gen: torch.Generator) -> dict:
    """The keyword arguments of a variant, its sinks drawn for ``heads`` query heads."""
    found = dict(VARIANTS[name])
    if found.pop("sinks", False):
        found["sinks"] = 2 * torch.randn(heads, generator=gen)
    return found


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES[:3] + CASES[4:])
def test_attention_variants(case, variant):
    block_size, kv_heads, group, head_dim, rotary_dim, neox, workers, decode = case
    for seed in range(3):
        views, cache, q, gen = random_case(case, seed)
        kwargs = variant_of(variant, kv_heads * group, gen)
        for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 2e-5), (torch.bfloat16, 2e-5)):
            check(q, cache, views, inv_freq_for(rotary_dim), neox, head_dim**-0.5, dtype, atol, **kwargs)


def test_a_window_leaves_out_the_tiles_no_row_sees():
    """Past the window, a step's work list (and so its cost) stops growing with the context."""
    tiles = {}
    for length in (200, 800):
        views = [SeqView(0, 0, 1, length - 1, [(0, 0, length, 0)], [length - 1])]
        cache = random_cache([length], 16, 1, 64)
        for window in (0, 40):
            prepared = cpu_native.prepare(build(views), cache.block_table, 16, inv_freq_for(64), True, 64,
                                          window=window)
            tiles[length, window] = prepared.tile_block.numel()
    assert tiles[200, 0] < tiles[800, 0]
    assert tiles[200, 40] == tiles[800, 40] <= 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("neox", [True, False])
def test_the_turn_table_equals_the_pytorch_one(dtype, neox):
    """The C++ ``turn_table`` makes, value for value, what ``rotary.turn_table`` makes in
    ``dtype`` widened to the op's compute dtype: turns of both signs and far apart (angles of
    long contexts), a rotary part shorter than the head (dimensions past it unturned). In
    float64 the two may differ in the last bit: torch's vectorized cosine and the C library's
    are each within an ulp of the true value, not equal (an AVX-512F Xeon: 2 of 576 values,
    by 5.6e-17); every narrower dtype rounds that away."""
    from hogwild_kernels.rotary import turn_table

    theta = torch.tensor([-70000, -513, -1, 0, 1, 2, 37, 4096, 131071], dtype=torch.int64)
    for head_dim, rotary_dim in ((64, 64), (80, 40)):
        inv_freq = inv_freq_for(rotary_dim)
        got = cpu_native._extension().turn_table(theta, inv_freq, head_dim, neox, dtype)
        want = turn_table(theta, inv_freq, head_dim, neox, dtype)
        for g, w in zip(got, want):
            assert g.dtype == cpu_native.compute_dtype(dtype)
            if dtype == torch.float64:
                assert (g - w).abs().max() <= 2 ** -52  # cos, sin in [-1, 1]: an ulp is at most 2^-53
            else:
                assert torch.equal(g, w.to(g.dtype))


@pytest.mark.parametrize("seed", range(12))
def test_the_native_fragment_table_equals_build(seed):
    """``cpu_native.fragment_table`` (C++) makes ``table.build``'s table array by array: random
    groups (several per batch, decode rows and prompt chunks, shared histories handed over as
    arrays for odd seeds), the views of real text in every layout, and several groups of real
    text in one batch with ordinary group ids."""
    rng = random.Random(seed)
    if seed < 6:
        _, views = random_views(rng, 1 + seed % 3, rng.randint(1, 5), rng.choice([8, 16, 32]), 90, seed % 2 == 0,
                                shared=seed % 2 == 1)
    elif seed < 9:
        _, views = layout_views(2 + seed % 3, 700, ("contiguous", "interleaved", "combined")[seed % 3])
    else:
        views = []
        for g, layout in enumerate(("combined", "interleaved", "contiguous")[: seed - 8]):
            _, group = layout_views(2 + g, 500, layout)
            views += [SeqView(7 * g + 3, v.worker, v.num_rows, v.first_home, v.fragments, v.view_positions, v.shared)
                      for v in group]
    want, got = build(views), cpu_native.fragment_table(views)
    assert (got.max_workers, got.max_rows) == (want.max_workers, want.max_rows)
    for name, value in vars(want).items():
        if isinstance(value, torch.Tensor):
            other = getattr(got, name)
            assert other.dtype == value.dtype and torch.equal(other, value), name


@pytest.mark.parametrize("window", [0, 1, 7, 40])
@pytest.mark.parametrize("seed", range(6))
def test_the_work_list_equals_the_numpy_reference(seed, window):
    """``work_list`` (C++) makes the arrays the vectorised NumPy reference does, array by array:
    random groups (shared histories for odd seeds, prompt chunks and decode rows), real-text
    views of hundreds of fragments, finished workers' and packed-store rows, windows that
    leave tiles out."""
    import numpy as np
    from tests.helpers.work_list import work_list

    from hogwild_kernels.rotary import turn_table

    rng = random.Random(seed)
    block_size = rng.choice([8, 16, 32])
    if seed < 4:
        _, views = random_views(rng, 1 + seed % 3, rng.randint(2, 5), block_size, 70, seed % 2 == 0,
                                shared=seed % 2 == 1)
    else:
        _, views = layout_views(3 + seed % 2, 900, ["interleaved", "combined"][seed % 2])
        block_size = 32
    table = build(views)
    rows = int(table.src_row.max()) + 1 if table.src_row.numel() else 1
    width = max(int(table.src_end.max()) // block_size + 2, 2)
    block_table = torch.randperm(rows * width + 7, generator=torch.Generator().manual_seed(seed))[: rows * width]
    block_table = block_table.view(rows, width).to(torch.int32)
    stored_from = rows - 1 if seed % 3 == 0 else None
    expect = work_list(table, block_table, block_size, stored_from, window)
    prepared = cpu_native.prepare(table, block_table, block_size, inv_freq_for(64), True, 64,
                                  stored_from=stored_from, window=window)
    assert prepared.tile_entry_ptr[-1] > 0
    turns = expect.pop("turns")
    assert torch.equal(prepared.turn_sin, turn_table(torch.from_numpy(turns), inv_freq_for(64), 64, True)[1])
    for name, want in expect.items():
        got = getattr(prepared, name)
        assert got.numpy().tolist() == np.asarray(want).astype(got.numpy().dtype).tolist(), name


@pytest.mark.parametrize("seed", range(6))
def test_a_steps_work_in_one_call_equals_the_table_then_each_kinds_list(seed):
    """``prepare_step`` (the table, then each kind's work list and turns, in one C++ call) makes,
    kind by kind and array by array, what ``prepare`` makes from ``fragment_table``: kinds of
    two RoPEs (one GPT-J style, one with a shorter rotary part) and windows from none to a few
    tokens, random groups and real-text views, a packed-store row, rows anywhere in the batch,
    float32 and bfloat16 turns."""
    from hogwild_kernels.rotary import partners

    rng = random.Random(seed)
    block_size = rng.choice([8, 16, 32])
    if seed < 3:
        _, views = random_views(rng, 1 + seed, rng.randint(2, 5), block_size, 70, seed % 2 == 0, shared=seed % 2 == 1)
    else:
        _, views = layout_views(2 + seed % 3, 600, ("contiguous", "interleaved", "combined")[seed % 3])
        block_size = 32
    table = build(views)
    rows = int(table.src_row.max()) + 1 if table.src_row.numel() else 1
    width = max(int(table.src_end.max()) // block_size + 2, 2)
    block_table = torch.randperm(rows * width, generator=torch.Generator().manual_seed(seed)).view(rows, width)
    block_table = block_table.to(torch.int32)
    stored_from = rows - 1 if seed % 2 == 0 else None
    row_index = torch.randperm(int(table.query_start_loc[-1]) + 3)[: int(table.query_start_loc[-1])]
    dtype = (torch.float32, torch.bfloat16)[seed % 2]
    kinds = [cpu_native.WorkKind(inv_freq_for(64), True, 0), cpu_native.WorkKind(inv_freq_for(32, 500.0), False, 9),
             cpu_native.WorkKind(inv_freq_for(64), True, 3)]
    made = cpu_native.prepare_step(views, block_table, block_size, kinds, 64, row_index=row_index, dtype=dtype,
                                   stored_from=stored_from)
    assert len(made) == len(kinds)
    one_by_one = cpu_native.fragment_table(views)
    for kind, got in zip(kinds, made):
        want = cpu_native.prepare(one_by_one, block_table, block_size, kind.inv_freq, kind.is_neox, 64,
                                  row_index=row_index, dtype=dtype, stored_from=stored_from, window=kind.window)
        for name in cpu_native.ARRAYS:
            value, other = getattr(want, name), getattr(got, name)
            assert other.dtype == value.dtype and torch.equal(other, value), (kind.window, name)
        assert torch.equal(got.perm, partners(64, kind.inv_freq.numel(), kind.is_neox))


@pytest.mark.parametrize("layout", ["contiguous", "interleaved", "combined"])
@pytest.mark.parametrize("workers", [2, 8])
def test_views_of_real_text(layout, workers):
    """A decode step over 3000 tokens of 20-token steps: hundreds of fragments per view."""
    lengths, views = layout_views(workers, 3000, layout)
    if layout != "contiguous":
        assert len(views[0].all_fragments()) >= 100
    cache = random_cache(lengths, 32, 3, 64, dtype=torch.float64, gen=torch.Generator().manual_seed(workers))
    q = torch.randn(sum(v.num_rows for v in views), 9, 64, dtype=torch.float64)
    check(q, cache, views, inv_freq_for(64), True, 0.125, torch.float64, 1e-12)


def test_rows_anywhere_in_the_batch():
    """Only the prepared rows of ``out`` are written, read from where ``row_index`` puts them."""
    rng, gen = random.Random(3), torch.Generator().manual_seed(3)
    lengths, views = random_views(rng, 3, 3, 32, 90, False, shared=True)
    cache = random_cache(lengths, 32, 2, 64, gen=gen)
    q = torch.randn(sum(v.num_rows for v in views), 6, 64, generator=gen)
    expect = naive_attention(q, cache, views, inv_freq_for(64), True, 0.125)
    rows = torch.randperm(q.shape[0] + 5, generator=gen)[: q.shape[0]]
    batch = torch.zeros(q.shape[0] + 5, 6, 64)
    batch[rows] = q
    keys, values = vllm_layout(cache)
    prepared = cpu_native.prepare(build(views), cache.block_table, 32, inv_freq_for(64), True, 64, row_index=rows)
    out = torch.full_like(batch, float("nan"))
    cpu_native.fragment_attention(batch, keys, values, prepared, 0.125, out=out)
    assert torch.allclose(out[rows].double(), expect, atol=2e-5)
    assert out.isnan().sum() == 5 * 6 * 64


def test_bad_inputs_are_refused():
    lengths, views = layout_views(2, 400, "combined")
    cache = random_cache(lengths, 32, 3, 64)
    prepared = cpu_native.prepare(build(views), cache.block_table, 32, inv_freq_for(64), True, 64)
    q = torch.randn(2, 9, 64)
    with pytest.raises(RuntimeError, match="the caches must be of dtype Float"):
        cpu_native.fragment_attention(q, cache.key.double(), cache.value.double(), prepared, 0.125)
    with pytest.raises(RuntimeError, match="head shapes"):
        cpu_native.fragment_attention(torch.randn(2, 8, 64), cache.key, cache.value, prepared, 0.125)


def test_the_backend_runs_the_op_asked_for(monkeypatch):
    from hogwild_kernels import cpu_op
    from vllm_hogwild import cpu_backend

    for value, expect in (("native", cpu_native), ("torch", cpu_op)):
        monkeypatch.setenv("VLLM_HOGWILD_CPU_OP", value)
        cpu_backend.fragment_op.cache_clear()
        assert cpu_backend.fragment_op() is expect
    monkeypatch.setenv("VLLM_HOGWILD_CPU_OP", "fast")
    cpu_backend.fragment_op.cache_clear()
    with pytest.raises(ValueError, match="VLLM_HOGWILD_CPU_OP='fast': expected one of native, torch"):
        cpu_backend.fragment_op()
    monkeypatch.delenv("VLLM_HOGWILD_CPU_OP")
    cpu_backend.fragment_op.cache_clear()


def test_the_build_level_asked_for(monkeypatch, caplog, level):
    """``VLLM_HOGWILD_CPU_ISA``: an unknown level is an error naming the allowed ones; a level
    this CPU cannot run (AVX2 and FMA missing, say) is never loaded: one log line, then the
    PyTorch op."""
    from hogwild_kernels import cpu_op
    from vllm_hogwild import cpu_backend

    if level != "native":
        pytest.skip("about the variable, not a build: once is enough")
    monkeypatch.setenv(envs.CPU_ISA.name, "avx1024")
    cpu_backend.fragment_op.cache_clear()
    with pytest.raises(ValueError, match="VLLM_HOGWILD_CPU_ISA='avx1024': expected one of native, x86-64-v3, "
                                         "x86-64-v4"):
        cpu_backend.fragment_op()
    old = isa.Cpu("an old x86", frozenset({"sse2", "avx"}), "x86_64")
    monkeypatch.setattr(isa, "this_cpu", lambda: old)
    for at in isa.LEVELS:
        monkeypatch.setenv(envs.CPU_ISA.name, at)
        cpu_native._available.cache_clear()
        cpu_backend.fragment_op.cache_clear()
        caplog.clear()
        assert cpu_backend.fragment_op() is cpu_op
        lines = [r.getMessage() for r in caplog.records if "compiled CPU op" in r.getMessage()]
        assert len(lines) == 1 and f"built for {at}" in lines[0] and "avx2" in lines[0], lines
    monkeypatch.undo()
    cpu_native._available.cache_clear()
    cpu_backend.fragment_op.cache_clear()


def vllm_written(cache: PagedCache, layout: str) -> torch.Tensor:
    """``cache``'s blocks as vLLM's own CPU cache writer lays them out for ``layout``: one
    ``[blocks, kv_heads, block_size, 2 * head_dim]`` tensor, as the CPU backend gets."""
    from tests.helpers.vllm_api import cpu_attn_reshape_and_cache

    blocks, block_size, heads, dim = cache.key.shape
    kv = torch.zeros(blocks, heads, block_size, 2 * dim, dtype=cache.key.dtype)
    key_cache, value_cache = kv.view(blocks, heads, 2 * block_size, dim).chunk(2, dim=2)
    cpu_attn_reshape_and_cache(cache.key.reshape(-1, heads, dim), cache.value.reshape(-1, heads, dim),
                               key_cache, value_cache, torch.arange(blocks * block_size), layout,
                               k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto")
    return kv


def amx_written(cache: PagedCache) -> torch.Tensor:
    """``cache``'s blocks in vLLM's amx layout, written here by index (vLLM's own writer is
    only in its AVX-512 kernels), as ``vllm_written`` gives them: a (block, head)'s keys, then
    its values, block_size x head_dim each. Keys in tiles of 16 slots, each ``[D/2][16][2]``
    (a dimension pair of one slot side by side); values in tiles of 16 dimensions, each
    ``[block_size/2][16][2]`` (a slot pair of one dimension side by side).
    ``test_the_amx_layout_is_vllms`` holds this to vLLM's writer where there is one."""
    blocks, block_size, heads, dim = cache.key.shape
    slot = torch.arange(block_size)[:, None]
    d = torch.arange(dim)[None, :]
    key_at = (slot // 16) * dim * 16 + (d // 2) * 32 + (slot % 16) * 2 + d % 2  # [slot, d]
    value_at = (d // 16) * block_size * 16 + (slot // 2) * 32 + (d % 16) * 2 + slot % 2
    region = torch.zeros(blocks, heads, 2, block_size * dim, dtype=cache.key.dtype)
    region[:, :, 0, key_at.reshape(-1)] = cache.key.permute(0, 2, 1, 3).reshape(blocks, heads, -1)
    region[:, :, 1, value_at.reshape(-1)] = cache.value.permute(0, 2, 1, 3).reshape(blocks, heads, -1)
    return region.view(blocks, heads, block_size, 2 * dim)


AMX_SHAPES = [(32, 64, 3), (64, 128, 1), (32, 96, 4), (128, 64, 2)]  # block_size, head_dim, group


def amx_case(block_size: int, head_dim: int):
    """A bfloat16 cache of two groups with shared histories, its views and the generator."""
    rng, gen = random.Random(block_size), torch.Generator().manual_seed(head_dim)
    lengths, views = random_views(rng, 2, 3, block_size, 150, False, shared=True)
    cache = random_cache(lengths, block_size, 2, head_dim, gen=gen)
    return PagedCache(cache.key.to(torch.bfloat16), cache.value.to(torch.bfloat16), cache.block_table), views, gen


@pytest.mark.parametrize("block_size,head_dim,group", AMX_SHAPES)
def test_the_amx_layout(block_size, head_dim, group):
    """bfloat16 on CPUs with AMX tiles: vLLM keeps keys and values in pairs. The op reads them
    there, to the bound of the vec layout; a store packed from them holds exactly what one
    packed from the vec layout holds. On every CPU: the cache is laid out by ``amx_written``."""
    from vllm_hogwild.cpu_backend import cpu_caches

    dtype = torch.bfloat16
    cache, views, gen = amx_case(block_size, head_dim)
    q = torch.randn(sum(v.num_rows for v in views), 2 * group, head_dim, generator=gen).to(dtype)
    inv_freq = inv_freq_for(head_dim)
    prepared = cpu_native.prepare(build(views), cache.block_table, block_size, inv_freq, True, head_dim)
    amx = cpu_caches(amx_written(cache), "amx")
    own, bound = reference(q, cache, views, inv_freq, True, head_dim**-0.5, dtype, 2e-5,
                           cpu_native.bf16_dots(amx[0], amx=True))
    for splits in (0, 2):
        out = cpu_native.fragment_attention(q, *amx, prepared, head_dim**-0.5, splits=splits, amx=True)
        err = (out.double() - own).abs()
        assert (err <= bound).all(), err.max()
    expect = naive_attention(q, cache, views, inv_freq, True, head_dim**-0.5)
    # The PyTorch op, on the same cache (shared keys packed from 100 on: both of its paths).
    torch_prepared = cpu_op.prepare(build(views), cache.block_table, block_size, inv_freq, True, head_dim,
                                    pack_from=100)
    out = cpu_op.fragment_attention(q, *amx, torch_prepared, head_dim**-0.5, amx=True)
    err = (out.double() - expect).abs()
    assert (err <= OUTPUT_ROUNDOFF[dtype] * expect.abs() + 2e-5).all(), err.max()
    vec = vllm_layout(cache)
    n = 40
    src = torch.randperm(cache.key.shape[0] * block_size, generator=gen)[:n]
    copies = cpu_native.Copies(src // block_size, (src % block_size).int(), torch.arange(n) // block_size,
                               (torch.arange(n) % block_size).int(), torch.randint(0, 3, (n,), generator=gen).int(),
                               *[t.float() for t in (torch.randn(3, head_dim), torch.randn(3, head_dim))],
                               torch.arange(head_dim).roll(1))
    stores = []
    for caches, is_amx in ((amx, True), (vec, False)):
        store = tuple(torch.zeros(2, block_size, 2, head_dim) for _ in range(2))
        cpu_native.pack(*caches, store, copies, amx=is_amx)
        stores.append(store)
    assert all(torch.equal(a, b) for a, b in zip(*stores)) and stores[0][0].abs().sum() > 0
    # The store keeps each turned key in float32, not rounded back to bfloat16: within float32's
    # rounding of the float64 turn of the same bfloat16 key (a bfloat16 rounding is 2^-8).
    key = cache.key[copies.src_block, copies.src_slot.long()].double()  # [n, heads, D]
    cos, sin = copies.turn_cos.double()[copies.turn.long()], copies.turn_sin.double()[copies.turn.long()]
    turned = key * cos[:, None] + key[..., copies.perm] * sin[:, None]
    got = stores[0][0][copies.dst_block, copies.dst_slot.long()].double()
    assert torch.allclose(got, turned, rtol=2e-6, atol=1e-6), (got - turned).abs().max()
    assert torch.equal(stores[0][1][copies.dst_block, copies.dst_slot.long()],
                       cache.value[copies.src_block, copies.src_slot.long()].float())


@pytest.mark.parametrize("block_size,head_dim,group", AMX_SHAPES)
def test_the_amx_layout_is_vllms(block_size, head_dim, group, level):
    """``amx_written`` lays a cache out exactly as vLLM's own amx writer does (and ``vec`` as
    ``vllm_layout`` sees it)."""
    from vllm_hogwild import vllm_cpu
    from vllm_hogwild.cpu_backend import cpu_caches

    if level != "native":
        pytest.skip("no op runs here: one level is enough")
    cache, _, _ = amx_case(block_size, head_dim)
    vec = cpu_caches(vllm_written(cache, "vec"))
    assert all(torch.equal(a, b) for a, b in zip(vec, vllm_layout(cache)))
    cpu = vllm_cpu.this_cpu()
    if not vllm_cpu.vllm_writes_amx(cpu):
        pytest.skip(f"vLLM's {vllm_cpu.vllm_kernel_build(cpu)} kernels (this CPU's) have no amx cache writer: "
                    "amx_written is held to it on AVX-512 machines")
    assert torch.equal(amx_written(cache), vllm_written(cache, "amx"))
