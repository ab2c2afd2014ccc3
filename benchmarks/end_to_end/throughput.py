"""Throughput at scale: G problems at once, hogwild against the ways one would run without it.

    python -m benchmarks.end_to_end.throughput [--model PATH] [--workers 4] [--groups 1 8 32] [--max-tokens 128]
                                    [--methods hogwild hogwild-bare independent single] [--layout combined]
                                    [--temperature 0.6] [--repeats 1] [--out benchmarks/results/throughput]

For each G, on one engine and alternating the methods (``--repeats`` rounds), G problems
(from ``--problems``, cycled) are submitted at once:

* ``hogwild``: a group of W workers with the collaboration protocol;
* ``hogwild-bare``: a group of W workers with the bare flag (shared cache, no protocol);
* ``independent``: W independent samples of the same prompt, each with the same per-worker
  ``max_tokens`` (what one runs without hogwild to use W times the compute);
* ``single``: one worker with the protocol (W=1), the same per-worker budget.

Per method and G: output tokens/s, problems/s, sequential depth (engine steps from a
problem's first token to its final answer: mean, p50, p90), wall time to the final answer
from submission (p50, p90), the share of the protocol workers' engine steps spent on forced
(injected) tokens, and the peak of KV blocks in use. The plain methods get the problem in the
model's chat format; ``--ignore-eos`` makes them (not the protocol, which needs EOS) run to
``max_tokens``. Writes ``OUT.json``, ``OUT.md`` and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys


from benchmarks.common import driver  # noqa: E402  (sets vLLM's environment before vLLM is imported)

METHODS = ("hogwild", "hogwild-bare", "independent", "single")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    driver.engine_options(p)
    p.add_argument("--problems", default=driver.DEFAULT_PROBLEMS, help="JSONL problem file (cycled to fill G)")
    p.add_argument("--workers", type=int, default=4, help="W, workers per group (and independent samples)")
    p.add_argument("--groups", type=int, nargs="+", default=[1, 8, 32], help="G values: problems at once")
    p.add_argument("--max-tokens", type=int, default=128, help="per-worker budget (every method)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--layout", default="combined", choices=["contiguous", "interleaved", "combined"])
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--ignore-eos", action="store_true", help="plain methods run to max_tokens")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds of all methods per G")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed G=1 round of each method")
    p.add_argument("--out", help="write OUT.json, OUT.md, OUT.png")
    args = p.parse_args(argv)
    if not 1 <= args.workers <= 16:
        p.error(f"--workers: expected 1..16, got {args.workers}")
    if min(args.groups) < 1 or args.repeats < 1:
        p.error("--groups and --repeats: expected positive integers")
    return args


def requests(method: str, problem: str, args: argparse.Namespace, chat) -> list[driver.Request]:
    from vllm import SamplingParams

    base = dict(temperature=args.temperature, max_tokens=args.max_tokens)
    if method == "hogwild":
        flags = {"hogwild_workers": args.workers, "hogwild_layout": args.layout, "hogwild_protocol": True}
        return [driver.Request(problem, SamplingParams(**base, extra_args=flags))]
    if method == "single":
        flags = {"hogwild_workers": 1, "hogwild_protocol": True}
        return [driver.Request(problem, SamplingParams(**base, extra_args=flags))]
    plain = SamplingParams(**base, ignore_eos=args.ignore_eos)
    if method == "hogwild-bare":
        flags = {"hogwild_workers": args.workers, "hogwild_layout": args.layout}
        return [driver.Request(chat(problem), SamplingParams(**base, ignore_eos=args.ignore_eos, extra_args=flags))]
    return [driver.Request(chat(problem), plain) for _ in range(args.workers)]


def summarize(batches: list[driver.Batch], groups: int) -> dict:
    depths = [s.depth for b in batches for s in b.solved]
    seconds = [s.seconds for b in batches for s in b.solved]
    worker_steps = sum(b.worker_steps for b in batches)
    return {
        "groups": groups,
        "tokens_per_s": statistics.median(b.tokens / b.seconds for b in batches),
        "problems_per_s": statistics.median(groups / b.seconds for b in batches),
        "tokens_per_problem": statistics.mean(b.tokens / groups for b in batches),
        "engine_steps": statistics.median(b.steps for b in batches),
        "depth_mean": statistics.mean(depths), "depth_p50": driver.percentile(depths, 50),
        "depth_p90": driver.percentile(depths, 90),
        "seconds_p50": driver.percentile(seconds, 50), "seconds_p90": driver.percentile(seconds, 90),
        "forced_share": sum(b.forced_steps for b in batches) / worker_steps if worker_steps else 0.0,
        "peak_kv_blocks": max(b.peak_blocks for b in batches),
        "runs": [{"seconds": b.seconds, "tokens": b.tokens, "steps": b.steps} for b in batches],
    }


def run(args: argparse.Namespace) -> dict:
    problems = [p.text for p in driver.problems(args.problems)]
    model = driver.model_path(args.model)
    protocol = bool({"hogwild", "single"} & set(args.methods))
    driver.check_budgets(model, [args.max_tokens], args.workers, args.max_model_len, protocol)
    llm = driver.engine_from(args, model)
    tokenizer = llm.get_tokenizer()

    def chat(text: str) -> str:
        return driver.chat_prompt(tokenizer, text)

    def batch(method: str, g: int, tag: str) -> driver.Batch:
        chosen = [problems[i % len(problems)] for i in range(g)]
        return driver.run_batch(llm, [requests(method, p, args, chat) for p in chosen], tag)

    for method in [] if args.no_warmup else args.methods:  # the first steps of a fresh engine are slow
        batch(method, 1, f"warmup-{method}")
    results: dict[str, dict[int, list[driver.Batch]]] = {m: {} for m in args.methods}
    for g in args.groups:
        for r in range(args.repeats):
            for method in args.methods:
                results[method].setdefault(g, []).append(batch(method, g, f"{method}-g{g}-r{r}"))
                b = results[method][g][-1]
                print(f"G={g:<3} {method:<13} {b.tokens / b.seconds:8.1f} tokens/s  {b.steps:5d} steps "
                      f"{b.seconds:7.1f} s", file=sys.stderr, flush=True)
    return {
        "benchmark": "throughput", "command": "python -m benchmarks.end_to_end.throughput " + " ".join(sys.argv[1:]),
        "model": llm.llm_engine.model_config.model, "machine": driver.machine(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "results": {m: [summarize(results[m][g], g) for g in args.groups] for m in args.methods},
    }


COLUMNS = [("tokens/s", "tokens_per_s", "{:.1f}"), ("problems/s", "problems_per_s", "{:.3f}"),
           ("tokens/problem", "tokens_per_problem", "{:.0f}"), ("depth mean", "depth_mean", "{:.1f}"),
           ("depth p50", "depth_p50", "{:.0f}"), ("depth p90", "depth_p90", "{:.0f}"),
           ("answer s p50", "seconds_p50", "{:.1f}"), ("answer s p90", "seconds_p90", "{:.1f}"),
           ("forced steps", "forced_share", "{:.1%}"), ("peak KV blocks", "peak_kv_blocks", "{}")]


def table(report: dict) -> str:
    lines = ["| G | method | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    groups = report["config"]["groups"]
    for i, g in enumerate(groups):
        for method, rows in report["results"].items():
            row = rows[i]
            lines.append(f"| {g} | {method} | " + " | ".join(f.format(row[k]) for _, k, f in COLUMNS) + " |")
    if "independent" in report["results"]:
        lines.append("")
        for i, g in enumerate(groups):
            base = report["results"]["independent"][i]["tokens_per_s"]
            ratios = [f"{m} {rows[i]['tokens_per_s'] / base:.2f}x" for m, rows in report["results"].items()
                      if m != "independent"]
            lines.append(f"- G={g}, tokens/s against independent: " + ", ".join(ratios))
    return "\n".join(lines) + "\n"


def plot(report: dict):
    import matplotlib.pyplot as plt

    groups = report["config"]["groups"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method, rows in report["results"].items():
        left.plot(groups, [r["tokens_per_s"] for r in rows], marker="o", label=method)
        right.plot(groups, [r["depth_p50"] for r in rows], marker="o", label=method)
    for ax, label in ((left, "output tokens/s"), (right, "engine steps to answer (p50)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(groups, [str(g) for g in groups])
        ax.set_xlabel("problems at once (G)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    left.legend()
    cfg = report["config"]
    fig.suptitle(f"{os.path.basename(report['model'].rstrip('/'))}: W={cfg['workers']}, "
                 f"{cfg['max_tokens']} tokens per worker, {cfg['layout']} layout")
    return fig


def main(argv: list[str] | None = None) -> dict:
    return driver.report(parse_args(argv), run, table, plot)


if __name__ == "__main__":
    main()
