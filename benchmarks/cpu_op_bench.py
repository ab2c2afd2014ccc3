"""The CPU fragment op, one layer: shared keys packed vs tiles only, by context length.

    python benchmarks/cpu_op_bench.py --out benchmarks/results/cpu_op.json

A decode step of one group of W workers with the combined layout's views (a history of
20-token steps, ``paged.layout_views``), SmolLM2-135M's attention shapes (9 query / 3 KV
heads, head_dim 64), vLLM's CPU cache layout (keys dimension-major, values
token-major), block size 32, float32. Each figure is the median over ``--repeats``
alternating runs of the two schedules (this machine's timings drift by 2x and more),
each run the mean of 10 calls. This is what ``cpu_op.prepare``'s ``pack_from`` is set
from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import timeit

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from hogwild_kernels import build, cpu_op  # noqa: E402
from paged import inv_freq_for, layout_views, random_cache  # noqa: E402

SCHEDULES = {"packed": 0, "tiles": 1 << 62}  # pack_from: always, never


def run(workers: int, context: int, repeats: int) -> dict:
    lengths, views = layout_views(workers, context, "combined")
    cache = random_cache(lengths, 32, 3, 64, gen=torch.Generator().manual_seed(context))
    keys = cache.key.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # vLLM's CPU layouts, as views
    values = cache.value.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    table = build(views)
    inv_freq = inv_freq_for(64)
    q = torch.randn(workers, 9, 64)
    prepared = {name: cpu_op.prepare(table, cache.block_table, 32, inv_freq, True, 64, pack_from=pack_from)
                for name, pack_from in SCHEDULES.items()}
    outs = [cpu_op.fragment_attention(q, keys, values, p, 0.125) for p in prepared.values()]
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    times: dict[str, list[float]] = {name: [] for name in prepared}
    for _ in range(repeats):
        for name, p in prepared.items():
            call = lambda: cpu_op.fragment_attention(q, keys, values, p, 0.125)  # noqa: E731
            times[name].append(timeit.timeit(call, number=10) / 10 * 1e3)
    return {"workers": workers, "context": context, "fragments_per_view": len(views[0].fragments),
            "ms_per_layer": {name: statistics.median(v) for name, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "cpu_op.json"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "command": " ".join(sys.argv),
              "date": time.strftime("%Y-%m-%d"), "runs": []}
    for context in args.contexts:
        r = run(args.workers, context, args.repeats)
        result["runs"].append(r)
        ms = r["ms_per_layer"]
        print(f"C={context:5d} ({r['fragments_per_view']} fragments a view): packed {ms['packed']:6.2f} ms"
              f"  tiles {ms['tiles']:6.2f} ms per layer", flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
