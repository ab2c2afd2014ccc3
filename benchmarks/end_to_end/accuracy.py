"""Accuracy against budget: hogwild against one worker and W independent voters.

    python -m benchmarks.end_to_end.accuracy [--model NAME|PATH] [--problems FILE.jsonl] [--first 0] [--limit N]
                                  [--budgets 128 256 512 1024] [--workers 2 4]
                                  [--methods hogwild single independent] [--layout combined]
                                  [--temperature 0.6] [--batch 16] [--out benchmarks/results/accuracy]

A budget is the most tokens each worker writes (``max_tokens``): the number of sequential
forward passes, as in the paper. Methods, all with the collaboration protocol:

* ``hogwild``: W workers over one shared cache; the answer is the group's ``\\boxed{}``
  (a row for each W of ``--workers``);
* ``single``: one worker, forced to answer at the budget (the baseline the paper beats);
* ``independent``: W workers that do not see each other (W one-worker requests, what a vLLM
  user runs with ``n``), each forced to answer at the budget; the answer is their majority
  vote (ties: the first given). At temperature 0 they all write the same, so this equals
  ``single`` (a row for each W).

Every run answers as soon as a finished step holds a complete ``\\boxed{}`` (the early stop),
so a problem's *depth* (engine steps from its first token to its last: time on a given
machine) can be below the budget. Sampled requests get seeds of their own, ``--seed`` +
1000 x problem + sample, the same at every budget.

Problems: JSONL with ``problem``/``answer``, ``question``/``answer`` (GSM8K) or
``problem``/``solution`` (a ``\\boxed{}`` answer), from problem ``--first`` on (``--limit``
of them); default this project's 50 arithmetic word problems. They go through the engine
``--batch`` at a time, every method of a budget in one batch; with ``--out``, each problem's
result is appended to ``OUT.jsonl`` as its batch ends and a rerun skips what is there, so a
long run can stop and resume. Writes ``OUT.json`` (every answer), ``OUT.md`` (accuracy with a
95% Wilson interval, answered count, mean depth, wall time) and ``OUT.png`` (accuracy
against budget, one line per method and W).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys


from benchmarks.common import driver  # noqa: E402  (sets vLLM's environment before vLLM is imported)
from benchmarks.common import transcripts  # noqa: E402
from benchmarks.common.grading import is_correct, majority, wilson  # noqa: E402

METHODS = ("hogwild", "single", "independent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    driver.engine_options(p)
    driver.problem_options(p)
    p.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256], help="max tokens per worker")
    p.add_argument("--workers", type=int, nargs="+", default=[2], help="each W for hogwild and independent")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--layout", default="combined", choices=["contiguous", "interleaved", "combined"])
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--check-tokens", type=int, default=1024, help="the protocol's hogwild_check_tokens")
    p.add_argument("--batch", type=int, help="problems per engine batch (default: all at once)")
    p.add_argument("--out", help="write OUT.jsonl (per problem, resumable), OUT.json, OUT.md, OUT.png")
    args = p.parse_args(argv)
    if not all(1 <= w <= 16 for w in args.workers):
        p.error(f"--workers: expected each in 1..16, got {args.workers}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit: expected a positive integer, got {args.limit}")
    if args.first < 0:
        p.error(f"--first: expected 0 or more, got {args.first}")
    if args.batch is not None and args.batch < 1:
        p.error(f"--batch: expected a positive integer, got {args.batch}")
    return args


def cells(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(method, W) of every row: ``single`` once, the others once per W."""
    return [(m, 1) if m == "single" else (m, w) for m in args.methods
            for w in (args.workers if m != "single" else args.workers[:1])]


def label(method: str, workers: int) -> str:
    return method if method == "single" else f"{method} W={workers}"


def requests(method: str, workers: int, problem: str, number: int, budget: int,
             args: argparse.Namespace) -> list[driver.Request]:
    from vllm import SamplingParams

    def params(w: int, sample: int) -> SamplingParams:
        flags = {"hogwild_workers": w, "hogwild_layout": args.layout, "hogwild_protocol": True,
                 "hogwild_check_tokens": args.check_tokens}
        seed = None if args.temperature == 0 else args.seed + 1000 * number + sample
        return SamplingParams(temperature=args.temperature, max_tokens=budget, seed=seed, extra_args=flags)

    if method == "hogwild":
        return [driver.Request(problem, params(workers, 0))]
    if method == "single":
        return [driver.Request(problem, params(1, 0))]
    return [driver.Request(problem, params(1, j)) for j in range(workers)]


def grade(solved: driver.Solved, truth: str) -> dict:
    given = [a.final_answer for a in solved.answers]
    answer = given[0] if len(given) == 1 else majority(given)
    return {"answer": answer, "given": given, "truth": truth, "correct": is_correct(answer, truth),
            "depth": solved.depth, "seconds": round(solved.seconds, 2),
            "tokens": sum(a.tokens for a in solved.answers), "texts": [a.texts for a in solved.answers]}


def _load(path: str | None) -> dict[tuple[str, int, int, int], dict]:
    done = {}
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for row in map(json.loads, f):
                done[(row["method"], row["workers"], row["budget"], row["problem"])] = row
    return done


def reading(graded: list[dict], workers: int, problems: list) -> dict:
    """What the groups' workers did with each other's work (``transcripts``), over the
    problems whose texts were kept."""
    from vllm_hogwild.prompts import NAMES

    names = list(NAMES[:workers])
    kept = [g for g in graded if g.get("texts")]
    return transcripts.summary([transcripts.read(g["texts"][0], names, problems[g["problem"]].text) for g in kept])


def run(args: argparse.Namespace) -> dict:
    problems, numbers = driver.chosen_problems(args)
    model = driver.model_path(args.model)
    rows_of = cells(args)
    widest = max(w for _, w in rows_of)
    driver.check_budgets(model, args.budgets, widest if any(m == "hogwild" for m, _ in rows_of) else 1,
                         args.max_model_len, protocol=True)
    log = args.out + ".jsonl" if args.out else None
    done = _load(log)
    llm = None
    for budget in args.budgets:
        todo = [n for n in numbers if any((m, w, budget, n) not in done for m, w in rows_of)]
        size = args.batch or len(todo) or 1
        for at in range(0, len(todo), size):
            chunk = todo[at:at + size]
            llm = driver.engine_from(args, model) if llm is None else llm
            jobs = [(m, w, n) for n in chunk for m, w in rows_of if (m, w, budget, n) not in done]
            batch = driver.run_batch(llm, [requests(m, w, problems[n].text, n, budget, args) for m, w, n in jobs],
                                     f"b{budget}-{at}")
            with open(log, "a", encoding="utf-8") if log else open(os.devnull, "w") as f:
                for (m, w, n), solved in zip(jobs, batch.solved):
                    row = {"method": m, "workers": w, "budget": budget, "problem": n,
                           **grade(solved, problems[n].answer), "batch_seconds": round(batch.seconds, 1)}
                    done[(m, w, budget, n)] = row
                    f.write(json.dumps(row) + "\n")
            print(f"budget {budget}: problems {chunk[0]}-{chunk[-1]} in {batch.seconds:.0f} s", file=sys.stderr,
                  flush=True)
    results: dict[str, list[dict]] = {}
    for m, w in rows_of:
        for budget in args.budgets:
            graded = [done[(m, w, budget, n)] for n in numbers]
            right = sum(g["correct"] for g in graded)
            low, high = wilson(right, len(graded))
            results.setdefault(label(m, w), []).append({
                "method": m, "workers": w, "budget": budget, "correct": right, "total": len(graded),
                "accuracy": right / len(graded), "interval": [low, high],
                "answered": sum(g["answer"] is not None for g in graded),
                "depth_mean": statistics.mean(g["depth"] for g in graded),
                "seconds_mean": statistics.mean(g["seconds"] for g in graded),
                **({"transcripts": reading(graded, w, problems)} if m == "hogwild" else {}), "problems": graded})
    return {"benchmark": "accuracy", "command": "python -m benchmarks.end_to_end.accuracy " + " ".join(sys.argv[1:]),
            "model": model, "machine": driver.machine(), "problems": [numbers[0], numbers[-1]],
            "config": {k: v for k, v in vars(args).items() if k != "out"}, "protocol": protocol_texts(args),
            "results": results}


def protocol_texts(args: argparse.Namespace) -> dict:
    """The protocol's words this run used (they change between runs: results name theirs)."""
    from vllm_hogwild import prompts

    names = list(prompts.NAMES[:max(args.workers)])
    return {"instruction": prompts.instruction(args.layout, names),
            "instruction_alone": prompts.instruction(args.layout, names[:1]),
            "first_steps": [prompts.first_step(names, w) for w in range(len(names))],
            "first_step_alone": prompts.first_step(names[:1], 0)}


def table(report: dict) -> str:
    budgets = report["config"]["budgets"]
    first, last = report["problems"]
    lines = [f"Problems {first}-{last} of `{os.path.basename(report['config']['problems'])}`, "
             f"temperature {report['config']['temperature']}, layout {report['config']['layout']}.", "",
             "| method | " + " | ".join(f"budget {b}" for b in budgets) + " |",
             "| --- | " + " | ".join("---" for _ in budgets) + " |"]
    for name, rows in report["results"].items():
        cells_ = [f"{r['accuracy']:.0%} [{r['interval'][0]:.0%}, {r['interval'][1]:.0%}] "
                  f"({r['correct']}/{r['total']}; {r['answered']} answered; depth {r['depth_mean']:.0f}; "
                  f"{r['seconds_mean']:.0f} s)" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells_) + " |")
    lines += ["", "Each cell: accuracy [95% Wilson interval] (right/problems; problems with an answer; mean engine "
              "steps from a problem's first token to its answer; mean wall time from submission to the answer, "
              "in a batch of many problems).", "", *why(report)]
    return "\n".join(lines) + "\n"


def why(report: dict) -> list[str]:
    """What the hogwild groups' workers did (``benchmarks/common/transcripts.py``), per row and budget."""
    rows = [(name, r) for name, rs in report["results"].items() for r in rs if r.get("transcripts", {}).get("steps")]
    if not rows:
        return []
    lines = ["What the workers did (`benchmarks/common/transcripts.py`; a step's results are the numbers it writes "
             "that the problem does not hold):", "",
             "| row | budget | groups | steps | no result | duplicates | name another worker | copy 8 words "
             "| results shared | redundancy answers |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows:
        t = r["transcripts"]
        share = lambda k: f"{t[k]} ({t[k] / t['steps']:.0%})"  # noqa: E731
        checks = ", ".join(f"{k} {v}" for k, v in sorted(t["checks"].items())) or "none asked"
        lines.append(f"| {name} | {r['budget']} | {t['groups']} | {t['steps']} | {share('empty')} | {share('duplicates')} | "
                     f"{share('reacts')} | {share('copies')} | {t['shared_share']:.0%} of {t['results']} | {checks} |")
    return lines


def plot(report: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in report["results"].items():
        budgets = [r["budget"] for r in rows]
        acc = [100 * r["accuracy"] for r in rows]
        err = [[100 * (r["accuracy"] - r["interval"][0]) for r in rows],
               [100 * (r["interval"][1] - r["accuracy"]) for r in rows]]
        ax.errorbar(budgets, acc, yerr=err, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    budgets = report["config"]["budgets"]
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("budget: max tokens per worker (sequential forward passes)")
    ax.set_ylabel("accuracy, % (95% interval)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    first, last = report["problems"]
    ax.set_title(f"{os.path.basename(report['model'].rstrip('/'))}, problems {first}-{last}")
    return fig


def main(argv: list[str] | None = None) -> dict:
    return driver.report(parse_args(argv), run, table, plot)


if __name__ == "__main__":
    main()
