"""Host-side cost of one decode step of a hogwild group: CPU only, no model, no vLLM engine.

    python -m benchmarks.cpu.plan_bench --out benchmarks/results/plan_step.json

Every engine step, before any attention runs, the plugin turns the group's state into
the fragment op's inputs, in Python on the host: the planner (commits finished steps,
builds every worker's view), the fragment table (cuts views into shared sources) and
the Triton launch plan. That work grows with the number of committed steps in the
views, so it is timed here at growing shared contexts: W workers decode one token each
per step, and each worker ends a step every ``--step-tokens`` tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import torch

from benchmarks.common import driver, paths  # noqa: E402

from hogwild_kernels import build, triton_op  # noqa: E402
from vllm_hogwild.attention import step_rows  # noqa: E402
from tests.helpers.planned import END, WORD, planned_group  # noqa: E402


def run(workers: int, layout: str, context: int, step_tokens: int, prompt: int, sample: int) -> dict:
    planner, requests = planned_group(workers, layout, prompt, boundary=".")
    block_table = torch.zeros(workers, context // 16 + 64, dtype=torch.int32)
    times: dict[str, list[float]] = {"planner": [], "table": [], "launch": []}
    fragments = sources = 0
    steps = (context - prompt) // workers
    for step in range(steps):
        rows = [(rid, 1, len(r.prompt_token_ids) + len(r.output_token_ids) + 1) for rid, r in requests.items()]
        t0 = time.perf_counter()
        plan = planner.plan(rows)
        t1 = time.perf_counter()
        batch = step_rows(plan, list(range(workers + 1)), block_table, workers, workers)
        table = build(batch.views)
        t2 = time.perf_counter()
        triton_op.plan(table, 4, row_index=batch.rows)
        t3 = time.perf_counter()
        if step >= steps - sample:
            for name, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[name].append(dt * 1e3)
            fragments = sum(len(s.fragments) + (0 if s.shared is None else s.shared[0].size) for s in plan.seqs)
            sources = table.src_row.numel()
        for w, r in enumerate(requests.values()):
            # Workers end their steps at staggered times, as real ones do.
            r.output_token_ids.append(END if (len(r.output_token_ids) + 7 * w) % step_tokens == step_tokens - 1
                                      else WORD)
    ms = {name: statistics.median(v) for name, v in times.items()}
    return {"workers": workers, "layout": layout, "context": context, "step_tokens": step_tokens,
            "fragments_in_views": fragments, "sources": sources, "ms": ms, "total_ms": sum(ms.values())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(paths.RESULTS, "plan_step.json"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--layouts", nargs="+", default=["combined", "interleaved", "contiguous"])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--step-tokens", type=int, default=20)
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--sample", type=int, default=50, help="last steps timed (median)")
    args = parser.parse_args()
    result = {"machine": driver.machine(), "command": paths.command(),
              "date": time.strftime("%Y-%m-%d"), "runs": []}
    for layout in args.layouts:
        for context in args.contexts:
            r = run(args.workers, layout, context, args.step_tokens, args.prompt_tokens, args.sample)
            result["runs"].append(r)
            ms = r["ms"]
            print(f"{layout:11s} C={context:6d}: planner {ms['planner']:6.2f} ms  table {ms['table']:6.2f} ms  "
                  f"launch plan {ms['launch']:5.2f} ms  total {r['total_ms']:6.2f} ms  "
                  f"({r['fragments_in_views']} fragments in {args.workers} views, {r['sources']} sources)", flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
