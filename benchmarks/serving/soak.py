"""Soak: a real server under mixed traffic for a while, then checked for anything lost or leaked.

    python -m benchmarks.serving.soak [--model PATH] [--dtype float32] [--minutes 10] [--clients 8]
                              [--out benchmarks/results/soak]

Starts ``vllm-hogwild serve`` as users do (vLLM's default multiprocess mode), then K clients
send requests for T minutes, each picked at random from a fixed pool (greedy, so that each has
one right answer): hogwild groups (W 1..4, every layout, protocol on and off, streaming and
not) and plain requests; some clients vanish mid-stream, some send malformed requests.
Afterwards:

- no 5xx, and every malformed request a 400;
- the server healthy, vLLM's KV-cache usage back to 0 (its metrics), and the plugin's
  per-group state in every engine (scheduler bookkeeping, planner, protocol) empty
  (``GET /hogwild/state``, after one more plain request: the model runner hears of a
  step's finished requests with the next step);
- every completed request equal to its isolated offline run (the same spec, computed by an
  offline ``LLM`` after the server is gone, one engine at a time);
- the server's process tree memory after warm-up against the end (RSS), and sampled every
  ``--rss-every`` seconds through the soak, with the slope of a straight line fitted to the
  samples of its second half (a leak keeps climbing there; warm-up does not);
- SIGTERM sent while a burst of streaming requests (hogwild groups and plain) is running
  ends the server and every process it started within 60 s, every one of those clients
  sees its stream end (none hangs), and a restarted server serves again.

Writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


from benchmarks.common import driver  # noqa: E402

PROMPTS = ["A farmer has 12 cows. She buys 5 more, then sells 4. How many are left?",
           "Each worker writes a step, then checks the others.", "Let x be the unknown. Then 2x + 3 = 11.",
           "Alice and Bob solve problems together."]
MALFORMED = [{"hogwild_workers": 0}, {"hogwild_workers": 2, "hogwild_layout": ["combined"]},
             {"hogwild_workers": "many"}, {"hogwild_workers": 2, "hogwild_wrokers": 3},
             {"hogwild_workers": 2, "hogwild_prefixes": ["only one"]}, {"hogwild_workers": 2, "hogwild_preset": {}}]


def specs(protocol_workers: int) -> list[dict]:
    """The pool: (prompt, hogwild flags or None) pairs, each also streamed or not."""
    pool = []
    for i, prompt in enumerate(PROMPTS):
        pool.append({"prompt": prompt, "flags": None})
        for w, layout in ((1 + i % 4, "combined"), (2 + i % 3, "interleaved"), (4 - i % 3, "contiguous")):
            pool.append({"prompt": prompt, "flags": {"hogwild_workers": w, "hogwild_layout": layout}})
        pool.append({"prompt": prompt, "flags": {"hogwild_workers": min(1 + i % 3, protocol_workers),
                                                 "hogwild_protocol": True}})
    return pool


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the model's dtype, on the server and offline")
    p.add_argument("--rss-every", type=float, default=30.0, help="seconds between memory samples")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64, help="per worker")
    p.add_argument("--protocol-workers", type=int, default=3, help="most workers of a protocol group")
    p.add_argument("--disconnect-share", type=float, default=0.15)
    p.add_argument("--malformed-share", type=float, default=0.15)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--kv-gib", type=float, default=1.0)
    p.add_argument("--server-option", action="append", default=[], help="one more option for the server")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write OUT.json and OUT.md")
    return p.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, model: str, log) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "vllm_hogwild.cli", "serve", model, "--host", "127.0.0.1", "--port", str(port),
               "--max-model-len", str(args.max_model_len), "--block-size", "32", "--enforce-eager", "--seed", "0",
               "--kv-cache-memory-bytes", str(int(args.kv_gib * 2**30)), "--dtype", args.dtype, *args.server_option]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base, deadline = f"http://127.0.0.1:{port}", time.time() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} while starting")
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            return proc, base
        except OSError:
            if time.time() > deadline:
                raise SystemExit("the server did not start in 300 s")
            time.sleep(1)


class _RssSamples:
    """The server's process tree memory every ``every`` seconds, in a thread, as
    [seconds since ``start``, MiB] pairs."""

    def __init__(self, pid: int, every: float, start: float) -> None:
        import threading

        self.series: list[list[float]] = []
        self._done = threading.Event()

        def sample() -> None:
            while not self._done.wait(every):
                self.series.append([round(time.time() - start, 1), round(tree_rss(pid) / 2**20, 1)])

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> list[list[float]]:
        self._done.set()
        self._thread.join()
        return self.series


def _slope_per_hour(series: list[list[float]]) -> float | None:
    """MiB per hour of a least-squares line through the second half of the samples."""
    import numpy as np

    half = series[len(series) // 2:]
    if len(half) < 3:
        return None
    t, mib = np.array(half).T
    return float(np.polyfit(t / 3600, mib, 1)[0])


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its descendants, in bytes."""
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)] if p.is_running())


def metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


async def client(session, base: str, model: str, pool: list[dict], args: argparse.Namespace, rng: random.Random,
                 stop_at: float, tally: dict, done: list) -> None:
    import aiohttp

    while time.time() < stop_at:
        roll = rng.random()
        spec_index = rng.randrange(len(pool))
        spec = pool[spec_index]
        stream = rng.random() < 0.5
        body = {"model": model, "prompt": spec["prompt"], "max_tokens": args.max_tokens, "temperature": 0,
                "stream": stream}
        kind = "hogwild" if spec["flags"] else "plain"
        if roll < args.malformed_share:
            body["vllm_xargs"], kind = rng.choice(MALFORMED), "malformed"
        elif spec["flags"]:
            body["vllm_xargs"] = spec["flags"]
        disconnect = roll > 1 - args.disconnect_share
        if disconnect:
            body["stream"], kind = True, kind + "-disconnect"
        try:
            async with session.post(base + "/v1/completions", json=body,
                                    timeout=aiohttp.ClientTimeout(total=600)) as response:
                tally.setdefault(kind, {}).setdefault(str(response.status), 0)
                tally[kind][str(response.status)] += 1
                if response.status != 200:
                    await response.read()
                    continue
                if disconnect:
                    async for _ in response.content:
                        break  # one chunk, then the client is gone
                    response.close()
                    continue
                if not body["stream"]:
                    result = await response.json()
                    texts = {c["index"]: c["text"] for c in result["choices"]}
                else:
                    texts = {}
                    async for raw in response.content:
                        line = raw.decode().strip()
                        if line.startswith("data: ") and line != "data: [DONE]":
                            for choice in json.loads(line[6:]).get("choices") or []:
                                texts[choice["index"]] = texts.get(choice["index"], "") + choice.get("text", "")
                done.append({"spec": spec_index, "texts": [texts[i] for i in sorted(texts)]})
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            tally.setdefault(kind, {}).setdefault(type(error).__name__, 0)
            tally[kind][type(error).__name__] += 1


def offline_answers(model: str, pool: list[dict], used: set[int], args: argparse.Namespace) -> dict[int, list[str]]:
    """Each used spec run alone through an offline LLM (after the server is gone)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype=args.dtype, enforce_eager=True, block_size=32, max_model_len=args.max_model_len,
              kv_cache_memory_bytes=int(args.kv_gib * 2**30), seed=0)
    answers = {}
    for i in sorted(used):
        spec = pool[i]
        extra = {"extra_args": spec["flags"]} if spec["flags"] else {}
        out = llm.generate([spec["prompt"]], SamplingParams(temperature=0, max_tokens=args.max_tokens, **extra),
                           use_tqdm=False)[0]
        answers[i] = [o.text for o in out.outputs]
    return answers


def run(args: argparse.Namespace) -> dict:
    os.environ.setdefault("VLLM_PLUGINS", "hogwild")
    model = driver.model_path(args.model)
    pool = specs(args.protocol_workers)
    log_path = os.path.join(tempfile.gettempdir(), f"soak-server-{os.getpid()}.log")
    with open(log_path, "w") as log:
        proc, base = start_server(args, model, log)
        try:
            # Warm-up (a quarter of the time, at most 30 s), then the soak proper.
            asyncio.run(_warm(base, pool, args))
            rss_start = tree_rss(proc.pid)
            started = time.time()
            samples = _RssSamples(proc.pid, args.rss_every, started)
            tally, done = asyncio.run(_soak(base, pool, args))
            seconds = time.time() - started
            rss_series = samples.stop()
            time.sleep(2)
            health = urllib.request.urlopen(base + "/health", timeout=30).status
            kv_usage = metric(base, "vllm:kv_cache_usage_perc")
            running = metric(base, "vllm:num_requests_running") + metric(base, "vllm:num_requests_waiting")
            rss_end = tree_rss(proc.pid)
            _plain_request(base, None)
            state = json.loads(urllib.request.urlopen(base + "/hogwild/state", timeout=30).read())
            burst = _Burst(base, args)
            in_flight = burst.wait_until_running()
        finally:
            stop_started = time.time()
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
                clean_exit = True
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                clean_exit = False
            while _group_alive(proc.pid) and time.time() - stop_started < 60:
                time.sleep(0.2)  # the engine processes end after the API server
            stop_seconds = time.time() - stop_started
        leftovers = _group_alive(proc.pid)
        burst_ends = burst.ended(timeout=30)
        proc2, base2 = start_server(args, model, log)
        try:
            served_after_restart = _plain_request(base2, model)
        finally:
            os.killpg(proc2.pid, signal.SIGTERM)
            proc2.wait(60)
    reference = offline_answers(model, pool, {d["spec"] for d in done}, args)
    mismatches = [d for d in done if d["texts"] != reference[d["spec"]]]
    statuses = {kind: counts for kind, counts in tally.items()}
    server_errors = sum(n for counts in tally.values() for status, n in counts.items() if status.startswith("5"))
    malformed = sum(tally.get("malformed", {}).values()) + sum(tally.get("malformed-disconnect", {}).values())
    return {
        "benchmark": "soak", "command": "python -m benchmarks.serving.soak " + " ".join(sys.argv[1:]),
        "model": model, "machine": driver.machine(), "config": vars(args),
        "seconds": seconds, "requests": sum(sum(c.values()) for c in tally.values()), "completed": len(done),
        "statuses": statuses, "server_errors": server_errors, "malformed": malformed,
        "malformed_400": tally.get("malformed", {}).get("400", 0) + tally.get("malformed-disconnect", {}).get("400", 0),
        "disconnects": sum(sum(c.values()) for k, c in tally.items() if k.endswith("-disconnect")),
        "groups_completed": sum(1 for d in done if pool[d["spec"]]["flags"]),
        "mismatches": len(mismatches), "mismatch_samples": mismatches[:3],
        # by kind: plain requests never touch the plugin, so their share is the engine's own
        # (in bfloat16 a request's numerics depend on what it is batched with)
        "mismatches_by_kind": {kind: [sum(1 for d in pick if d["texts"] != reference[d["spec"]]), len(pick)]
                               for kind, pick in (("plain", [d for d in done if not pool[d["spec"]]["flags"]]),
                                                  ("hogwild", [d for d in done if pool[d["spec"]]["flags"]]))},
        "health": health, "kv_cache_usage_after": kv_usage, "requests_left": running,
        "plugin_state_after": state, "plugin_state_empty": _all_zero(state),
        "sigterm_requests_in_flight": in_flight, "sigterm_burst_clients": burst.size,
        "sigterm_burst_ended": burst_ends,
        "rss_after_warmup_mib": rss_start / 2**20, "rss_end_mib": rss_end / 2**20,
        "rss_series_mib": rss_series, "rss_second_half_mib_per_hour": _slope_per_hour(rss_series),
        "sigterm_exit_seconds": stop_seconds, "sigterm_clean": clean_exit and not leftovers,
        "served_after_restart": served_after_restart, "server_log": log_path,
    }


async def _warm(base: str, pool: list[dict], args: argparse.Namespace) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/v1/models") as response:
            model = (await response.json())["data"][0]["id"]
        until = time.time() + min(30.0, args.minutes * 60 / 4)
        await asyncio.gather(*[client(session, base, model, pool, args, random.Random(-1 - k), until, {}, [])
                               for k in range(args.clients)])


async def _soak(base: str, pool: list[dict], args: argparse.Namespace) -> tuple[dict, list]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/v1/models") as response:
            model = (await response.json())["data"][0]["id"]
        tally, done = {}, []
        until = time.time() + args.minutes * 60
        await asyncio.gather(*[client(session, base, model, pool, args, random.Random(args.seed * 1000 + k), until,
                                      tally, done) for k in range(args.clients)])
        return tally, done


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _all_zero(state) -> bool:
    """Every count in ``GET /hogwild/state``'s answer is 0."""
    if isinstance(state, dict):
        return all(_all_zero(v) for v in state.values())
    if isinstance(state, list):
        return all(_all_zero(v) for v in state)
    return state == 0


PROTOCOL_BURST_TOKENS = 128


class _Burst:
    """Streaming requests (hogwild groups and plain) sent from a thread of their own, so that
    SIGTERM can reach the server while they run; ``ended`` says whether every client saw its
    stream end afterwards (an error or a cut counts: only a hang does not)."""

    def __init__(self, base: str, args: argparse.Namespace, size: int = 6) -> None:
        import threading

        self.base, self.size, self.finished = base, size, 0
        flags = [{"hogwild_workers": 2, "hogwild_layout": "combined"}, None,
                 {"hogwild_workers": min(2, args.protocol_workers), "hogwild_protocol": True}]
        self.bodies = []
        # What the server runs for them to the end of max_tokens (EOS ignored): a group's W
        # workers each. The protocol's requests are not counted: they may end at EOS at once.
        self.steady_requests = 0
        for i in range(size):  # long enough to be running when SIGTERM comes (the protocol ends at EOS)
            flag = flags[i % 3] or {}
            # The protocol's own prompt takes ~700 tokens: its workers get what fits beside it.
            tokens = min(args.max_model_len // 3, PROTOCOL_BURST_TOKENS) if flag.get("hogwild_protocol") \
                else args.max_model_len // 3
            body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens, "temperature": 0, "stream": True}
            if flag:
                body["vllm_xargs"] = flag
            if not flag.get("hogwild_protocol"):
                body["ignore_eos"] = True
            self.bodies.append(body)
            if not flag.get("hogwild_protocol"):
                self.steady_requests += flag.get("hogwild_workers", 1)
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        import aiohttp

        async def one(session, body) -> None:
            try:
                async with session.post(self.base + "/v1/completions", json=body,
                                        timeout=aiohttp.ClientTimeout(total=600)) as response:
                    async for _ in response.content:
                        pass
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                pass
            self.finished += 1

        async with aiohttp.ClientSession() as session:
            async with session.get(self.base + "/v1/models") as response:
                model = (await response.json())["data"][0]["id"]
            await asyncio.gather(*[one(session, {"model": model, **b}) for b in self.bodies])

    def wait_until_running(self, timeout: float = 60) -> int:
        """Requests running on the server once the burst has them all in (or at ``timeout``)."""
        deadline, running = time.time() + timeout, 0
        while time.time() < deadline:
            running = int(metric(self.base, "vllm:num_requests_running"))
            if running >= self.steady_requests:
                break
            time.sleep(0.2)
        return running

    def ended(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive() and self.finished == self.size


def _plain_request(base: str, model: str | None) -> bool:
    if model is None:
        model = json.loads(urllib.request.urlopen(base + "/v1/models", timeout=30).read())["data"][0]["id"]
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 4, "temperature": 0}).encode()
    request = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status == 200 and len(json.loads(response.read())["choices"]) == 1


def table(report: dict) -> str:
    rows = [("requests sent", report["requests"]), ("completed", report["completed"]),
            ("hogwild groups completed", report["groups_completed"]), ("disconnects mid-stream", report["disconnects"]),
            ("malformed requests (400s)", f"{report['malformed']} ({report['malformed_400']})"),
            ("5xx", report["server_errors"]), ("completed unequal to their offline run", report["mismatches"]),
            ("of which plain / hogwild (unequal of completed)", " / ".join(
                f"{bad} of {n}" for bad, n in report.get("mismatches_by_kind", {}).values())),
            ("KV cache usage after", report["kv_cache_usage_after"]), ("requests left", report["requests_left"]),
            ("server RSS after warm-up / at the end (MiB)",
             f"{report['rss_after_warmup_mib']:.0f} / {report['rss_end_mib']:.0f}"),
            ("server RSS slope over the second half (MiB per hour; samples in OUT.json)",
             "n/a" if report.get("rss_second_half_mib_per_hour") is None
             else f"{report['rss_second_half_mib_per_hour']:+.0f}"),
            ("plugin state after (every engine: scheduler, planner, protocol)",
             "empty" if report["plugin_state_empty"] else json.dumps(report["plugin_state_after"])),
            ("SIGTERM with requests in flight: running, exit (s), clean",
             f"{report['sigterm_requests_in_flight']}, {report['sigterm_exit_seconds']:.1f}, {report['sigterm_clean']}"),
            ("streaming clients cut by SIGTERM whose stream ended (none hangs)",
             f"{report['sigterm_burst_clients'] if report['sigterm_burst_ended'] else 'not all'} "
             f"of {report['sigterm_burst_clients']}"),
            ("served after restart", report["served_after_restart"])]
    return (f"{report['seconds'] / 60:.1f} minutes, {report['config']['clients']} clients\n\n| | |\n| --- | --- |\n"
            + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n")


def main(argv: list[str] | None = None) -> dict:
    return driver.report(parse_args(argv), run, table)


if __name__ == "__main__":
    main()
