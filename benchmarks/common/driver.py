"""One batch of problems through an in-process ``LLM``, step by step, measured.

Shared by ``throughput.py`` and ``accuracy.py``. Each problem is answered by one or more
requests (one hogwild group; or W independent requests, whose answer is their vote); all
of a batch's requests are submitted at once and the engine is stepped until none is left,
so each problem's *sequential depth* (the most engine steps one of its requests took, from
its first token to its last) and
*time to answer* (from submission) can be read off, with the KV blocks in use after every
step and the protocol's forced steps (``HogwildLogitsProcessor``'s counters).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common.paths import DATA

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the driver reads the engine in-process
os.environ.setdefault("VLLM_PLUGINS", "hogwild")

DEFAULT_PROBLEMS = os.path.join(DATA, "arithmetic50.jsonl")


def model_path(model: str | None) -> str:
    """``model``: a catalogue name (``vllm-hogwild models``), a local folder, or a hub name vLLM
    will fetch; the embedded SmolLM2 (converted on first use) when None."""
    from vllm_hogwild import models

    if model is None or model in models.CATALOGUE:
        return models.resolve(model)
    local = model.startswith((".", "/", "~")) or os.path.isdir(model)
    if local and not os.path.exists(os.path.join(os.path.expanduser(model), "config.json")):
        raise SystemExit(f"--model: {model!r} is not a model folder (no config.json)")
    return os.path.expanduser(model) if local else model


def problems(path: str, limit: int | None = None) -> list:
    """The problems of a JSONL file, or an exit naming the file and line that is wrong."""
    from benchmarks.common.grading import load_problems

    try:
        return load_problems(path, limit)
    except (OSError, ValueError) as error:
        raise SystemExit(f"--problems: {error}") from None


def problem_options(parser: Any) -> None:
    """The options that choose problems (``chosen_problems`` reads them)."""
    parser.add_argument("--problems", default=DEFAULT_PROBLEMS, help="JSONL problem file")
    parser.add_argument("--first", type=int, default=0, help="the first problem (0-based line of the file)")
    parser.add_argument("--limit", type=int, help="only N problems from --first on")


def chosen_problems(args: Any) -> tuple[list, list[int]]:
    """The problems of ``args.problems`` and the numbers of those chosen (``--first``, ``--limit``),
    or an exit saying there are none."""
    found = problems(args.problems)
    last = len(found) if args.limit is None else min(len(found), args.first + args.limit)
    numbers = list(range(args.first, last))
    if not numbers:
        raise SystemExit(f"--first: {args.problems} has {len(found)} problems, none from {args.first} on")
    return found, numbers


def check_budgets(model: str, budgets: list[int], workers: int, max_model_len: int, protocol: bool) -> None:
    """Refuse, before any engine starts, a per-worker budget that cannot run: W workers
    over ``max_model_len``, or (with the protocol) less than its closing sentence and answer."""
    for budget in budgets:
        if budget < 1 or workers * budget >= max_model_len:
            raise SystemExit(f"--max-tokens/--budgets: {workers} workers x {budget} tokens do not fit "
                             f"--max-model-len {max_model_len} with a prompt; allowed: 1..{max_model_len // workers - 1}")
    if protocol:
        from transformers import AutoTokenizer

        from vllm_hogwild.prompts import CLOSING, NAMES
        from vllm_hogwild.protocol import GroupProtocol, ProtocolConfig

        closing = len(AutoTokenizer.from_pretrained(model).encode(CLOSING, add_special_tokens=False))
        least = GroupProtocol.least_max_tokens(ProtocolConfig(NAMES[:1]), closing)
        if min(budgets) < least:
            raise SystemExit(f"--max-tokens/--budgets: the protocol needs at least {least} tokens per worker "
                             f"(its closing sentence and answer) on this model; got {min(budgets)}")


def build_llm(model: str, max_model_len: int, kv_gib: float | None, max_num_seqs: int,
              max_batched_tokens: int, seed: int = 0, tensor_parallel: int = 1, dtype: str | None = None,
              prefix_caching: bool = True) -> Any:
    """The engine the benchmarks run on. On a GPU: the plugin's attention backend and
    synchronous scheduling (what hogwild needs there), vLLM's memory defaults unless
    ``kv_gib`` is given. On CPU: eager, block size 32, a KV cache of ``kv_gib`` (default 4
    GiB). ``dtype``: the model's (default: float32 on CPU, vLLM's on a GPU);
    ``prefix_caching``: vLLM's automatic prefix caching (its default: on)."""
    import torch
    from vllm import LLM

    common = dict(model=model, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                  max_num_batched_tokens=max_batched_tokens, seed=seed, tensor_parallel_size=tensor_parallel,
                  enable_prefix_caching=prefix_caching)
    if kv_gib is not None or not torch.cuda.is_available():
        common["kv_cache_memory_bytes"] = int((kv_gib or 4.0) * 2**30)
    if torch.cuda.is_available():
        return LLM(**common, attention_backend="CUSTOM", async_scheduling=False, **({"dtype": dtype} if dtype else {}))
    return LLM(**common, dtype=dtype or "float32", enforce_eager=True, block_size=32)


def engine_options(parser: Any) -> None:
    """The engine's command-line options, the same in every offline benchmark."""
    parser.add_argument("--model", help="model folder or hub name (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--kv-gib", type=float, help="KV cache size (default: 4 on CPU, vLLM's on a GPU)")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-batched-tokens", type=int, default=8192)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="the model's dtype (default: float32 on CPU, vLLM's on a GPU)")


def engine_from(args: Any, model: str) -> Any:
    return build_llm(model, args.max_model_len, args.kv_gib, args.max_num_seqs, args.max_batched_tokens,
                     args.seed, args.tensor_parallel_size, dtype=getattr(args, "dtype", None))


@dataclass
class Request:
    """One engine request of a problem: its prompt and sampling parameters."""

    prompt: str
    params: Any


@dataclass
class Answered:
    """What one request gave back."""

    texts: list[str]  # per choice (a hogwild group: per worker)
    tokens: int  # output tokens of all choices
    final_answer: str | None  # the protocol's answer (None without it)


@dataclass
class Solved:
    """One problem's requests, answered, and when."""

    problem: int
    answers: list[Answered]
    depth: int  # sequential depth: the most engine steps one of its requests took, first token to last
    queued_steps: int  # engine steps from submission to the problem's first output token
    seconds: float  # wall time from submission to its last output


@dataclass
class Batch:
    solved: list[Solved]
    steps: int
    seconds: float
    peak_blocks: int
    worker_steps: int  # rows of protocol workers sampled (the logits processor's count)
    forced_steps: int  # of which forced

    @property
    def tokens(self) -> int:
        return sum(a.tokens for s in self.solved for a in s.answers)


@dataclass
class _Tracker:
    problem: int
    first: int | None = None
    last: int = 0
    done_at: float = 0.0
    texts: dict[int, list[str]] = field(default_factory=dict)
    tokens: int = 0
    answer: str | None = None
    finished: bool = False


def _engine_core(llm: Any) -> Any:
    return llm.llm_engine.engine_core.engine_core


def _protocol_counters(llm: Any) -> tuple[int, int]:
    """(worker_steps, forced_steps) summed over the hogwild logits processors."""
    from vllm_hogwild.hooks.sampler import hogwild_processors

    runner = llm.llm_engine.model_executor.driver_worker.worker.model_runner
    procs = hogwild_processors(runner)
    return sum(p.worker_steps for p in procs), sum(p.forced_steps for p in procs)


def blocks_in_use(llm: Any) -> int:
    pool = _engine_core(llm).scheduler.kv_cache_manager.block_pool
    return pool.num_gpu_blocks - 1 - pool.get_num_free_blocks()  # block 0 is vLLM's null block


def run_batch(llm: Any, problems: list[list[Request]], tag: str) -> Batch:
    """Submit every request of every problem at once, step until all are done.

    ``problems[i]`` are the requests that answer problem ``i``; ``tag`` keeps request ids
    unique across batches on one engine.
    """
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    if engine.has_unfinished_requests():
        raise RuntimeError("run_batch: the engine still has requests from an earlier batch")
    owners: dict[str, tuple[int, int]] = {}
    trackers = {}
    base_blocks = blocks_in_use(llm)
    workers0, forced0 = _protocol_counters(llm)
    start = time.perf_counter()
    for i, requests in enumerate(problems):
        for j, request in enumerate(requests):
            request_id = f"{tag}-{i}-{j}"
            params = request.params.clone()
            params.output_kind = RequestOutputKind.DELTA
            owners[request_id] = (i, j)
            trackers[request_id] = _Tracker(i)
            engine.add_request(request_id, request.prompt, params)
    step, peak = 0, base_blocks
    while engine.has_unfinished_requests():
        outputs = engine.step()
        step += 1
        now = time.perf_counter()
        peak = max(peak, blocks_in_use(llm))
        for out in outputs:
            t = trackers[out.request_id]
            t.first = step if t.first is None else t.first
            t.last, t.done_at = step, now
            for o in out.outputs:
                t.texts.setdefault(o.index, []).append(o.text)
                t.tokens += len(o.token_ids)
            t.answer = getattr(out, "hogwild_final_answer", t.answer)
            t.finished = t.finished or out.finished
    seconds = time.perf_counter() - start
    lost = [rid for rid, t in trackers.items() if not t.finished]
    if lost:
        raise RuntimeError(f"run_batch: requests ended without a final output: {lost[:5]}")
    workers1, forced1 = _protocol_counters(llm)
    solved = []
    for i in range(len(problems)):
        mine = [trackers[rid] for rid, (p, _) in owners.items() if p == i]
        answers = [Answered(["".join(t.texts[k]) for k in sorted(t.texts)], t.tokens, t.answer) for t in mine]
        solved.append(Solved(i, answers, depth=max(t.last - t.first + 1 for t in mine),
                             queued_steps=min(t.first for t in mine) - 1,
                             seconds=max(t.done_at for t in mine) - start))
    return Batch(solved, step, seconds, peak - base_blocks, workers1 - workers0, forced1 - forced0)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between ranks (numpy's default)."""
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def machine() -> dict:
    """Where a result was measured: the CPU's model and the ISA flags its figures depend on
    (avx2, fma, avx512f, avx512_bf16, amx_tile, amx_bf16), the compiled op's build level
    (``VLLM_HOGWILD_CPU_ISA``), the cores, torch and vLLM (when installed)."""
    import platform

    import torch

    from hogwild_kernels import cpu_native, isa

    cpu = isa.this_cpu()
    try:
        import vllm

        version = vllm.__version__
    except ImportError:
        version = None
    try:
        level = cpu_native.level()
    except ValueError as e:
        level = str(e)
    return {"cpu": cpu.model, "isa": cpu.isa, "isa_flags": cpu.named_flags, "op_build": level,
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "vllm": version, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def machine_line(m: dict) -> str:
    """A machine record in one line, as the markdown reports give it."""
    flags = " ".join(m.get("isa_flags", [])) or "none"
    vllm = f", vLLM {m['vllm']}" if m.get("vllm") else ""
    return (f"{m.get('cpu', m.get('processor'))} (ISA {m.get('isa', '?')}; flags {flags}), {m.get('cpus')} cores, "
            f"op build {m.get('op_build', 'native')}, torch {m.get('torch')}{vllm}, {m.get('date')}")


def chat_prompt(tokenizer: Any, text: str) -> str:
    """``text`` as the user's turn of the model's chat template (as is, for a model without one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def report(args: Any, run, table, plot=None) -> dict:
    """Run a benchmark, print its table, and with ``--out`` write ``OUT.json`` (everything),
    ``OUT.md`` (the command, model, machine and table) and ``OUT.png`` (``plot``'s figure, if
    it has a plot)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = run(args)
    print(table(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(f"`{result['command']}`\n\nmodel `{result['model']}`; machine {machine_line(result['machine'])}\n\n")
            f.write(table(result))
        if plot is not None:
            fig = plot(result)
            fig.tight_layout()
            fig.savefig(args.out + ".png", dpi=120)
            plt.close(fig)
    return result
