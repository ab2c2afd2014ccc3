"""The demo's defaults, chosen by measurement: how its text reads on the embedded model, by
setting, over seeds.

    python -m benchmarks.end_to_end.demo_defaults [--seeds 10] [--out benchmarks/results/demo_defaults]

For each setting (problem, W, temperature, penalties, max tokens, check tokens) the demo's
request (``vllm-hogwild demo``: the protocol, the problem as plain text) runs once per seed
0..N-1, all seeds of a setting as one batch on one engine (the demo's: SmolLM2, CPU dtype).
Reported per setting: the share of the workers' non-empty output lines that hold no letter
or digit (``$$``, ``}}``, ``---``: what reads as junk), the share of runs whose final answer
is a ``\\boxed{}`` value, the share right, and the share of runs where the protocol shows
(a worker wrote a step after its first, and a redundancy check was asked). Writes OUT.json
and OUT.md.
"""

from __future__ import annotations

import argparse
import os
import re
import sys


from benchmarks.common import driver  # noqa: E402  (sets vLLM's environment before vLLM is imported)

COWS = ("A farmer has 12 cows. She buys 5 more cows, then sells 4 of them. "
        "How many cows does the farmer have now?", "13")
APPLES = ("Tom has 3 bags with 4 apples in each bag. He eats 2 apples. How many apples does he have left?", "10")

# (name, problem, W, temperature, extra sampling, max tokens, check tokens); "chat" in the
# name: the problem rendered by the model's chat template first, as the live view's chat
# request sends it.
SETTINGS = [
    ("before: cows, T=0.7", COWS, 2, 0.7, {}, 256, 128),
    ("cows, T=0.3", COWS, 2, 0.3, {}, 256, 128),
    ("cows, T=0.5, rep 1.1", COWS, 2, 0.5, {"repetition_penalty": 1.1}, 256, 128),
    ("cows, T=0.3, rep 1.1", COWS, 2, 0.3, {"repetition_penalty": 1.1}, 256, 128),
    ("cows, T=0.3, rep 1.2", COWS, 2, 0.3, {"repetition_penalty": 1.2}, 256, 128),
    ("apples, T=0.3, rep 1.1", APPLES, 2, 0.3, {"repetition_penalty": 1.1}, 256, 128),
    ("cows, W=3, T=0.3, rep 1.1", COWS, 3, 0.3, {"repetition_penalty": 1.1}, 256, 128),
    ("live view before: chat, T=0.7, 512", COWS, 2, 0.7, {}, 512, 1024),
    ("live view: chat, T=0.3, rep 1.1, 256, check 128", COWS, 2, 0.3, {"repetition_penalty": 1.1}, 256, 128),
]


def junk_lines(texts: list[str]) -> tuple[int, int]:
    """(non-empty lines that hold no letter or digit, non-empty lines)."""
    lines = [line for t in texts for line in t.splitlines() if line.strip()]
    return sum(not re.search(r"[A-Za-z0-9]", line) for line in lines), len(lines)


def run(args: argparse.Namespace) -> dict:
    from vllm import SamplingParams

    from benchmarks.common.grading import is_correct
    from vllm_hogwild import prompts
    from vllm_hogwild.cli import cpu_dtype

    model = driver.model_path(args.model)
    args.dtype = args.dtype or cpu_dtype()
    llm = driver.build_llm(model, 8192, 0.5, 16, 8192, 0, 1, args.dtype)
    rows = []
    tokenizer = llm.get_tokenizer()
    for name, (problem, answer), workers, temperature, extra, max_tokens, check in SETTINGS:
        # The problem as the demo sends it (plain text, which the protocol puts in the chat
        # format), or as the live view's chat request does.
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": problem}], tokenize=False,
                                               add_generation_prompt=True) if "chat" in name else problem
        work = [[driver.Request(prompt, SamplingParams(
            temperature=temperature, seed=seed, max_tokens=max_tokens, **extra,
            extra_args={"hogwild_workers": workers, "hogwild_protocol": True, "hogwild_check_tokens": check}))]
            for seed in range(args.seeds)]
        batch = driver.run_batch(llm, work, name)
        junk = total = boxed = right = shown = 0
        for solved in batch.solved:
            got = solved.answers[0]
            j, n = junk_lines(got.texts)
            junk, total = junk + j, total + n
            boxed += got.final_answer is not None
            right += is_correct(got.final_answer, answer)
            steps = any(re.search(rf"\*\*{re.escape(n)} \[2\]:\*\*", t) for n, t in zip(prompts.NAMES, got.texts))
            shown += steps and any("Quick check" in t for t in got.texts)
        row = {"setting": name, "problem": problem, "workers": workers, "temperature": temperature, **extra,
               "max_tokens": max_tokens, "check_tokens": check, "junk_lines": junk / max(total, 1),
               "boxed": boxed / args.seeds, "right": right / args.seeds, "protocol_shown": shown / args.seeds,
               "example": batch.solved[0].answers[0].texts}
        rows.append(row)
        print(f"{name:<28} junk {row['junk_lines']:5.1%}  boxed {row['boxed']:4.0%}  right {row['right']:4.0%}  "
              f"protocol {row['protocol_shown']:4.0%}  ({batch.seconds:.0f} s)", file=sys.stderr, flush=True)
    return {"benchmark": "demo_defaults", "command": "python -m benchmarks.end_to_end.demo_defaults " + " ".join(sys.argv[1:]),
            "model": model, "dtype": args.dtype, "machine": driver.machine(), "seeds": args.seeds,
            "results": rows}


def table(report: dict) -> str:
    lines = ["| setting | junk lines | boxed answer | right | plan, steps and a check |",
             "| --- | --- | --- | --- | --- |"]
    for r in report["results"]:
        lines.append(f"| {r['setting']} | {r['junk_lines']:.1%} | {r['boxed']:.0%} | {r['right']:.0%} | "
                     f"{r['protocol_shown']:.0%} |")
    lines += ["", f"Seeds 0-{report['seeds'] - 1} of each setting on {os.path.basename(report['model'])} "
              f"({report['dtype']}); max tokens and check tokens per setting in OUT.json."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", help="the model's dtype (default: the CPU default of vllm-hogwild)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--out", help="write OUT.json and OUT.md")
    return driver.report(p.parse_args(argv), run, table)


if __name__ == "__main__":
    main()
