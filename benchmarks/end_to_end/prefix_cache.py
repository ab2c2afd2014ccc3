"""Groups sharing a system prompt, vLLM's prefix caching on against off, in one run.

    python -m benchmarks.end_to_end.prefix_cache [--groups 16] [--workers 4] [--system-tokens 1024]
                                      [--max-tokens 32] [--rounds 2] [--dtype bfloat16]
                                      [--out benchmarks/results/prefix_cache_smollm2]

G groups of W workers arrive at once, each a different arithmetic problem
(``data/arithmetic50.jsonl``) after one system prompt of ``--system-tokens`` tokens of real
text (``docs/design.md``, whole words); greedy, ``--max-tokens`` per worker, the embedded
SmolLM2. Two engines, prefix caching on and off, run the same batch in turn, ``--rounds``
times (one engine steps at a time: this machine's timings drift by 10-20%). Reported per
engine, median over rounds:

- prompt tokens computed: of the tokens the scheduler gives each step, those inside their
  request's prompt (what a prefix-cache hit spares); against the *unique* prompt tokens (the
  shared prefix once, each group's own tokens: its problem, its workers' prefixes and copies
  of the prompt's last token);
- time to first token of each group (from the batch's arrival to the step that gives it its
  first sampled token), p50 and p90; time to answer (the last group's end).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_PLUGINS", "hogwild")

from benchmarks.common import driver, paths  # noqa: E402


def system_prompt(tokenizer, tokens: int) -> str:
    """``tokens`` tokens of real text (the design notes), cut at a word."""
    with open(os.path.join(paths.ROOT, "docs", "design.md"), encoding="utf-8") as f:
        text = f.read()
    ids = tokenizer.encode(text, add_special_tokens=False)[:tokens]
    return tokenizer.decode(ids).rsplit(" ", 1)[0]


def run_batch(llm, prompts: list[list[int]], workers: int, max_tokens: int) -> dict:
    from vllm import SamplingParams, TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    computed = []
    original = scheduler.schedule

    def counting(*args, **kwargs):
        output = original(*args, **kwargs)
        for rid, n in output.num_scheduled_tokens.items():  # this step's positions: [done - n, done)
            r = scheduler.requests[rid]
            done = r.num_computed_tokens
            computed.append(max(0, min(done, r.num_prompt_tokens) - (done - n)))
        return output

    scheduler.schedule = counting
    params = SamplingParams(temperature=0, max_tokens=max_tokens, output_kind=RequestOutputKind.CUMULATIVE,
                            extra_args={"hogwild_workers": workers})
    start = time.perf_counter()
    try:
        for i, ids in enumerate(prompts):
            engine.add_request(f"g{i}", TokensPrompt(prompt_token_ids=ids), params)
        first, done = {}, {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                now = time.perf_counter() - start
                if any(o.token_ids for o in out.outputs) and out.request_id not in first:
                    first[out.request_id] = now
                if out.finished:
                    done[out.request_id] = now
    finally:
        del scheduler.schedule
    return {"prompt_tokens_computed": sum(computed), "ttft_s": sorted(first.values()), "answer_s": max(done.values())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--kv-gib", type=float, default=2.0)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--system-tokens", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", default=os.path.join(paths.RESULTS, "prefix_cache_smollm2"))
    args = parser.parse_args(argv)
    model = driver.model_path(args.model)
    engines = {name: driver.build_llm(model, args.max_model_len, args.kv_gib, 256, 8192, dtype=args.dtype, prefix_caching=on)
               for name, on in (("caching on", True), ("caching off", False))}
    tokenizer = engines["caching on"].get_tokenizer()
    system = system_prompt(tokenizer, args.system_tokens)
    problems = [p.text for p in driver.problems(os.path.join(paths.DATA, "arithmetic50.jsonl"), args.groups)]
    prompts = [tokenizer.encode(system + "\n\nProblem: " + p, add_special_tokens=False) for p in problems]
    shared = len(os.path.commonprefix(prompts))
    # Unique prompt tokens: the shared prefix once, each group's own prompt tokens, and what
    # each group's workers must compute of their own (a copy of the prompt's last token each,
    # for W-1 workers; the runs here give no prefixes).
    unique = shared + sum(len(p) - shared for p in prompts) + len(prompts) * (args.workers - 1)
    rows = {name: [] for name in engines}
    for r in range(args.rounds):
        for name, llm in engines.items():
            llm.reset_prefix_cache()
            found = run_batch(llm, prompts, args.workers, args.max_tokens)
            rows[name].append(found)
            ttft = found["ttft_s"]
            print(f"round {r} {name}: prompt tokens computed {found['prompt_tokens_computed']} (unique {unique}), "
                  f"TTFT p50 {driver.percentile(ttft, 50):.2f} s, "
                  f"p90 {driver.percentile(ttft, 90):.2f} s, answer {found['answer_s']:.2f} s", flush=True)
    summary = {}
    for name, runs in rows.items():
        summary[name] = {
            "prompt_tokens_computed": statistics.median(x["prompt_tokens_computed"] for x in runs),
            "ttft_p50_s": statistics.median(driver.percentile(x["ttft_s"], 50) for x in runs),
            "ttft_p90_s": statistics.median(driver.percentile(x["ttft_s"], 90) for x in runs),
            "answer_s": statistics.median(x["answer_s"] for x in runs)}
    result = {"command": paths.command(), "machine": driver.machine(), "date": time.strftime("%Y-%m-%d"),
              "model": model, "dtype": args.dtype, "groups": args.groups, "workers": args.workers,
              "shared_prompt_tokens": shared, "prompt_tokens": sum(map(len, prompts)), "unique_prompt_tokens": unique,
              "summary": summary, "rounds": rows}
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    lines = ["| | prompt tokens computed | vs unique | TTFT p50 | TTFT p90 | time to answer |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['prompt_tokens_computed']:.0f} | {s['prompt_tokens_computed'] / unique:.3f}x | "
                     f"{s['ttft_p50_s']:.2f} s | {s['ttft_p90_s']:.2f} s | {s['answer_s']:.2f} s |")
    table = "\n".join(lines)
    with open(args.out + ".md", "w") as f:
        f.write(f"`{result['command']}`\n\n{args.groups} groups of W={args.workers}, a shared prompt of {shared} tokens "
                f"({sum(map(len, prompts))} prompt tokens in all, {unique} unique), {args.dtype}, "
                f"median of {args.rounds} rounds.\n\n{table}\n")
    print(table)
    return result


if __name__ == "__main__":
    main()
