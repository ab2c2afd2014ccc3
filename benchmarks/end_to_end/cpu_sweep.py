"""CPU speed on real text: a group of W workers against W independent requests, by layout,
W and length, on one engine.

    python -m benchmarks.end_to_end.cpu_sweep [--model PATH] [--workers 2 4 8] [--lengths 128:8 1024:1]
                                   [--layouts contiguous interleaved combined] [--ops native]
                                   [--dtypes float32] [--repeats 1] [--out benchmarks/results/cpu_sweep]

``--lengths TOKENS:G``: TOKENS new tokens per worker (fewer where W workers' tokens and the
prompt would not fit ``--max-model-len``, default 8192: the row says so), G problems at once. For each W and
length, each round alternates, on one engine: W independent requests per problem (the
plain chat prompt, what one runs without hogwild), then one hogwild group per problem
with the bare flag (shared cache, no protocol, the same prompt) for every layout and
every CPU fragment op of ``--ops`` (``native``: the compiled op; ``torch``: the PyTorch
one, to compare; the engine runs in this process, so the op is switched between
batches). All requests sample at ``--temperature`` (default 0.6: greedy workers of one
group would all write one text, which never ends a step), ignore EOS and run to TOKENS, so
every variant produces the same number of tokens. Reported: output tokens/s (median over rounds) and
its ratio to the independent requests of the same round and dtype.

``--dtypes``: one engine per model dtype (float32, bfloat16, float16), all in this process
and stepped one at a time; every round alternates every variant of every dtype.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys


from benchmarks.common import driver  # noqa: E402  (sets vLLM's environment before vLLM is imported)
from vllm_hogwild import envs  # noqa: E402

LAYOUTS = ("contiguous", "interleaved", "combined")
OPS = ("native", "torch")
PROMPT_ROOM = 256  # context left for the prompt


def length(text: str) -> tuple[int, int]:
    try:
        tokens, groups = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TOKENS:G (two positive integers), got {text!r}") from None
    if tokens < 1 or groups < 1:
        raise argparse.ArgumentTypeError(f"expected TOKENS:G (two positive integers), got {text!r}")
    return tokens, groups


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    driver.engine_options(p)
    p.add_argument("--problems", default=driver.DEFAULT_PROBLEMS, help="JSONL problem file (cycled to fill G)")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--lengths", type=length, nargs="+", default=[(128, 8), (1024, 1)], metavar="TOKENS:G")
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    p.add_argument("--ops", nargs="+", default=["native"], choices=OPS)
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--temperature", type=float, default=0.6,
                   help="every request's (greedy W-worker groups write W copies of one text)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", help="write OUT.json, OUT.md, OUT.png")
    p.set_defaults(max_model_len=8192)  # SmolLM2's positions
    args = p.parse_args(argv)
    if min(args.workers) < 1 or max(args.workers) > 16 or args.repeats < 1:
        p.error("--workers: expected 1..16; --repeats: a positive integer")
    return args


def fitted(tokens: int, workers: int, max_model_len: int) -> int:
    """Tokens per worker that fit: a group's W workers and its prompt share one context."""
    return min(tokens, (max_model_len - PROMPT_ROOM) // workers)


def use_op(op: str) -> None:
    """Point this process's CPU backend at ``op`` (the engine runs in-process)."""
    from vllm_hogwild import cpu_backend

    os.environ[envs.CPU_OP.name] = op
    cpu_backend.fragment_op.cache_clear()
    if op == "native" and cpu_backend.fragment_op().__name__.endswith("cpu_op"):
        raise SystemExit("--ops native: the compiled CPU op could not be built on this machine")


def run(args: argparse.Namespace) -> dict:
    from vllm import SamplingParams

    problems = [p.text for p in driver.problems(args.problems)]
    model = driver.model_path(args.model)
    engines = {d: driver.build_llm(model, args.max_model_len, args.kv_gib, args.max_num_seqs,
                                   args.max_batched_tokens, args.seed, args.tensor_parallel_size, d)
               for d in args.dtypes}
    tokenizer = engines[args.dtypes[0]].get_tokenizer()
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in problems]
    named = len(args.dtypes) > 1  # variants carry their dtype: "combined/native@bfloat16"
    kinds = ["independent"] + [f"{layout}/{op}" for layout in args.layouts for op in args.ops]
    variants = [k + (f"@{d}" if named else "") for d in args.dtypes for k in kinds]

    def split(variant: str) -> tuple[str, str]:
        kind, _, dtype = variant.partition("@")
        return kind, dtype or args.dtypes[0]

    def baseline(variant: str) -> str:
        return "independent" + variant[variant.index("@"):] if named else "independent"

    def batch(variant: str, workers: int, tokens: int, groups: int, tag: str) -> driver.Batch:
        kind, dtype = split(variant)
        base = dict(temperature=args.temperature, max_tokens=tokens, ignore_eos=True)
        prompts = [chat[i % len(chat)] for i in range(groups)]
        if kind == "independent":
            work = [[driver.Request(p, SamplingParams(**base))] * workers for p in prompts]
        else:
            layout, op = kind.split("/")
            use_op(op)
            flag = {"hogwild_workers": workers, "hogwild_layout": layout}
            work = [[driver.Request(p, SamplingParams(**base, extra_args=flag))] for p in prompts]
        return driver.run_batch(engines[dtype], work, tag)

    for variant in variants:  # the first steps of a fresh engine are slow
        batch(variant, 2, 16, 1, f"warmup-{variant}")
    rows = []
    hogwild = [v for v in variants if not v.startswith("independent")]
    for workers in args.workers:
        for asked, groups in args.lengths:
            tokens = fitted(asked, workers, args.max_model_len)
            seen: dict[str, list[float]] = {v: [] for v in variants}
            ratios: dict[str, list[float]] = {v: [] for v in hogwild}
            for r in range(args.repeats):
                for variant in variants:
                    b = batch(variant, workers, tokens, groups, f"{variant}-w{workers}-t{tokens}-r{r}")
                    seen[variant].append(b.tokens / b.seconds)
                    print(f"W={workers} tokens={tokens} G={groups} {variant:<30} {seen[variant][-1]:7.1f} tokens/s "
                          f"{b.seconds:6.1f} s", file=sys.stderr, flush=True)
                for v in hogwild:
                    ratios[v].append(seen[v][-1] / seen[baseline(v)][-1])
            rows.append({"workers": workers, "tokens": tokens, "asked": asked, "groups": groups,
                         "tokens_per_s": {v: statistics.median(x) for v, x in seen.items()},
                         "ratio": {v: statistics.median(x) for v, x in ratios.items()}})
    use_op(args.ops[0])
    return {"benchmark": "cpu_sweep", "command": "python -m benchmarks.end_to_end.cpu_sweep " + " ".join(sys.argv[1:]),
            "model": model, "machine": driver.machine(),
            "config": {k: v for k, v in vars(args).items() if k != "out"}, "variants": variants, "results": rows}


def table(report: dict) -> str:
    variants = report["variants"]
    lines = ["| W | tokens/worker | G | " + " | ".join(variants) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in variants) + " |"]
    for row in report["results"]:
        cells = [f"{row['tokens_per_s'][v]:.1f}" + (f" ({row['ratio'][v]:.2f}x)" if v in row["ratio"] else "")
                 for v in variants]
        lines.append(f"| {row['workers']} | {row['tokens']} | {row['groups']} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: output tokens/s (median over rounds); hogwild cells (bare flag, layout/CPU op[@dtype]) "
              "add, in brackets, the ratio to the W independent requests of the same round and dtype."]
    return "\n".join(lines) + "\n"


def plot(report: dict):
    import matplotlib.pyplot as plt

    lengths = sorted({(r["asked"], r["groups"]) for r in report["results"]})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 4), squeeze=False)
    for ax, (tokens, groups) in zip(axes[0], lengths):
        rows = [r for r in report["results"] if (r["asked"], r["groups"]) == (tokens, groups)]
        workers = [r["workers"] for r in rows]
        for v in rows[0]["ratio"]:
            ax.plot(workers, [r["ratio"][v] for r in rows], marker="o", label=v)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(workers)
        ax.set_xlabel("workers W")
        ax.set_ylabel("tokens/s against W independent requests")
        ax.set_title(f"{tokens} tokens per worker, G={groups}")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(os.path.basename(report["model"].rstrip("/")) + " on CPU: bare-flag groups")
    return fig


def main(argv: list[str] | None = None) -> dict:
    return driver.report(parse_args(argv), run, table, plot)


if __name__ == "__main__":
    main()
