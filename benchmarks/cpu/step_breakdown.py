"""Where one engine step goes: G hogwild groups of W workers against G x W independent requests,
on one in-process engine, region by region.

    python -m benchmarks.cpu.step_breakdown [--workers 4] [--groups 1] [--tokens 128]
                                        [--layouts combined] [--repeats 3] [--out benchmarks/results/step_breakdown]

Each group answers one chat prompt (the problems file's first, cycled for G > 1) with W
workers, greedy, each starting from its own prefix (``hogwild_prefixes``: greedy workers
with one prompt would otherwise write one text); the independent requests get the same
prompt with the same prefix appended, W per group, what one runs without hogwild. All run
``--tokens`` tokens each, ignoring EOS. Rounds alternate the variants (the independent
requests, then a group in each of ``--layouts``; this machine's step times drift by 10-20%).
Decode tokens/s of a variant is its rows per step over its median step time.

Every region below is timed by wrapping the function that runs it (inclusive time, summed
over the calls in a step); a step's total is ``LLMEngine.step``. Reported per variant: the
median over the decode steps (the first step, the prompt's, and the last are dropped) of
each region's milliseconds per step, and for the per-layer regions per call. Regions a
release does not have (vLLM 0.32's V1 runner vs 0.34's Model Runner V2) are left out.
The plugin's own host work is what the group's regions cost above the independent ones'
(both run through the same hooks: a plain request's steps pass every hook too).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections import Counter, defaultdict
from typing import Any


from benchmarks.common import driver  # noqa: E402  (sets vLLM's environment before vLLM is imported)

PREFIXES = ("First,", "Let me", "I will", "We need", "To solve", "Step 1:", "Note that", "Okay,")

# (label, "module:Class.method" or "module:function", per layer?)
REGIONS = [
    ("scheduler: schedule", "vllm.v1.core.sched.scheduler:Scheduler.schedule", False),
    ("scheduler: update_from_output", "vllm.v1.core.sched.scheduler:Scheduler.update_from_output", False),
    ("runner: execute_model", "vllm.v1.worker.gpu_model_runner:GPUModelRunner.execute_model", False),
    ("runner: _update_states", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._update_states", False),
    ("runner: _prepare_inputs", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._prepare_inputs", False),
    ("runner: attention metadata", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._build_attention_metadata",
     False),
    ("runner: model forward", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._model_forward", False),
    ("runner: sample_tokens", "vllm.v1.worker.gpu_model_runner:GPUModelRunner.sample_tokens", False),
    ("runner: _bookkeeping_sync", "vllm.v1.worker.gpu_model_runner:GPUModelRunner._bookkeeping_sync", False),
    ("runner: execute_model", "vllm.v1.worker.cpu.standalone_model_runner:StandaloneCPUModelRunner.execute_model",
     False),
    ("runner: prepare_attn", "vllm.v1.worker.cpu.standalone_model_runner:StandaloneCPUModelRunner.prepare_attn",
     False),
    ("runner: sample_tokens", "vllm.v1.worker.cpu.standalone_model_runner:StandaloneCPUModelRunner.sample_tokens",
     False),
    ("sampler", "vllm.v1.sample.sampler:Sampler.forward", False),
    ("sampler: hogwild logits processor", "vllm_hogwild.hooks.sampler:HogwildLogitsProcessor.apply", False),
    ("builder: build (vLLM's + hogwild)", "vllm_hogwild.cpu_backend:HogwildCPUMetadataBuilder.build", False),
    ("builder: vLLM's build", "vllm.v1.attention.backends.cpu_attn:CPUAttentionMetadataBuilder.build", False),
    ("builder: step plan (the planner and its inputs)", "vllm_hogwild.runtime:step_plan", False),
    ("builder: planner", "vllm_hogwild.planner:Planner.plan", False),
    ("builder: planner: commits (step scan)", "vllm_hogwild.planner:Planner._advance", False),
    ("builder: planner: views", "vllm_hogwild.group:GroupTracker.split_views", False),
    ("builder: planner: packing", "vllm_hogwild.planner:Planner._pack", False),
    ("builder: step rows", "vllm_hogwild.cpu_backend:step_rows", False),
    ("builder: fragment table (the PyTorch op's)", "vllm_hogwild.cpu_backend:build", False),
    ("builder: table, work lists and turns (one call)", "hogwild_kernels.cpu_native:prepare_step", False),
    ("builder: copy list", "hogwild_kernels.cpu_native:prepare_copies", False),
    ("model: decoder layer (Llama)", "vllm.model_executor.models.llama:LlamaDecoderLayer.forward", True),
    ("model: attention block (qkv, RoPE, attention, o)", "vllm.model_executor.models.llama:LlamaAttention.forward",
     True),
    ("model: MLP", "vllm.model_executor.models.llama:LlamaMLP.forward", True),
    ("layer: attention call", "vllm_hogwild.cpu_backend:HogwildCPUAttentionImpl.forward", True),
    ("layer: vLLM's attention", "vllm.v1.attention.backends.cpu_attn:CPUAttentionBackendImpl.forward", True),
    ("layer: KV cache write", "vllm.v1.attention.backends.cpu_attn:CPUAttentionBackendImpl.do_kv_cache_update",
     True),
    ("layer: hogwild op", "hogwild_kernels.cpu_native:fragment_attention", True),
    ("layer: store copies", "hogwild_kernels.cpu_native:pack", True),
    ("outputs: process_outputs", "vllm.v1.engine.output_processor:OutputProcessor.process_outputs", False),
]


class Regions:
    """Wraps each region's function so that every call adds its wall time to the region."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter = Counter()
        self.timed: list[str] = []
        self.absent: list[str] = []

    def install(self, regions: list[tuple[str, str, bool]]) -> None:
        for label, where, _ in regions:
            module_name, _, path = where.partition(":")
            try:
                owner: Any = importlib.import_module(module_name)
                *parents, name = path.split(".")
                for p in parents:
                    owner = getattr(owner, p)
                original = getattr(owner, name)
            except (ImportError, AttributeError):
                self.absent.append(f"{label} ({where})")
                continue
            setattr(owner, name, self._timed(label, original))
            if label not in self.timed:
                self.timed.append(label)

    def _timed(self, label: str, original: Any) -> Any:
        seconds, calls, clock = self.seconds, self.calls, time.perf_counter

        def timed(*args, **kwargs):
            start = clock()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[label] += clock() - start
                calls[label] += 1

        return timed

    def take(self) -> tuple[dict[str, float], Counter]:
        seconds, calls = dict(self.seconds), self.calls.copy()
        self.seconds.clear()
        self.calls.clear()
        return seconds, calls


def run_steps(llm: Any, regions: Regions, prompts: list[str], params: list[Any]) -> list[dict]:
    """Submit the requests, step the engine until they finish; each step's regions."""
    engine = llm.llm_engine
    tag = time.monotonic_ns()
    for i, (prompt, p) in enumerate(zip(prompts, params)):
        engine.add_request(f"breakdown-{tag}-{i}", prompt, p)
    regions.take()
    steps = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        total = time.perf_counter() - start
        seconds, calls = regions.take()
        steps.append({"step": total, "seconds": seconds, "calls": calls})
    return steps[1:-1]


def summarize(steps: list[dict], labels: list[str], per_layer: set[str]) -> dict:
    out = {"steps": len(steps), "step_ms": 1e3 * statistics.median(s["step"] for s in steps)}
    for label in labels:
        values = [1e3 * s["seconds"].get(label, 0.0) for s in steps]
        calls = [s["calls"].get(label, 0) for s in steps]
        entry = {"ms_per_step": statistics.median(values), "calls_per_step": statistics.median(calls)}
        if label in per_layer and entry["calls_per_step"]:
            entry["us_per_call"] = 1e3 * statistics.median(v / c for v, c in zip(values, calls) if c)
        out[label] = entry
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    driver.engine_options(p)
    p.add_argument("--problems", default=driver.DEFAULT_PROBLEMS, help="JSONL problem file (its prompts, cycled)")
    p.add_argument("--workers", type=int, default=4, choices=range(2, len(PREFIXES) + 1), metavar="W")
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--tokens", type=int, default=128, help="tokens per worker (and per independent request)")
    p.add_argument("--layouts", nargs="+", default=["combined"], choices=["contiguous", "interleaved", "combined"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    if args.groups < 1 or args.tokens < 3 or args.repeats < 1:
        p.error("--groups and --repeats: positive integers; --tokens: at least 3")
    return args


def run(args: argparse.Namespace) -> dict:
    from vllm import SamplingParams

    texts = [p.text for p in driver.problems(args.problems)]
    llm = driver.engine_from(args, driver.model_path(args.model))
    tokenizer = llm.get_tokenizer()
    chats = [driver.chat_prompt(tokenizer, texts[g % len(texts)]) for g in range(args.groups)]
    prefixes = list(PREFIXES[: args.workers])

    def variants(tokens: int) -> dict[str, tuple[list[str], list[Any]]]:
        common = dict(temperature=0, max_tokens=tokens, ignore_eos=True)
        found = {"independent": ([c + p + " " for c in chats for p in prefixes],
                                 [SamplingParams(**common)] * (args.groups * args.workers))}
        for layout in args.layouts:
            flag = {"hogwild_workers": args.workers, "hogwild_layout": layout, "hogwild_prefixes": prefixes}
            found[layout] = (chats, [SamplingParams(**common, extra_args=flag)] * args.groups)
        return found

    regions = Regions()
    regions.install(REGIONS)
    for prompts, params in variants(min(args.tokens, 16)).values():  # the first steps of an engine are slow
        run_steps(llm, regions, prompts, params)
    measured = variants(args.tokens)
    steps: dict[str, list[dict]] = {name: [] for name in measured}
    for r in range(args.repeats):
        for name, (prompts, params) in measured.items():
            steps[name] += run_steps(llm, regions, prompts, params)
            print(f"round {r}: {name}: {len(steps[name])} steps so far", file=sys.stderr, flush=True)
    per_layer = {label for label, _, layer in REGIONS if layer}
    return {
        "benchmark": "step_breakdown", "command": "python -m benchmarks.cpu.step_breakdown " + " ".join(sys.argv[1:]),
        "model": llm.llm_engine.model_config.model, "machine": driver.machine(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "absent": regions.absent,
        "results": {name: summarize(s, regions.timed, per_layer) for name, s in steps.items()},
    }


def table(report: dict) -> str:
    c, results = report["config"], report["results"]
    rows = c["groups"] * c["workers"]
    lines = [f"{c['groups']} group(s) of W={c['workers']} vs {rows} independent requests, {c['tokens']} tokens "
             f"each; vLLM {report['machine']['vllm']}; decode tokens/s (rows over the median step):", "",
             "| variant | median step ms | decode tokens/s | vs independent |", "| --- | --- | --- | --- |"]
    ind = results["independent"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['step_ms']:.2f} | {rows * 1e3 / r['step_ms']:.1f} | "
                     f"{ind['step_ms'] / r['step_ms']:.2f}x |")
    for layout in c["layouts"]:
        lines += ["", breakdown(report, layout)]
    return "\n".join(lines) + "\n"


def breakdown(report: dict, layout: str) -> str:
    hog, ind = report["results"][layout], report["results"]["independent"]
    lines = [f"{layout}: medians over {hog['steps']} / {ind['steps']} decode steps", "",
             f"| region | {layout} ms/step | independent ms/step | difference | {layout} us/call | independent us/call |",
             "| --- | --- | --- | --- | --- | --- |",
             f"| **engine step** | {hog['step_ms']:.2f} | {ind['step_ms']:.2f} | {hog['step_ms'] - ind['step_ms']:+.2f} | | |"]
    for label in (k for k in hog if isinstance(hog[k], dict)):
        h, i = hog[label], ind[label]
        per_call = [f"{x['us_per_call']:.1f}" if "us_per_call" in x else "" for x in (h, i)]
        lines.append(f"| {label} | {h['ms_per_step']:.3f} | {i['ms_per_step']:.3f} | "
                     f"{h['ms_per_step'] - i['ms_per_step']:+.3f} | {per_call[0]} | {per_call[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    return driver.report(parse_args(argv), run, table)

if __name__ == "__main__":
    main()
