"""CPU step time: one hogwild group of W workers vs W independent plain requests.

    python -m benchmarks.cpu.cpu_step_bench --workers 2 4 8 --prompt-tokens 256 --decode-steps 64 [--commits]

Model: random weights in SmolLM2-135M's shape (30 layers, 9 query / 3 KV heads,
head_dim 64, hidden 576), built locally; float32, vLLM CPU engine in-process. Both runs
use the same engine, prompt and number of decode steps; the W independent requests
each carry the whole prompt (what one would run without hogwild). Reported: median
wall time of an engine step while all W sequences decode (prefill step excluded), over
``--repeats`` alternating runs of each (this machine's step times drift by 10-20%), and
the tokens/s that makes, next to one plain request's.

A random-weight model never writes the default step boundary, so its steps never commit
and a view stays a few long fragments: real text (``cpu_sweep.py``) cuts it into hundreds.
``--commits`` makes steps commit often here too: the boundary becomes the text of the token
that a plain greedy run of the same prompt writes most often (sentence rule off), and the
run reports how many boundaries the group's workers wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_PLUGINS", "hogwild")

from benchmarks.common.paths import RESULTS


def build_model(path: str) -> str:
    import torch
    import transformers

    from tests.helpers.tiny_models import make_tokenizer

    if os.path.exists(os.path.join(path, "config.json")):
        return path
    tok = make_tokenizer(path)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=4096, rope_theta=1e5,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, dtype="float32")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def step_times(llm, prompt_ids: list[int], params_list, texts: list[str] | None = None) -> list[float]:
    """Engine step times while the requests decode; their outputs' texts go to ``texts``."""
    from vllm import TokensPrompt

    engine = llm.llm_engine
    for i, params in enumerate(params_list):
        engine.add_request(f"bench-{time.monotonic_ns()}-{i}", TokensPrompt(prompt_token_ids=prompt_ids), params)
    times = []
    while engine.has_unfinished_requests():
        t = time.perf_counter()
        outputs = engine.step()
        times.append(time.perf_counter() - t)
        if texts is not None:
            texts += [o.text for out in outputs if out.finished for o in out.outputs]
    return times[1:-1]  # drop the prefill step and the final (finishing) step


def frequent_token(llm, prompt_ids: list[int], steps: int) -> str:
    """The text of the token a plain greedy run of the prompt writes most often."""
    from collections import Counter

    from vllm import SamplingParams, TokensPrompt

    out = llm.generate([TokensPrompt(prompt_token_ids=prompt_ids)],
                       SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True), use_tqdm=False)[0]
    tokenizer = llm.get_tokenizer()
    counts = Counter(t for t in (tokenizer.decode([i]) for i in out.outputs[0].token_ids) if t)
    return counts.most_common(1)[0][0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[4])
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--decode-steps", type=int, default=64)
    parser.add_argument("--layout", default="combined")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commits", action="store_true", help="steps commit often (see the docstring)")
    parser.add_argument("--model-dir", default=os.path.expanduser("~/.cache/vllm-hogwild/bench-smollm2-shape"))
    parser.add_argument("--out", default=os.path.join(RESULTS, "cpu_step.json"))
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    path = build_model(args.model_dir)
    llm = LLM(model=path, dtype="float32", enforce_eager=True, block_size=32, max_model_len=4096,
              kv_cache_memory_bytes=1 << 30, max_num_seqs=16, seed=0)
    prompt = [5 + (i * 7) % 300 for i in range(args.prompt_tokens)]
    plain = SamplingParams(temperature=0, max_tokens=args.decode_steps, ignore_eos=True)
    step_times(llm, prompt, [plain] * max(args.workers))  # warm up
    single: list[float] = []
    by_workers = []
    boundary = frequent_token(llm, prompt, args.decode_steps) if args.commits else None
    for workers in args.workers:
        flag = {"hogwild_workers": workers, "hogwild_layout": args.layout}
        if boundary is not None:
            flag.update(hogwild_boundary=boundary, hogwild_boundary_sentence=False)
        hog = SamplingParams(temperature=0, max_tokens=args.decode_steps, ignore_eos=True, extra_args=flag)
        runs: dict[str, list[float]] = {"hogwild": [], "independent": []}
        written: list[str] = []
        for _ in range(args.repeats):
            runs["hogwild"] += step_times(llm, prompt, [hog], written)
            runs["independent"] += step_times(llm, prompt, [plain] * workers)
            single += step_times(llm, prompt, [plain])
        ms = {k: 1e3 * statistics.median(v) for k, v in runs.items()}
        by_workers.append({
            "workers": workers,
            "median_step_ms": ms,
            "ratio_hogwild_over_independent": ms["hogwild"] / ms["independent"],
            "hogwild_tokens_per_s": workers * 1e3 / ms["hogwild"],
            "boundaries_per_worker": (sum(t.count(boundary) for t in written) / len(written)
                                      if boundary is not None and written else None),
        })
    single_ms = 1e3 * statistics.median(single)
    result = {
        "command": "python -m benchmarks.cpu.cpu_step_bench " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else
                                          f" {' '.join(map(str, v)) if isinstance(v, list) else v}")
            for k, v in vars(args).items() if k not in ("out", "model_dir") and v is not False),
        "machine": _machine(),
        "date": time.strftime("%Y-%m-%d"),
        "single_request": {"median_step_ms": single_ms, "tokens_per_s": 1e3 / single_ms},
        "boundary": boundary,
        "groups": by_workers,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()


def _machine() -> dict:
    from benchmarks.common import driver

    return driver.machine()
