"""Framing echoes: how often protocol workers write the view's framing into their own text.

    python -m benchmarks.end_to_end.echo --model qwen2.5-coder-1.5b-instruct [--first 0 --count 100] [--workers 2]
                              [--layout combined] [--max-tokens 384] [--without-bans]
                              --out benchmarks/results/echo_qwen1.5b

Each GSM8K problem (``benchmarks/data/gsm8k_test_0_299.jsonl``, problems ``--first`` on) is
one W-worker group with the protocol, greedy, sent as the user's chat turn. A worker's own text
is what it sampled: its output with the protocol's forced texts (step headers, the redundancy
question, the closing sentence and answer) cut out. An *echo* is a banned text
(``prompts.banned_texts``: the section headings, any worker's ``Name [`` header, the
redundancy question, the final-answer heading) or a chat-template control token in it. Also
counted: texts with a look-alike of the ``<...>`` marker the view once had, and steps that
repeat an earlier step of their worker word for word. Kept per problem: the group's answer,
whether it is right, the tokens written. ``--plain`` runs the model alone instead (one chat
request a problem, asked for a ``\\boxed{}`` answer, W x ``--max-tokens`` tokens): what the
groups' answers are compared with.

Problems go through the engine ``--batch`` at a time; each finished problem is appended to
``OUT.jsonl`` at once, and a rerun with the same ``--out`` skips the problems already there,
so a long run can stop and resume. ``OUT.md`` sums them up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from benchmarks.common import driver, paths  # noqa: E402  (sets vLLM's environment before vLLM is imported)
from benchmarks.common.grading import is_correct, load_problems  # noqa: E402

GSM8K = os.path.join(paths.DATA, "gsm8k_test_0_299.jsonl")
CONTROL = re.compile(r"<\|[a-z_]+\|>")
PLAIN = "\n\nSolve it step by step, and put the final answer inside \\boxed{}."
LOOK_ALIKE = "<..."  # the marker cut short: what a ban of the whole marker leaves possible


def own_text(text: str, names: list[str], worker: int) -> str:
    """A worker's sampled text: its output without the protocol's forced texts."""
    from vllm_hogwild import prompts

    name = names[worker]
    text = text.split(prompts.FINAL_HEADING)[0].replace(prompts.first_step(names, worker), "")
    # A header is forced whole, but the text of a worker stopped in its last step can end inside it.
    text = re.sub(re.escape("**" + name + " [") + r"\d+\]:\*\*|" + re.escape("**" + name + " [") + r"[\d\]:*]*$", "",
                  text)
    return text.replace(prompts.REDUNDANCY_CHECK.strip(), "")


def echoes(text: str, names: list[str]) -> list[str]:
    from vllm_hogwild import prompts

    found = [b for b in prompts.banned_texts(names) if b in text]
    return found + CONTROL.findall(text)


def steps_of(text: str, name: str) -> list[str]:
    """A worker's steps without their headers (and the first step's forced greeting)."""
    parts = re.split(re.escape("**" + name + " [") + r"\d+\]:\*\*", text.split("**Final answer.**")[0])
    return [p.strip() for p in parts if p.strip()]


def repeats(text: str, name: str) -> int:
    """Steps that repeat an earlier step of the same worker word for word."""
    steps = steps_of(text, name)
    return sum(step in steps[:i] for i, step in enumerate(steps))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    driver.engine_options(p)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--layout", default="combined", choices=["contiguous", "interleaved", "combined"])
    p.add_argument("--max-tokens", type=int, default=384)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", required=True, help="OUT.jsonl (one line a problem, resumable) and OUT.md")
    p.add_argument("--without-bans", action="store_true",
                   help="the protocol without its bans (as before them), to count what they prevent")
    p.add_argument("--plain", action="store_true",
                   help="the model alone: one plain chat request a problem, --workers x --max-tokens tokens, "
                        "asked to put its answer in \\boxed{} (what the group's answers are compared with)")
    args = p.parse_args(argv)
    if args.without_bans:  # the engine runs in this process (driver.py): no group gets bans
        from vllm_hogwild import runtime

        runtime.bans = lambda model_config, banned: None
    from vllm import SamplingParams

    from vllm_hogwild import prompts

    model = driver.model_path(args.model)
    problems = load_problems(GSM8K)[args.first:args.first + args.count]
    done = {}
    if os.path.exists(args.out + ".jsonl"):
        with open(args.out + ".jsonl", encoding="utf-8") as f:
            done = {row["problem"]: row for row in map(json.loads, f)}
    todo = [n for n in range(args.first, args.first + len(problems)) if n not in done]
    names = list(prompts.NAMES[:args.workers])
    if todo:
        llm = driver.engine_from(args, model)
        flags = {"hogwild_workers": args.workers, "hogwild_protocol": True, "hogwild_layout": args.layout}
        params = SamplingParams(temperature=0, max_tokens=args.max_tokens, extra_args=flags) if not args.plain \
            else SamplingParams(temperature=0, max_tokens=args.workers * args.max_tokens)
        for at in range(0, len(todo), args.batch):
            chunk = todo[at:at + args.batch]
            start = time.perf_counter()
            outs = llm.chat([[{"role": "user", "content": problems[n - args.first].text + (PLAIN if args.plain else "")}]
                             for n in chunk], params, use_tqdm=False)
            seconds = time.perf_counter() - start
            with open(args.out + ".jsonl", "a", encoding="utf-8") as f:
                for n, out in zip(chunk, outs):
                    texts = [o.text for o in out.outputs]
                    found = [echoes(own_text(t, names, w), names) for w, t in enumerate(texts)]
                    answer = prompts.boxed(texts[0]) if args.plain else getattr(out, "hogwild_final_answer", None)
                    row = {"problem": n, "answer": answer, "expected": problems[n - args.first].answer,
                           "correct": answer is not None and is_correct(answer, problems[n - args.first].answer),
                           "tokens": sum(len(o.token_ids) for o in out.outputs), "echoes": found, "texts": texts,
                           "batch_seconds": round(seconds, 1)}
                    done[n] = row
                    f.write(json.dumps(row) + "\n")
            print(f"problems {chunk[0]}-{chunk[-1]}: {seconds:.0f} s, "
                  f"{sum(bool(e) for n in chunk for e in done[n]['echoes'])} worker texts with echoes", flush=True)
    rows = [done[n] for n in sorted(done) if args.first <= n < args.first + args.count]
    for r in rows:  # counted again from the texts: the same rule for runs made before a change of it
        r["echoes"] = [echoes(own_text(t, names, w), names) for w, t in enumerate(r["texts"])]
    texts = sum(len(r["echoes"]) for r in rows)
    alike = 0 if args.plain else sum(LOOK_ALIKE in own_text(t, names, w) for r in rows for w, t in enumerate(r["texts"]))
    steps = 0 if args.plain else sum(len(steps_of(t, names[w])) for r in rows for w, t in enumerate(r["texts"]))
    repeated = 0 if args.plain else sum(repeats(t, names[w]) for r in rows for w, t in enumerate(r["texts"]))
    with_echo = sum(bool(e) for r in rows for e in r["echoes"])
    kinds: dict[str, int] = {}
    for r in rows:
        for e in r["echoes"]:
            for b in e:
                kinds[b] = kinds.get(b, 0) + 1
    lines = [f"`python -m benchmarks.end_to_end.echo {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             f"model `{model}`; machine {driver.machine_line(driver.machine())}", "",
             f"GSM8K problems {args.first}-{args.first + len(rows) - 1}, " +
             (f"the model alone (plain chat, asked for \\boxed{{}}), greedy, {args.workers * args.max_tokens} tokens"
              if args.plain else f"W={args.workers}, {args.layout}, protocol, greedy, {args.max_tokens} tokens a worker"),
             "",
             f"- worker texts with an echo: **{with_echo} of {texts}**",
             f"- worker texts with a look-alike of the marker (`{LOOK_ALIKE}`): {alike} of {texts}",
             f"- steps that repeat an earlier step of their worker word for word: {repeated} of {steps}",
             f"- groups answered right: {sum(r['correct'] for r in rows)} of {len(rows)}", "",
             "| echoed text | occurrences (worker texts) |", "| --- | --- |"]
    lines += [f"| `{k}` | {v} |" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])]
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
