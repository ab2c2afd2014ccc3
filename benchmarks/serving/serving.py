"""Serving: hogwild and plain requests against a running ``vllm-hogwild serve``, over HTTP.

    vllm-hogwild serve MODEL ...                  # in another shell
    python -m benchmarks.serving.serving --base-url http://127.0.0.1:8000 [--num-requests 64] [--rate 2]
                                 [--hogwild-share 0.5] [--workers 4] [--max-tokens 256] [--out OUT]

Requests arrive as a Poisson process (``--rate`` per second; ``inf`` sends all at once),
each a streaming ``/v1/chat/completions`` call (``--endpoint completions``: ``/v1/completions``):
a share of them hogwild groups (W workers with
the protocol, through ``vllm_xargs``), the rest plain requests, prompts drawn in turn from
``--problems``. Per kind: time to first token of each worker (choice), time to the final
answer (the stream's end: a hogwild stream ends after its ``final_answers`` chunk), output
tokens/s over the run, and errors (any status but 200, or a broken stream).

Why a client of our own and not ``vllm bench serve``: vLLM's benchmark can carry
``vllm_xargs`` (``--extra-body``), but it sends one body to every request, so plain and
hogwild requests cannot be mixed in one run, and its stream reader keeps only
``choices[0]``: the other workers' first tokens and the final-answer chunk are lost.
This client reads every choice, and reports in the same terms (TTFT, percentiles).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field


from benchmarks.common import driver  # noqa: E402


@dataclass
class Result:
    kind: str  # "hogwild" or "plain"
    ok: bool = False
    error: str | None = None
    first_token: dict[int, float] = field(default_factory=dict)  # choice -> seconds from sending
    seconds: float = 0.0  # from sending to the stream's end
    tokens: int = 0
    final_answer: str | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--model", help="served model name (default: the server's first model)")
    p.add_argument("--problems", default=driver.DEFAULT_PROBLEMS)
    p.add_argument("--endpoint", default="chat", choices=["chat", "completions"],
                   help="/v1/chat/completions (the problem as the user's message) or /v1/completions (as the prompt)")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--rate", type=float, default=2.0, help="requests per second (Poisson); inf: all at once")
    p.add_argument("--hogwild-share", type=float, default=0.5, help="share of requests that are hogwild groups")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--layout", default="combined", choices=["contiguous", "interleaved", "combined"])
    p.add_argument("--no-protocol", action="store_true", help="hogwild requests with the bare flag")
    p.add_argument("--max-tokens", type=int, default=256, help="per worker (and per plain request)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600, help="seconds a request may take")
    p.add_argument("--out", help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    if args.num_requests < 1 or args.rate <= 0 or not 0 <= args.hogwild_share <= 1:
        p.error("--num-requests > 0, --rate > 0 and --hogwild-share in 0..1 expected")
    return args


def body(kind: str, prompt: str, model: str, args: argparse.Namespace, index: int) -> dict:
    request = {"model": model, "max_tokens": args.max_tokens, "temperature": args.temperature,
               "seed": args.seed + index, "stream": True, "stream_options": {"include_usage": True}}
    if args.endpoint == "chat":
        request["messages"] = [{"role": "user", "content": prompt}]
    else:
        request["prompt"] = prompt
    if kind == "hogwild":
        request["vllm_xargs"] = {"hogwild_workers": args.workers, "hogwild_layout": args.layout}
        if not args.no_protocol:
            request["vllm_xargs"]["hogwild_protocol"] = True
    return request


async def send(session, url: str, kind: str, request: dict, timeout: float) -> Result:
    import aiohttp

    result, start = Result(kind), time.perf_counter()
    try:
        async with session.post(url, json=request, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.text())[:300]}"
                return result
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: "):])
                now = time.perf_counter() - start
                for choice in chunk.get("choices") or []:
                    if choice.get("text") or (choice.get("delta") or {}).get("content"):
                        result.first_token.setdefault(choice["index"], now)
                if chunk.get("usage"):
                    result.tokens = chunk["usage"]["completion_tokens"]
                answers = (chunk.get("hogwild") or {}).get("final_answers")
                if answers:
                    result.final_answer = answers[0]
            result.seconds = time.perf_counter() - start
            result.ok = True
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as error:
        result.error = f"{type(error).__name__}: {error}"
    return result


async def served_model(session, base: str) -> str:
    async with session.get(base + "/v1/models") as response:
        return (await response.json())["data"][0]["id"]


async def load(args: argparse.Namespace, prompts: list[str]) -> tuple[list[Result], float, str]:
    import aiohttp

    rng = random.Random(args.seed)
    kinds = ["hogwild" if rng.random() < args.hogwild_share else "plain" for _ in range(args.num_requests)]
    url = args.base_url.rstrip("/") + ("/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions")
    async with aiohttp.ClientSession() as session:
        model = args.model or await served_model(session, args.base_url.rstrip("/"))
        tasks, start = [], time.perf_counter()
        for i, kind in enumerate(kinds):
            request = body(kind, prompts[i % len(prompts)], model, args, i)
            tasks.append(asyncio.create_task(send(session, url, kind, request, args.timeout)))
            if args.rate != float("inf") and i + 1 < len(kinds):
                await asyncio.sleep(rng.expovariate(args.rate))
        results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - start, model


def summarize(results: list[Result], seconds: float) -> dict:
    from statistics import mean

    def pct(values: list[float], q: float) -> float | None:
        return driver.percentile(values, q) if values else None

    report = {"seconds": seconds, "requests": len(results), "errors": sum(not r.ok for r in results),
              "output_tokens_per_s": sum(r.tokens for r in results) / seconds, "kinds": {}}
    for kind in ("hogwild", "plain"):
        mine = [r for r in results if r.kind == kind]
        done = [r for r in mine if r.ok]
        if not mine:
            continue
        ttft = [t for r in done for t in r.first_token.values()]
        last_first = [max(r.first_token.values()) for r in done if r.first_token]
        report["kinds"][kind] = {
            "requests": len(mine), "errors": len(mine) - len(done),
            "error_samples": [r.error for r in mine if not r.ok][:3],
            "ttft_p50": pct(ttft, 50), "ttft_p90": pct(ttft, 90),
            "last_worker_ttft_p50": pct(last_first, 50),
            "answer_s_p50": pct([r.seconds for r in done], 50), "answer_s_p90": pct([r.seconds for r in done], 90),
            "tokens_mean": mean(r.tokens for r in done) if done else None,
            "workers_seen_mean": mean(len(r.first_token) for r in done) if done else None,
            "final_answers": sum(r.final_answer is not None for r in done),
        }
    return report


def table(report: dict) -> str:
    lines = [f"{report['requests']} requests in {report['seconds']:.1f} s, {report['errors']} errors, "
             f"{report['output_tokens_per_s']:.1f} output tokens/s\n",
             "| kind | requests | errors | TTFT p50 (s) | TTFT p90 (s) | last worker's TTFT p50 (s) | "
             "answer p50 (s) | answer p90 (s) | tokens/request | choices seen | final answers |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def f(value, spec="{:.2f}"):
        return "-" if value is None else spec.format(value)

    for kind, k in report["kinds"].items():
        lines.append(f"| {kind} | {k['requests']} | {k['errors']} | {f(k['ttft_p50'])} | {f(k['ttft_p90'])} | "
                     f"{f(k['last_worker_ttft_p50'])} | {f(k['answer_s_p50'])} | {f(k['answer_s_p90'])} | "
                     f"{f(k['tokens_mean'], '{:.0f}')} | {f(k['workers_seen_mean'], '{:.1f}')} | "
                     f"{k['final_answers']} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict:
    prompts = [p.text for p in driver.problems(args.problems)]
    results, seconds, model = asyncio.run(load(args, prompts))
    return {"benchmark": "serving", "command": "python -m benchmarks.serving.serving " + " ".join(sys.argv[1:]),
            "model": model, "machine": driver.machine(), "config": vars(args), **summarize(results, seconds)}


def main(argv: list[str] | None = None) -> dict:
    return driver.report(parse_args(argv), run, table)


if __name__ == "__main__":
    main()
