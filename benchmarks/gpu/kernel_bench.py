"""Fragment-attention kernel benchmark: needs only torch and triton (and a GPU).

    python -m benchmarks.gpu.kernel_bench --out benchmarks/results/kernel_h100

1. Correctness in compiled mode: the Triton kernel against a float64 oracle that
   re-rotates keys, on fresh random paged inputs (with and without a shared history of
   short fragments), fp32 / fp16 / bf16, several shapes.
2. Decode timing, Qwen3-8B-like heads (32 query, 8 KV, head_dim 128), bf16: one group of
   W workers over a shared context of C tokens, each worker's query its own last token,
   with the views the plugin's layouts build (``vllm_hogwild.layouts``, pure Python):
   contiguous (a long prompt, then every worker's stream: few long fragments) and
   combined (a short prompt, then a history of 20-token steps of all workers, then their
   current steps: hundreds of short fragments, as real runs have). Against
   (a) W independent sequences of C tokens each: torch SDPA, and the same Triton kernel
       with W one-worker groups (standard paged decode, each over its own copy);
   (b) the naive way: gather and re-rotate the keys of each worker's view, then SDPA.
   Bytes the op must move: the group's KV once (K and V, C tokens) plus q and out.
   The map of the shared keys (cache slot, view position) is built once per step for all
   layers, so it is timed on its own (``key_map_per_step``), not in each call. Columns
   ``ours_fused_merge`` and ``ours_unpacked`` time the two options of the kernel.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import time

import torch

from benchmarks.common import paths  # noqa: E402
from benchmarks.gpu.standalone import load_kernels  # noqa: E402

load_kernels()
import triton  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hogwild_kernels import build, triton_op  # noqa: E402
from hogwild_kernels.gpu import kernel  # noqa: E402
from hogwild_kernels.rotary import rotate  # noqa: E402
from hogwild_kernels.table import SeqView  # noqa: E402
from tests.helpers.paged import inv_freq_for, layout_views, naive_attention, random_cache, random_views  # noqa: E402

HQ, HKV, D, BLOCK = 32, 8, 128, 16


def check_correctness() -> list[dict]:
    rows = []
    cases = [(16, 8, 4, 128, 128, True, 4, True), (16, 2, 3, 64, 32, False, 3, False),
             (32, 1, 8, 128, 64, True, 8, True), (128, 4, 1, 64, 64, False, 2, False)]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for ci, (bs, hkv, grp, hd, rd, neox, w, decode) in enumerate(cases):
            for seed in range(2):
                rng = random.Random(seed * 100 + ci)
                gen = torch.Generator().manual_seed(seed * 100 + ci)
                lengths, views = random_views(rng, 3, w, bs, 700, decode, shared=seed == 1)
                cache = random_cache(lengths, bs, hkv, hd, gen=gen)
                q = torch.randn(sum(v.num_rows for v in views), hkv * grp, hd, generator=gen)
                inv = inv_freq_for(rd, 1e6)
                # Round inputs to the dtype first so the oracle sees what the kernel sees.
                cache.key, cache.value, q = cache.key.to(dtype), cache.value.to(dtype), q.to(dtype)
                ref = naive_attention(q, cache, views, inv, neox, hd**-0.5)
                table = build(views, "cuda")
                # The caches as separate tensors, and as views of one vLLM Triton-layout cache.
                kv = torch.cat([cache.key, cache.value], dim=-1).transpose(1, 2).contiguous().cuda()
                layouts = {"separate": (cache.key.cuda(), cache.value.cuda()),
                           "vllm_triton": triton_op.vllm_caches(kv, hd)}
                for (layout, (key_cache, value_cache)), fused in itertools.product(layouts.items(), (False, True)):
                    out = torch.full(q.shape, float("nan"), dtype=dtype, device="cuda")
                    triton_op.fragment_attention(q.cuda(), key_cache, value_cache, cache.block_table.cuda(),
                                                 table, inv.cuda(), neox, hd**-0.5, out=out, fused_merge=fused)
                    torch.cuda.synchronize()
                    err = ((out.double().cpu() - ref).norm() / ref.norm()).item()
                    rows.append({"dtype": str(dtype), "case": ci, "seed": seed, "layout": layout,
                                 "fused_merge": fused, "rel_err": err, "unwritten": int(out.isnan().sum())})
    return rows


def copy_bandwidth() -> float:
    x = torch.randn(512 * 1024 * 1024 // 2, dtype=torch.bfloat16, device="cuda")  # 512 MiB
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    return 2 * x.numel() * x.element_size() / (ms * 1e-3)


def gpu_caches(lengths: list[int], gen: torch.Generator, copies: int):
    """``copies`` random bf16 paged caches on the GPU with one block table (from the test
    helper): the copies defeat L2, the one table lets a step's key map serve them all."""
    table = random_cache(lengths, BLOCK, 1, 1, gen=gen)
    shape = (table.key.shape[0], BLOCK, HKV, D)
    caches = []
    for _ in range(copies):
        k = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        caches.append((k, torch.randn_like(k)))
    return caches, table.block_table.cuda()


def decode_case(workers: int, context: int, inv: torch.Tensor, opts: dict | None = None,
                only_ours: bool = False, layout: str = "contiguous") -> dict:
    opts = dict(opts or {})
    block_n = opts.pop("block_n", 64)
    pack_shared = opts.pop("pack_shared", True)
    lengths, views = layout_views(workers, context, layout)
    tokens = sum(lengths)
    copies = max(1, math.ceil(256 * 2**20 / (tokens * HKV * D * 2 * 2)))  # defeat L2
    gen = torch.Generator().manual_seed(workers * 7 + context)
    caches, bt = gpu_caches(lengths, gen, copies)
    table = build(views, "cuda")
    launches = {pack: triton_op.plan(table, HQ // HKV, block_n=block_n, pack_shared=pack) for pack in (True, False)}
    # Once per step in the plugin, for all layers: timed on its own below.
    keys = {pack: triton_op.map_shared_keys(table, launch, bt, BLOCK) for pack, launch in launches.items()}
    q = torch.randn(workers, HQ, D, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    scale = D**-0.5
    def ours(i, pack=pack_shared, **more):
        k, v = caches[i % copies]
        triton_op.fragment_attention(q, k, v, bt, table, inv, True, scale, out=out, launch=launches[pack],
                                     keys=keys[pack], **opts, **more)

    def key_map(i):
        triton_op.map_shared_keys(table, launches[True], bt, BLOCK)

    def ours_fused(i):
        ours(i, fused_merge=True)

    def ours_unpacked(i):
        ours(i, pack=False)

    if only_ours:
        ours(0)
        torch.cuda.synchronize()
        ms = triton.testing.do_bench_cudagraph(lambda: [ours(i) for i in range(copies)], rep=100,
                                               return_mode="median")
        return {"ms": {"ours": ms / copies}}

    # (a) W independent sequences of `context` tokens each.
    ind_k = [torch.randn(workers, HKV, context, D, device="cuda", dtype=torch.bfloat16)
             for _ in range(copies)]
    ind_v = [torch.randn_like(k) for k in ind_k]
    q4 = q[:, :, None, :]

    def sdpa_independent(i):
        i = i % len(ind_k)
        F.scaled_dot_product_attention(q4, ind_k[i], ind_v[i], enable_gqa=True)

    ind_lengths = [context] * workers
    ind_caches, ind_bt = gpu_caches(ind_lengths, gen, copies)
    ind_views = [SeqView(w, 0, 1, context - 1, [(w, 0, context, 0)], [context - 1]) for w in range(workers)]
    ind_table = build(ind_views, "cuda")
    ind_launch = triton_op.plan(ind_table, HQ // HKV)
    ind_keys = triton_op.map_shared_keys(ind_table, ind_launch, ind_bt, BLOCK)

    def paged_independent(i):
        k, v = ind_caches[i % len(ind_caches)]
        triton_op.fragment_attention(q, k, v, ind_bt, ind_table, inv, True, scale, out=out, launch=ind_launch,
                                     keys=ind_keys)

    # (b) naive: gather each worker's view, re-rotate its keys, then SDPA.
    gather_idx, shifts = [], []
    for view in views:
        slots, shift = [], []
        for src, a, b, o in view.all_fragments():
            home = torch.arange(a, b)
            slots.append(bt[src].cpu()[home // BLOCK].long() * BLOCK + home % BLOCK)
            shift.append(torch.full((b - a,), o - a))
        gather_idx.append(torch.cat(slots).cuda())
        shifts.append(torch.cat(shift).cuda())

    q_shift = [torch.tensor([v.view_positions[0] - v.first_home], device="cuda") for v in views]

    def naive(i):
        k, v = caches[i % copies]
        kf, vf = k.view(-1, HKV, D), v.view(-1, HKV, D)
        outs = []
        for w in range(workers):
            kw = rotate(kf[gather_idx[w]], shifts[w][:, None], inv, True)
            vw = vf[gather_idx[w]]
            qw = rotate(q[w], q_shift[w], inv, True)
            outs.append(F.scaled_dot_product_attention(qw[None, :, None], kw.transpose(0, 1)[None],
                                                       vw.transpose(0, 1)[None], enable_gqa=True))
        return outs

    expect = torch.stack([o[0, :, 0] for o in naive(0)]).float()
    check = 0.0
    for fn in (ours, ours_fused, ours_unpacked):
        out.fill_(float("nan"))
        fn(0)
        check = max(check, ((out.float() - expect).norm() / expect.norm()).item())

    times = {}
    for name, fn in [("ours", ours), ("ours_fused_merge", ours_fused), ("ours_unpacked", ours_unpacked),
                     ("key_map_per_step", key_map), ("paged_independent", paged_independent),
                     ("sdpa_independent", sdpa_independent), ("naive_rerotate", naive)]:
        # One CUDA graph runs every copy (so L2 holds none of them); time per call.
        fn(0)
        torch.cuda.synchronize()
        ms = triton.testing.do_bench_cudagraph(lambda: [fn(i) for i in range(copies)], rep=200,
                                               return_mode="median")
        times[name] = ms / copies
    bytes_moved = tokens * HKV * D * 2 * 2 + 2 * workers * HQ * D * 2
    return {"layout": layout, "workers": workers, "context": context, "tokens": tokens,
            "fragments_per_view": len(views[0].fragments), "sources": table.src_row.numel(), "ms": times,
            "bytes": bytes_moved, "rel_err_vs_naive": check, "ours_GBps": bytes_moved / (times["ours"] * 1e-3) / 1e9}


def compiled_resources() -> list[dict]:
    """Registers and spills of every kernel variant this run compiled, as the GPU's driver
    reports them: the ground truth for ``kernel_resources.py``'s offline figures."""
    rows = []
    for fn in (kernel._fragment_attn_kernel, kernel._merge_splits_kernel, kernel._map_shared_keys_kernel):
        for kernels in fn.device_caches.values():
            for k in kernels[0].values():
                rows.append({"kernel": k.metadata.name, "num_warps": k.metadata.num_warps,
                             "num_stages": k.metadata.num_stages, "shared_bytes": k.metadata.shared,
                             "registers": k.n_regs, "spilled_bytes": k.n_spills})
    return rows


def sweep(inv: torch.Tensor, layouts_: list[str]) -> list[dict]:
    """Tile size, split factor, warps, stages and merge for the kernel at C=16k."""
    rows = []
    # Split factor 1 and 32-key tiles lost everywhere in the first sweep (kernel_h100_sweep_v1).
    grid = itertools.product(layouts_, (4, 8), (64, 128), (2, 4), (4, 8), (2, 3), (False, True))
    for layout, workers, block_n, split_factor, num_warps, num_stages, fused_merge in grid:
        opts = dict(block_n=block_n, split_factor=split_factor, num_warps=num_warps, num_stages=num_stages,
                    fused_merge=fused_merge)
        ms = decode_case(workers, 16384, inv, opts, only_ours=True, layout=layout)["ms"]["ours"]
        rows.append({"layout": layout, "workers": workers, **opts, "us": ms * 1e3})
        print(f"sweep {layout} W={workers} {opts}: {ms * 1e3:.1f} us", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(paths.RESULTS, "kernel"))
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--contexts", default="4096,16384,65536")
    parser.add_argument("--layouts", default="contiguous,combined")
    parser.add_argument("--sweep", action="store_true", help="tune tile / split / warps at C=16k")
    args = parser.parse_args()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    props = torch.cuda.get_device_properties(0)
    result = {"device": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
              "triton": triton.__version__, "command": paths.command(), "date": time.strftime("%Y-%m-%d")}
    t0 = time.time()
    result["correctness"] = [] if os.environ.get("SKIP_CHECK") else check_correctness()
    worst = {}
    for r in result["correctness"]:
        worst[r["dtype"]] = max(worst.get(r["dtype"], 0.0), r["rel_err"])
        assert r["unwritten"] == 0, r
    print("correctness (max rel err vs float64):", worst, f"{time.time() - t0:.0f}s", flush=True)
    result["copy_GBps"] = copy_bandwidth() / 1e9
    print(f"copy bandwidth: {result['copy_GBps']:.0f} GB/s (read + write)", flush=True)
    inv = inv_freq_for(D, 1e6).cuda()
    if args.sweep:
        result["sweep"] = sweep(inv, args.layouts.split(","))
    result["decode"] = []
    for layout, c, w in itertools.product(args.layouts.split(","), map(int, args.contexts.split(",")),
                                          map(int, args.workers.split(","))):
        r = decode_case(w, c, inv, layout=layout)
        r["ours_frac_copy_bw"] = r["ours_GBps"] / result["copy_GBps"]
        result["decode"].append(r)
        ms = {k: v * 1e3 for k, v in r["ms"].items()}
        print(f"{layout:10s} C={c:6d} W={w} ({r['sources']} sources): ours {ms['ours']:8.1f} us"
              f"  fused-merge {ms['ours_fused_merge']:8.1f}  unpacked {ms['ours_unpacked']:8.1f}"
              f"  key map (per step) {ms['key_map_per_step']:6.1f}"
              f"  paged-indep {ms['paged_independent']:8.1f}  sdpa-indep {ms['sdpa_independent']:8.1f}"
              f"  naive {ms['naive_rerotate']:8.1f}  err {r['rel_err_vs_naive']:.1e}"
              f"  {r['ours_GBps']:6.0f} GB/s ({100 * r['ours_frac_copy_bw']:.0f}% of copy)", flush=True)
    result["compiled"] = compiled_resources()
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
