"""The packed shared history: the planner copies every committed token into the packed store
once, at the index the history gives it, and the views read the packed run plus the rest of
the history; the compiled op over a packed history equals the float64 oracle over the
unpacked views."""

from __future__ import annotations

import random

import pytest
import torch

from hogwild_kernels import SeqView, build, cpu_native
from tests.helpers.paged import OUTPUT_ROUNDOFF, fill_store, inv_freq_for, layout_views, naive_attention, packed_views, random_cache
from tests.helpers.planned import END, WORD, planned_group
from vllm_hogwild.packing import BlockPool
from vllm_hogwild.planner import Packing
from vllm_hogwild import envs
from vllm_hogwild.hooks import state


def test_the_pool_hands_out_lowest_blocks_first_and_runs_short():
    pool = BlockPool(5)
    assert pool.take(2) == [0, 1] and pool.take(4) == [2, 3, 4] and pool.take(1) == []
    pool.give_back([3, 1])
    assert pool.in_use == 3 and pool.take(3) == [1, 3]


def _tokens_of_view(fragments, worker_of, packed_rows, store, block_size):
    """view offset -> (worker, home) of every token a view reads; a packed run's tokens
    are what the store's slots hold."""
    tokens = {}
    for row, start, end, offset in fragments:
        for i in range(end - start):
            if row in packed_rows:
                blocks = packed_rows[row]
                tokens[offset + i] = store[(blocks[(start + i) // block_size], (start + i) % block_size)]
            else:
                tokens[offset + i] = (worker_of[row], start + i)
    return tokens


@pytest.mark.parametrize("layout", ["interleaved", "combined"])
@pytest.mark.parametrize("capacity", [1000, 7])
def test_the_planner_packs_each_committed_token_once_where_the_history_puts_it(layout, capacity):
    """Step after step (steps commit, fragments grow, a worker finishes), each view read
    through the packed store holds the very tokens of the layouts' view; with a small
    store, the history past it stays fragments; the group's blocks go back when it ends."""
    workers, block_size = 3, 4
    planner, requests = planned_group(workers, layout, prompt=7)
    tracker = planner._groups["g"].tracker
    rng = random.Random(1)
    running = list(requests)
    store: dict[tuple[int, int], tuple[int, int]] = {}  # (store block, slot) -> (worker, home)
    packed_any = 0
    for step in range(70):
        if step == 45:
            planner.finish(["w2"])
            running.remove("w2")
        rows = [(rid, 1, len(requests[rid].prompt_token_ids) + len(requests[rid].output_token_ids) + 1)
                for rid in running]
        plan = planner.plan(rows, Packing(block_size, capacity))
        source_row = {w: i for i, w in enumerate(int(rid[1]) for rid in running)}
        source_row.update({w: len(running) + k for k, w in enumerate(w for w in range(workers)
                                                                          if f"w{w}" not in running)})
        worker_of = {r: w for w, r in source_row.items()}
        first_packed = len(rows) + len(plan.extra_blocks)
        packed_rows = {first_packed + k: b for k, b in enumerate(plan.packed_blocks)}
        assert len(packed_rows) <= 1 and planner.state()["packed_blocks"] == sum(map(len, plan.packed_blocks))
        assert sum(map(len, plan.packed_blocks)) <= capacity
        for src_row, home, dst_row, index, turn in plan.copies:
            assert (turn == index - home).all()
            for r, h, d, i in zip(src_row, home, dst_row, index):
                slot = (packed_rows[d][i // block_size], i % block_size)
                assert slot not in store, "a token is copied once"
                store[slot] = (worker_of[r], h)
        lengths = [max(tracker.state.workers[w].length, 0) for w in range(workers)]
        expect = [{f.offset + i: (f.source, f.start + i) for f in view for i in range(f.end - f.start)}
                  for w, view in enumerate(tracker.views(lengths)) if f"w{w}" in running]
        for seq, want in zip(plan.seqs, expect):
            whole = SeqView(seq.group, seq.worker, seq.num_rows, seq.first_home, seq.fragments,
                            seq.view_positions, seq.shared).all_fragments()
            assert _tokens_of_view(whole, worker_of, packed_rows, store, block_size) == want
            assert sum(end - start for _, start, end, _ in whole) == len(want)  # no token read twice
        packed_any = max(packed_any, sum(len(c[0]) for c in plan.copies))
        for rid in running:
            ends = rng.random() < (0.3 if rid == "w0" or step > 20 else 0.0)
            requests[rid].output_token_ids.append(END if ends else WORD)
    history = sum(s.end - s.start for s in tracker.state.history)
    packed = planner._groups["g"].packed.packed
    assert packed == min(history, capacity * block_size) and packed_any > 0
    if capacity < 10:
        assert history > packed  # the rest of the history was read as fragments
    planner.finish(["w0", "w1"])
    assert planner.state() == {"groups": 0, "worker_requests": 0, "assembling": 0, "packed_blocks": 0}


@pytest.mark.parametrize("workers", [2, 8])
def test_the_op_over_a_packed_history_equals_the_unpacked_views(workers):
    """Real text's views (3000 tokens of 20-token steps, hundreds of fragments), their
    history packed in two steps as far as a store of 61 blocks allows (it cuts a fragment):
    the op reads the packed run, the rest of the history and the other fragments, equal to
    the float64 oracle over the views as they were; so do the float32, bfloat16 and float16
    paths, against float64 over their own rounded inputs (``paged.OUTPUT_ROUNDOFF``: the
    store keeps turned keys in float32, so packing adds no rounding of its own)."""

    prompt, block_size = 256, 32
    lengths, views = layout_views(workers, 3000, "combined")
    cache = random_cache(lengths, block_size, 3, 64, dtype=torch.float64, gen=torch.Generator().manual_seed(workers))
    q = torch.randn(len(views), 9, 64, dtype=torch.float64)
    packed = packed_views(views, cache.block_table, prompt, block_size, blocks=61, steps=2)
    assert 0 < packed.packed.packed < sum(lengths) - workers * 20
    prepared = cpu_native.prepare(build(packed.views), packed.block_table, block_size, inv_freq_for(64), True, 64,
                                  dtype=torch.float64, stored_from=packed.run_row)
    for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 2e-5), (torch.bfloat16, 2e-5),
                        (torch.float16, 2e-5)):
        keys, values = cache.key.to(dtype), cache.value.to(dtype)
        rounded = type(cache)(keys, values, cache.block_table)
        expect = naive_attention(q.to(dtype), rounded, views, inv_freq_for(64), True, 0.125)
        store = fill_store(packed, keys, values, inv_freq_for(64), True, blocks=64)
        for splits in (0, 3):
            out = cpu_native.fragment_attention(q.to(dtype), keys, values, prepared, 0.125, splits=splits,
                                                store=store)
            err = (out.double() - expect).abs()
            assert (err <= OUTPUT_ROUNDOFF[dtype] * expect.abs() + atol).all(), (dtype, err.max())


def _runner(llm):
    return llm.llm_engine.model_executor.driver_worker.worker.model_runner


@pytest.mark.parametrize("store", ["default", "2 blocks"])
def test_engine_groups_over_packed_histories_equal_the_oracle(store):
    """A group of 4 on the CPU backend reads its history from the packed store, equal to the
    recompute oracle: with the default store (a quarter of the KV cache: all of it packed),
    and with a store of 2 blocks (64 tokens), past which the history is read from the
    cache as fragments. The group's blocks go back to the pool when it ends."""
    from vllm import SamplingParams, TokensPrompt

    from tests.helpers.engines import engine
    from tests.helpers.runs import assert_matches, group_params, oracle_runs, prompt_ids

    # 2 layers x 2 KV heads x 32 slots x (32 + 32) floats = 32 KiB a block
    env = (("VLLM_HOGWILD_CPU_PACKED_GIB", str(2.5 * 2**15 / 2**30)),) if store == "2 blocks" else ()
    llm = engine("llama", env=env)
    ids = prompt_ids("llama")
    params = SamplingParams(**group_params(4, "combined", max_tokens=48))
    out = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
    runs = oracle_runs("llama", ids, 4, "combined", max_tokens=48)
    assert_matches(out, runs)
    runner = _runner(llm)
    history = sum(len(r.generated) for r in runs)  # an upper bound: what was committed is less
    pool = state.of(runner, state.RunnerState).planner._pool
    assert pool.in_use > 0
    # The runner hears that the group ended with the next step's batch.
    llm.generate([TokensPrompt(prompt_token_ids=ids)], SamplingParams(max_tokens=1), use_tqdm=False)
    assert pool.capacity == (2 if store == "2 blocks" else runner.kv_caches[0].shape[0] // 4)
    assert pool.in_use == 0 and state.of(runner, state.RunnerState).planner.state()["packed_blocks"] == 0
    stores = [state.of(layer.impl, state.LayerState).store for layer in runner.compilation_config.static_forward_context.values()]
    assert len(stores) == 2 and all(s.abs().sum() > 0 for s in stores)  # keys were copied into every layer's
    if store == "2 blocks":
        assert history > 64 and all(s.shape[0] == 64 for s in stores)


def test_the_pytorch_op_reads_the_history_unpacked(monkeypatch):
    """Switched to the PyTorch op between batches (as ``cpu_sweep.py --ops`` does), the
    engine hands it the history as fragments of the cache, never rows of the store."""
    from vllm_hogwild import cpu_backend
    from tests.helpers.runs import assert_matches, hogwild, prompt_ids

    monkeypatch.setenv(envs.CPU_OP.name, "torch")
    cpu_backend.fragment_op.cache_clear()
    try:
        assert_matches(*hogwild("llama", prompt_ids("llama"), 4, "combined", max_tokens=48))
    finally:
        monkeypatch.delenv(envs.CPU_OP.name)
        cpu_backend.fragment_op.cache_clear()
    assert_matches(*hogwild("llama", prompt_ids("llama"), 4, "combined", max_tokens=48))


def test_the_store_size_is_read_from_the_environment(monkeypatch):
    """A quarter of the KV cache by default; GiB over all layers when asked; 0 turns packing
    off; a size that is not one is refused, naming the variable."""
    from vllm_hogwild.cpu_backend import packing
    from vllm_hogwild.envs import CPU_PACKED_GIB

    PACKED_ENV = CPU_PACKED_GIB.name

    caches = [torch.zeros(400, 3, 32, 128) for _ in range(2)]  # 2 layers of 400 blocks, 48 KiB a block
    monkeypatch.delenv(PACKED_ENV, raising=False)
    assert packing(caches, 32) == Packing(32, 100)
    monkeypatch.setenv(PACKED_ENV, str(96 * 2**10 * 10.5 / 2**30))  # 10.5 blocks of both layers
    assert packing(caches, 32) == Packing(32, 10)
    monkeypatch.setenv(PACKED_ENV, "0")
    assert packing(caches, 32) is None
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv(PACKED_ENV, bad)
        with pytest.raises(ValueError, match=f"VLLM_HOGWILD_CPU_PACKED_GIB='{bad}': expected a size in GiB"):
            packing(caches, 32)
