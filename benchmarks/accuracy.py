"""Accuracy against budget: hogwild against one worker and W independent voters.

    python benchmarks/accuracy.py [--model PATH] [--problems FILE.jsonl] [--budgets 64 128 256]
                                  [--workers 2] [--methods hogwild single independent]
                                  [--layout combined] [--temperature 0.6] [--out benchmarks/results/accuracy]

A budget is the most tokens each worker writes (``max_tokens``): the number of sequential
forward passes, as in the paper. Methods, all with the collaboration protocol:

* ``hogwild``: W workers over one shared cache; the answer is the group's ``\\boxed{}``;
* ``single``: one worker, forced to answer at the budget;
* ``independent``: W workers that do not see each other (W one-worker requests), each forced
  to answer at the budget; the answer is their majority vote (ties: the first given).
  At temperature 0 they all write the same, so this equals ``single``.

For each budget, every problem of every method goes through the one engine at once (many
groups), so a run takes about as long as its longest problem. Problems: JSONL with
``problem``/``answer``, ``question``/``answer`` (GSM8K) or ``problem``/``solution`` (a
``\\boxed{}`` answer); default this project's 50 arithmetic word problems. Writes
``OUT.json`` (every answer), ``OUT.md`` (accuracy with a 95% Wilson interval, and mean
sequential depth) and ``OUT.png`` (accuracy against budget, one line per method).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import driver  # noqa: E402  (sets vLLM's environment before vLLM is imported)
from grading import is_correct, majority, wilson  # noqa: E402

METHODS = ("hogwild", "single", "independent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    driver.engine_options(p)
    p.add_argument("--problems", default=driver.DEFAULT_PROBLEMS, help="JSONL problem file")
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256], help="max tokens per worker")
    p.add_argument("--workers", type=int, default=2, help="W for hogwild and independent")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--layout", default="combined", choices=["contiguous", "interleaved", "combined"])
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--check-tokens", type=int, default=1024, help="the protocol's hogwild_check_tokens")
    p.add_argument("--out", help="write OUT.json, OUT.md, OUT.png")
    args = p.parse_args(argv)
    if not 1 <= args.workers <= 16:
        p.error(f"--workers: expected 1..16, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit: expected a positive integer, got {args.limit}")
    return args


def requests(method: str, problem: str, budget: int, args: argparse.Namespace) -> list[driver.Request]:
    from vllm import SamplingParams

    def flags(workers: int) -> dict:
        return {"hogwild_workers": workers, "hogwild_layout": args.layout, "hogwild_protocol": True,
                "hogwild_check_tokens": args.check_tokens}

    def params(workers: int) -> SamplingParams:
        return SamplingParams(temperature=args.temperature, max_tokens=budget, extra_args=flags(workers))

    if method == "hogwild":
        return [driver.Request(problem, params(args.workers))]
    if method == "single":
        return [driver.Request(problem, params(1))]
    return [driver.Request(problem, params(1)) for _ in range(args.workers)]


def grade(solved: driver.Solved, truth: str) -> dict:
    given = [a.final_answer for a in solved.answers]
    answer = given[0] if len(given) == 1 else majority(given)
    return {"answer": answer, "given": given, "truth": truth, "correct": is_correct(answer, truth),
            "depth": solved.depth, "tokens": sum(a.tokens for a in solved.answers)}


def run(args: argparse.Namespace) -> dict:
    problems = driver.problems(args.problems, args.limit)
    model = driver.model_path(args.model)
    workers = args.workers if set(args.methods) & {"hogwild", "independent"} else 1
    driver.check_budgets(model, args.budgets, workers, args.max_model_len, protocol=True)
    llm = driver.engine_from(args, model)
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for budget in args.budgets:
        for method in args.methods:
            batch = driver.run_batch(llm, [requests(method, p.text, budget, args) for p in problems],
                                     f"{method}-b{budget}")
            graded = [grade(s, p.answer) for s, p in zip(batch.solved, problems)]
            right = sum(g["correct"] for g in graded)
            low, high = wilson(right, len(graded))
            results[method].append({
                "budget": budget, "correct": right, "total": len(graded), "accuracy": right / len(graded),
                "interval": [low, high], "answered": sum(g["answer"] is not None for g in graded),
                "depth_mean": statistics.mean(g["depth"] for g in graded), "seconds": batch.seconds,
                "problems": graded})
            print(f"budget {budget:<5} {method:<12} {right}/{len(graded)} right, "
                  f"{batch.seconds:.1f} s", file=sys.stderr, flush=True)
    return {"benchmark": "accuracy", "command": "python benchmarks/accuracy.py " + " ".join(sys.argv[1:]),
            "model": llm.llm_engine.model_config.model, "machine": driver.machine(),
            "config": {k: v for k, v in vars(args).items() if k != "out"}, "results": results}


def table(report: dict) -> str:
    budgets = report["config"]["budgets"]
    lines = ["| method | " + " | ".join(f"budget {b}" for b in budgets) + " |",
             "| --- | " + " | ".join("---" for _ in budgets) + " |"]
    for method, rows in report["results"].items():
        cells = [f"{r['accuracy']:.0%} [{r['interval'][0]:.0%}, {r['interval'][1]:.0%}] "
                 f"({r['correct']}/{r['total']}; {r['answered']} answered; depth {r['depth_mean']:.0f})"
                 for r in rows]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nEach cell: accuracy [95% Wilson interval] (right/problems; problems with " \
                              "a boxed answer; mean engine steps to the answer).\n"


def plot(report: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, rows in report["results"].items():
        budgets = [r["budget"] for r in rows]
        acc = [100 * r["accuracy"] for r in rows]
        err = [[100 * (r["accuracy"] - r["interval"][0]) for r in rows],
               [100 * (r["interval"][1] - r["accuracy"]) for r in rows]]
        label = method if method == "single" else f"{method} (W={report['config']['workers']})"
        ax.errorbar(budgets, acc, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    budgets = report["config"]["budgets"]
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("budget: max tokens per worker (sequential forward passes)")
    ax.set_ylabel("accuracy, % (95% interval)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{os.path.basename(report['model'].rstrip('/'))}, "
                 f"{report['results'][next(iter(report['results']))][0]['total']} problems")
    return fig


def main(argv: list[str] | None = None) -> dict:
    return driver.report(parse_args(argv), run, table, plot)


if __name__ == "__main__":
    main()
