"""The CPU fragment op, one layer of a decode step: the compiled op against the PyTorch one,
and, for layouts with a committed history, the compiled op reading the history packed.

    python -m benchmarks.cpu.cpu_op_bench [--workers 4 8] [--contexts 1000 4000] [--dtypes float32]
                                      [--layouts contiguous combined] [--windows 0 128]
                                      [--isa native x86-64-v3] [--out benchmarks/results/cpu_op.json]

A decode step of one group of W workers over a context of C tokens, the views the plugin's
layouts build (``tests/paged.layout_views``: combined = 20-token steps of every worker,
hundreds of fragments per view), SmolLM2-135M's attention shapes (9 query / 3 KV heads,
head_dim 64), vLLM's CPU cache layout (keys dimension-major, values token-major), block
size 32, the model dtypes of ``--dtypes`` (float32, bfloat16, float16: cache, queries and
output; the ops sum in float32), 2 threads. Each call runs the step's layers over ``--layers`` separate
caches (12 by default: more than this machine's 32 MB L3 at 4000 tokens), as a model does,
so that keys come from memory and not from the cache of the previous call. Each figure is
the median over ``--repeats`` alternating runs of the ops (this machine's timings drift by
10-20%), per layer. ``prepare`` (the per-step work list, once for all layers) is timed apart.
``packed``: the compiled op with the whole history in the packed store
(``vllm_hogwild/packing.py``), as the plugin runs it; filling the store (a few tokens a step)
is not timed. ``--windows``: sliding windows of that many view positions (0: none), every
layer windowed, as a Mistral-style model; past the window a step's cost should stop growing
with the context. ``--isa``: the compiled op as built for each of these x86 levels
(``VLLM_HOGWILD_CPU_ISA``: native, x86-64-v3 = AVX2 + FMA, x86-64-v4 = AVX-512), side by side
in the same rounds, so that one machine times another kind of CPU's build (any level it runs).
The machine record names the CPU and its ISA flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import timeit

import torch

from benchmarks.common import driver, paths  # noqa: E402
from hogwild_kernels import build, cpu_native, cpu_op, isa  # noqa: E402
from tests.helpers.paged import fill_store, inv_freq_for, layout_views, packed_views, random_cache  # noqa: E402
from vllm_hogwild import envs  # noqa: E402

class Level:
    """The compiled op as built for one x86 level (``VLLM_HOGWILD_CPU_ISA``): each call runs
    with the variable set to it, so builds of several levels alternate in one process."""

    def __init__(self, level: str):
        self.level = level

    def __getattr__(self, name):
        fn = getattr(cpu_native, name)

        def call(*args, **kwargs):
            before = os.environ.get(envs.CPU_ISA.name)
            os.environ[envs.CPU_ISA.name] = self.level
            try:
                return fn(*args, **kwargs)
            finally:
                if before is None:
                    del os.environ[envs.CPU_ISA.name]
                else:
                    os.environ[envs.CPU_ISA.name] = before
        return call


def run(workers: int, context: int, layout: str, layers: int, repeats: int, dtype: str = "float32",
        window: int = 0, levels: tuple[str, ...] = ("native",)) -> dict:
    lengths, views = layout_views(workers, context, layout)
    cache = random_cache(lengths, 32, 3, 64, dtype=getattr(torch, dtype), gen=torch.Generator().manual_seed(context))
    caches = [(cache.key.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),  # vLLM's CPU layouts, as views
               cache.value.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)) for _ in range(layers)]
    inv_freq = inv_freq_for(64)
    q = torch.randn(workers, 9, 64).to(getattr(torch, dtype))

    def prepare(op):
        return op.prepare(build(views), cache.block_table, 32, inv_freq, True, 64, window=window)

    # name: (op, its prepare, the packed stores or None); one compiled op per build level.
    # The compiled op's names: "native" and "packed" for the one build, "compiled LEVEL" and
    # "packed LEVEL" where several levels are timed.
    ops = {("" if levels == ("native",) else f" {at}"): Level(at) for at in levels}
    calls = {("native" if not label else f"compiled{label}"): (op, prepare, None) for label, op in ops.items()}
    calls["torch"] = (cpu_op, prepare, None)
    if layout != "contiguous":
        packed = packed_views(views, cache.block_table, 256, 32, blocks=context // 32 + 1)
        stores = [fill_store(packed, k, v, inv_freq, True, context // 32 + 1) for k, v in caches]

        def prepare_packed(op):
            return op.prepare(build(packed.views), packed.block_table, 32, inv_freq, True, 64,
                              stored_from=packed.run_row, window=window)

        for label, op in ops.items():
            calls[f"packed{label}"] = (op, prepare_packed, stores)
    prepared = {name: prep(op) for name, (op, prep, _) in calls.items()}
    outs = {name: op.fragment_attention(q, *caches[0], prepared[name], 0.125,
                                        **({} if stores is None else {"store": stores[0]}))
            for name, (op, _, stores) in calls.items()}
    rounding = 0.0 if dtype == "float32" else 2.0**-7  # two roundings of the output, one ulp apart at most
    for name, out in outs.items():
        # bfloat16 dots round the query and the weights too (tests/kernels/test_cpu_native.py holds them
        # to their bound): here only a sanity check, at a bfloat16 ulp of values of ~1.
        op = calls[name][0]
        dots = op is not cpu_op and op.bf16_dots(caches[0][0])
        assert torch.allclose(out.float(), outs["torch"].float(), atol=2.0**-7 if dots else 1e-5, rtol=rounding), name
    times: dict[str, list[float]] = {name: [] for name in calls}
    prep: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (op, prepare_of, stores) in calls.items():
            p = prepared[name]
            if stores is None:
                step = lambda: [op.fragment_attention(q, k, v, p, 0.125) for k, v in caches]  # noqa: E731
            else:
                step = lambda: [op.fragment_attention(q, k, v, p, 0.125, store=s)  # noqa: E731
                                for (k, v), s in zip(caches, stores)]
            times[name].append(timeit.timeit(step, number=2) / (2 * layers) * 1e3)
            prep[name].append(timeit.timeit(lambda: prepare_of(op), number=3) / 3 * 1e3)
    return {"workers": workers, "context": context, "layout": layout, "dtype": dtype, "window": window,
            "bf16_dots": {name: bool(op is not cpu_op and op.bf16_dots(caches[0][0])) for name, (op, _, _) in calls.items()},
            "fragments_per_view": len(views[0].fragments),
            "ms_per_layer": {name: statistics.median(v) for name, v in times.items()},
            "ms_prepare_per_step": {name: statistics.median(v) for name, v in prep.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(paths.RESULTS, "cpu_op.json"))
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--layouts", nargs="+", default=["contiguous", "combined"],
                        choices=["contiguous", "interleaved", "combined"])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--windows", type=int, nargs="+", default=[0])
    parser.add_argument("--isa", nargs="+", default=["native"], choices=list(isa.LEVELS),
                        help="build levels of the compiled op to compare side by side (VLLM_HOGWILD_CPU_ISA)")
    args = parser.parse_args()
    for at in args.isa:
        if not Level(at).available():
            sys.exit(f"cpu_op_bench: the compiled op for {at} does not run here (see the warning above)")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    result = {"machine": driver.machine(), "command": paths.command(),
              "date": time.strftime("%Y-%m-%d"), "runs": []}
    for workers in args.workers:
        for context in args.contexts:
            for layout in args.layouts:
                for dtype in args.dtypes:
                    for window in args.windows:
                        r = run(workers, context, layout, args.layers, args.repeats, dtype, window,
                                tuple(args.isa))
                        result["runs"].append(r)
                        ms, prep = r["ms_per_layer"], r["ms_prepare_per_step"]
                        print(f"W={workers} C={context:5d} {layout:11s} {dtype:8s} window {window:4d} "
                              f"({r['fragments_per_view']:3d} fragments a view), ms per layer: "
                              + ", ".join(f"{k} {v:6.3f}" for k, v in ms.items())
                              + "; work list " + " / ".join(f"{k} {v:5.2f}" for k, v in prep.items()) + " ms per step",
                              flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
