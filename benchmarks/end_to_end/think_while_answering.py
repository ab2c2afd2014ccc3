"""Think while answering: what the user feels, against thinking first and against not thinking.

    python -m benchmarks.end_to_end.think_while_answering [--model NAME|PATH] [--problems FILE.jsonl] [--first 0]
                                               [--limit N] [--budget 256] [--methods async sequential direct]
                                               [--temperature 0] [--batch 8] [--out benchmarks/results/twa]

Methods, each problem the user's one chat message (the model's chat template):

* ``async``: ``hogwild_async`` (a writer answers while a thinker thinks, one cache), ``max_tokens``
  = ``--budget`` for each;
* ``sequential``: the same model thinking first, then answering: the thinker alone (the same
  texts as ``async``'s thinker, with no answer yet), then the writer over all its thoughts (the
  same texts as ``async``'s writer, less the note that more thoughts will come: they are done),
  each a plain request of ``--budget`` tokens, the answer's submitted the step the thoughts end;
* ``direct``: no thinking: the plain chat, asked to put the final answer in ``\\boxed{}``.

Per problem and method, from the problem's submission: the **first answer token** (engine steps
and seconds), the **delay** (the time the answer stream has given nothing new, before its first
token and between its tokens, as a listener would hear it: the answer's end less the steps that
gave it a token), the **total** (the answer's last token), tokens written (answer and thoughts)
and whether the answer's last ``\\boxed{}`` is right. Every method of a batch runs in the same
engine steps, so a step's time is the same for all of them. Resumable (``OUT.jsonl``); writes
``OUT.json``, ``OUT.md`` and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


from benchmarks.common import driver  # noqa: E402  (sets vLLM's environment before vLLM is imported)
from benchmarks.common.grading import is_correct, wilson  # noqa: E402

METHODS = ("async", "sequential", "direct")
DIRECT = "\n\nPut the final answer inside \\boxed{}."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    driver.engine_options(p)
    driver.problem_options(p)
    p.add_argument("--budget", type=int, default=256, help="max tokens of each stream (answer, thoughts)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=8, help="problems at once (every method of each)")
    p.add_argument("--out", help="OUT.jsonl (resumable), OUT.json, OUT.md, OUT.png")
    args = p.parse_args(argv)
    if args.budget < 1 or 2 * args.budget >= args.max_model_len:
        raise SystemExit(f"--budget: two streams of {args.budget} tokens do not fit --max-model-len "
                         f"{args.max_model_len} with a prompt; allowed: 1..{args.max_model_len // 2 - 1}")
    return args


class _Stream:
    """One request's output as it comes: per output index, the steps that gave it tokens."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}
        self.steps: dict[int, list[int]] = {}
        self.tokens: dict[int, int] = {}
        self.done_step: int | None = None


def _texts(tokenizer, problem: str):
    from vllm_hogwild import async_prompts

    markers = async_prompts.chat_markers(
        lambda m, g: tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=g))
    chat = tokenizer.apply_chat_template([{"role": "user", "content": problem}], tokenize=False,
                                         add_generation_prompt=True)
    return chat, async_prompts.texts(markers, chat), markers


def run_batch(llm, tokenizer, jobs: list[tuple[str, int, str]], args, tag: str) -> list[dict]:
    """Every (method, problem number, problem text) at once; the engine stepped until all are done."""
    from vllm import SamplingParams, TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    from vllm_hogwild.async_prompts import THINKER, WRITER, view_text

    engine = llm.llm_engine
    params = SamplingParams(temperature=args.temperature, max_tokens=args.budget, seed=args.seed,
                            output_kind=RequestOutputKind.DELTA)
    streams: dict[str, _Stream] = {}
    follow: dict[str, tuple] = {}  # a sequential job's thoughts request -> (job, its texts, the chat markers)

    def add(rid: str, prompt, sp) -> None:
        streams[rid] = _Stream()
        engine.add_request(rid, prompt, sp)

    for j, (method, _, problem) in enumerate(jobs):
        chat, texts, markers = _texts(tokenizer, problem)
        if method == "async":
            sp = params.clone()
            sp.extra_args = {"hogwild_workers": 2, "hogwild_async": True}
            add(f"{tag}-{j}", chat, sp)
        elif method == "sequential":
            thinking = tokenizer.encode(view_text(texts, THINKER, ["", ""]), add_special_tokens=False)
            add(f"{tag}-{j}-thoughts", TokensPrompt(prompt_token_ids=thinking), params.clone())
            follow[f"{tag}-{j}-thoughts"] = (j, texts, markers)
        else:
            direct = _texts(tokenizer, problem + DIRECT)[0]
            add(f"{tag}-{j}", direct, params.clone())
    start, step, ends = time.perf_counter(), 0, [0.0]
    while engine.has_unfinished_requests():
        outputs = engine.step()
        step += 1
        ends.append(time.perf_counter() - start)
        for out in outputs:
            s = streams[out.request_id]
            for o in out.outputs:
                s.texts[o.index] = s.texts.get(o.index, "") + o.text
                if o.token_ids:
                    s.steps.setdefault(o.index, []).append(step)
                s.tokens[o.index] = s.tokens.get(o.index, 0) + len(o.token_ids)
            if out.finished:
                s.done_step = step
                if out.request_id in follow:  # the thoughts are done: the answer starts now
                    j, texts, markers = follow[out.request_id]
                    answer = (texts.conversation + texts.sections[WRITER][0] + texts.sections[THINKER][2]
                              + s.texts.get(0, "") + markers.assistant_close + markers.assistant_open)
                    add(f"{tag}-{j}", TokensPrompt(prompt_token_ids=tokenizer.encode(answer, add_special_tokens=False)),
                        params.clone())
    rows = []
    for j, (method, number, _) in enumerate(jobs):
        s = streams[f"{tag}-{j}"]
        thoughts = streams.get(f"{tag}-{j}-thoughts")
        answer_steps = s.steps.get(0, [])
        thinking = (s, 1) if method == "async" else (thoughts, 0) if thoughts else (None, 0)
        thought_text = thinking[0].texts.get(thinking[1], "") if thinking[0] else ""
        thought_tokens = thinking[0].tokens.get(thinking[1], 0) if thinking[0] else 0
        rows.append(_measured(method, number, s.texts.get(0, ""), thought_text, answer_steps, ends,
                              s.tokens.get(0, 0), thought_tokens))
    return rows


def _measured(method: str, number: int, answer: str, thoughts: str, steps: list[int], ends: list[float],
              answer_tokens: int, thought_tokens: int) -> dict:
    from vllm_hogwild.prompts import boxed

    last = steps[-1] if steps else len(ends) - 1
    gave = sorted(set(steps))
    delay_steps = last - len(gave)
    delay_seconds = ends[last] - sum(ends[s] - ends[s - 1] for s in gave)
    return {"method": method, "problem": number, "answer": boxed(answer), "answer_text": answer,
            "thoughts": thoughts, "first_step": steps[0] if steps else None,
            "first_seconds": round(ends[steps[0]], 3) if steps else None, "delay_steps": delay_steps,
            "delay_seconds": round(delay_seconds, 3), "total_steps": last, "total_seconds": round(ends[last], 3),
            "answer_tokens": answer_tokens, "thought_tokens": thought_tokens, "tokens": answer_tokens + thought_tokens}


def run(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    problems, numbers = driver.chosen_problems(args)
    model = driver.model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if not tokenizer.chat_template:
        raise SystemExit(f"--model: {model} has no chat template (think while answering builds its views from it)")
    log = args.out + ".jsonl" if args.out else None
    done = {}
    if log and os.path.exists(log):
        with open(log, encoding="utf-8") as f:
            done = {(r["method"], r["problem"]): r for r in map(json.loads, f)}
    todo = [n for n in numbers if any((m, n) not in done for m in args.methods)]
    llm = None
    for at in range(0, len(todo), args.batch):
        chunk = todo[at:at + args.batch]
        llm = driver.engine_from(args, model) if llm is None else llm
        jobs = [(m, n, problems[n].text) for n in chunk for m in args.methods if (m, n) not in done]
        began = time.perf_counter()
        rows = run_batch(llm, tokenizer, jobs, args, f"p{chunk[0]}")
        with open(log, "a", encoding="utf-8") if log else open(os.devnull, "w") as f:
            for row in rows:
                row["truth"] = problems[row["problem"]].answer
                row["correct"] = is_correct(row["answer"], row["truth"])
                done[(row["method"], row["problem"])] = row
                f.write(json.dumps(row) + "\n")
        print(f"problems {chunk[0]}-{chunk[-1]} in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    results = {}
    for m in args.methods:
        rows = [done[(m, n)] for n in numbers]
        right = sum(r["correct"] for r in rows)
        firsts = [r["first_seconds"] for r in rows if r["first_seconds"] is not None]
        results[m] = {
            "correct": right, "total": len(rows), "accuracy": right / len(rows), "interval": list(wilson(right, len(rows))),
            "answered": sum(r["answer"] is not None for r in rows),
            "first_steps_mean": statistics.mean(r["first_step"] for r in rows if r["first_step"] is not None)
            if firsts else None,
            "first_seconds_mean": statistics.mean(firsts) if firsts else None,
            "delay_steps_mean": statistics.mean(r["delay_steps"] for r in rows),
            "delay_seconds_mean": statistics.mean(r["delay_seconds"] for r in rows),
            "total_steps_mean": statistics.mean(r["total_steps"] for r in rows),
            "total_seconds_mean": statistics.mean(r["total_seconds"] for r in rows),
            "tokens_mean": statistics.mean(r["tokens"] for r in rows), "problems": rows}
    return {"benchmark": "think_while_answering",
            "command": "python -m benchmarks.end_to_end.think_while_answering " + " ".join(sys.argv[1:]),
            "model": model, "machine": driver.machine(), "problems": [numbers[0], numbers[-1]],
            "config": {k: v for k, v in vars(args).items() if k != "out"}, "results": results}


def table(report: dict) -> str:
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = ["| method | accuracy [95% CI] | answered | first answer token: steps / s | delay: steps / s "
             "| total: steps / s | tokens |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for m, r in report["results"].items():
        low, high = r["interval"]
        lines.append(f"| {m} | {r['correct']}/{r['total']} = {r['accuracy']:.2f} [{low:.2f}, {high:.2f}] "
                     f"| {r['answered']} | {num(r['first_steps_mean'], '.1f')} / {num(r['first_seconds_mean'], '.2f')} "
                     f"| {r['delay_steps_mean']:.1f} / {r['delay_seconds_mean']:.2f} "
                     f"| {r['total_steps_mean']:.1f} / {r['total_seconds_mean']:.2f} | {r['tokens_mean']:.0f} |")
    first, last = report["problems"]
    return (f"Problems {first}-{last}, budget {report['config']['budget']} tokens per stream, temperature "
            f"{report['config']['temperature']}; means per problem, from its submission (engine steps, and "
            f"seconds on this machine).\n\n" + "\n".join(lines) + "\n")


def plot(report: dict):
    import matplotlib.pyplot as plt

    methods = list(report["results"])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    panels = [("first_steps_mean", "first answer token (engine steps)"), ("delay_steps_mean", "delay (engine steps)"),
              ("accuracy", "accuracy")]
    for ax, (key, title) in zip(axes, panels):
        values = [report["results"][m][key] or 0 for m in methods]
        ax.bar(methods, values, color=["tab:blue", "tab:orange", "tab:gray"][:len(methods)])
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"Think while answering, {os.path.basename(report['model'].rstrip('/'))}", fontsize=10)
    return fig


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return driver.report(args, run, table, plot)


if __name__ == "__main__":
    main()
