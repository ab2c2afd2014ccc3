"""Several machines, simulated on this one: multi-node data parallel on loopback and its faults,
Ray, external load balancing; each with the plugin on and off.

    python -m benchmarks.cluster.several_machines [--model PATH] [--plugin on off] [--parts nodes ray external-lb]
                                          [--out benchmarks/results/several_machines]

``nodes``: two "nodes" on 127.0.0.1, each a ``vllm-hogwild serve`` process with one
data-parallel engine bound to a core of its own, started as vLLM's multi-node docs say:

    node 0 (head):  serve MODEL --data-parallel-size 2 --data-parallel-size-local 1
                          --data-parallel-address 127.0.0.1 --data-parallel-rpc-port P
    node 1:         serve MODEL --headless --data-parallel-size 2 --data-parallel-size-local 1
                          --data-parallel-start-rank 1 --data-parallel-address 127.0.0.1
                          --data-parallel-rpc-port P

1. **Traffic** (plugin on): hogwild groups (W 2..4, every layout, the protocol) and plain
   requests at once. Every answer must equal the one-engine offline run of the same request
   (computed after the servers are gone, in a process of its own); each group sent alone
   grows one engine's finished count by W (vLLM's per-engine metrics); both engines serve
   groups; ``GET /hogwild/state`` lists both engines, the remote one included.
2. **SIGTERM of the head** (no request in flight): how long each node takes to exit.
3. **A headless node killed mid-traffic** (SIGKILL of node 1's process group once every
   stream has a token; on the embedded SmolLM2, whose streams last long enough): how each
   stream ended and when (none may hang), whether the head goes on serving plain requests
   and groups, and what its log says about the engine. With the plugin off, W plain requests
   take each group's place: what vLLM itself does, to compare with.

``ray``: a local Ray cluster (``ray start --head``) and ``--tensor-parallel-size 2
--distributed-executor-backend ray``. ``external-lb``: two servers behind a round-robin
client, independent ones (``MODEL``) and per-rank ones (``--data-parallel-rank``, the tiny
gpt-oss: vLLM allows that mode for mixture-of-experts models only).

Each engine or rank gets a core of its own (``VLLM_CPU_OMP_THREADS_BIND``). The tiny local
Llama unless ``--model``. Writes ``OUT.json`` and ``OUT.md``; the nodes' logs go to
``--logs``. About 15 minutes with every part on this project's 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import driver, paths  # noqa: E402
from tests.helpers.servers import TEST_OPTIONS, free_port  # noqa: E402

SYSTEM = "Alice and Bob solve problems together. Each worker writes a step, then checks the others. "
TEXTS = ("Each worker writes a step.", "Alice and Bob solve problems together.", "Let x be the unknown.",
         "We plan the work, split it, and tell each other what we found.")
LAYOUTS = ("combined", "interleaved", "contiguous")
# Groups: W 2..4 over every layout, and protocol groups (worker 1 stops when worker 0 answers).
MAX_TOKENS = 12
PROTOCOL_TOKENS = 64  # the protocol's closing sentence and answer need 51 here
GROUPS = [({"hogwild_workers": 2 + i % 3, "hogwild_layout": LAYOUTS[i % 3]}, SYSTEM + TEXTS[i % 4], MAX_TOKENS)
          for i in range(9)]
GROUPS += [({"hogwild_workers": w, "hogwild_protocol": True, "hogwild_answer_tokens": 4}, SYSTEM + TEXTS[w],
            PROTOCOL_TOKENS) for w in (2, 3)]
PLAIN = [SYSTEM + t for t in TEXTS[:3]]
FAULT_CONTEXT = 1024  # TEST_OPTIONS' max_model_len


class Node:
    """One ``vllm-hogwild serve`` process tree, its output in ``log``."""

    def __init__(self, name: str, model: str, options: list[str], core: int | str, folder: Path,
                 plugin: bool) -> None:
        self.name, self.log = name, folder / f"{name}.log"
        command = [sys.executable, "-m", "vllm_hogwild.cli", "serve", model, *TEST_OPTIONS, *options]
        env = {**{k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"},
               "VLLM_CPU_OMP_THREADS_BIND": str(core)}
        if plugin:
            command += ["--plugin", "hogwild"]
        else:  # vLLM alone: no plugin loaded (the launcher is vLLM's serve subcommand)
            command = [sys.executable, "-m", "vllm_hogwild.launcher", "--model", model, *TEST_OPTIONS, *options]
            env["VLLM_PLUGINS"] = ""
        self.out = open(self.log, "w")
        self.proc = subprocess.Popen(command, stdout=self.out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait_gone(self, timeout: float) -> float | None:
        """Seconds until the whole process group is gone, or None past ``timeout``."""
        start = time.time()
        while time.time() - start < timeout:
            self.proc.poll()
            if not self.alive():
                return round(time.time() - start, 1)
            time.sleep(0.5)
        return None

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        if self.wait_gone(30) is None:
            self.signal(signal.SIGKILL)
            self.wait_gone(10)
        self.out.close()


def start_nodes(model: str, folder: Path, plugin: bool, *options: str) -> tuple[Node, Node, str]:
    """Node 1 (headless) and the head, both up, with ``options`` besides; the head's base URL."""
    port, rpc = free_port(), free_port()
    dp = ["--data-parallel-size", "2", "--data-parallel-size-local", "1", "--data-parallel-address", "127.0.0.1",
          "--data-parallel-rpc-port", str(rpc), *options]
    node1 = Node("node1", model, ["--headless", *dp, "--data-parallel-start-rank", "1"], 1, folder, plugin)
    head = Node("head", model, ["--host", "127.0.0.1", "--port", str(port), *dp], 0, folder, plugin)
    base, deadline = f"http://127.0.0.1:{port}", time.time() + 300
    while True:
        for node in (head, node1):
            if node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited {node.proc.returncode}: {node.log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            return head, node1, base
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)


def post(base: str, model: str, body: dict, timeout: float = 300) -> dict:
    body = {"model": model, "temperature": 0, "max_tokens": MAX_TOKENS, **body}
    request = urllib.request.Request(base + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"HTTP {e.code} for {body}: {e.read().decode()[:500]}") from None


def per_engine_finished(base: str) -> dict[str, int]:
    """Requests each data-parallel engine finished (vLLM's Prometheus metrics; a group's
    workers count one each)."""
    counts: Counter = Counter()
    for line in urllib.request.urlopen(base + "/metrics", timeout=10).read().decode().splitlines():
        if line.startswith("vllm:request_success_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('engine="', 1)[1].split('"', 1)[0]] += int(float(value))
    return dict(counts)


def traffic(base: str, model: str) -> dict:
    """Part 1: groups and plain requests at once, each group alone afterwards per engine count."""
    with ThreadPoolExecutor(len(GROUPS) + len(PLAIN)) as pool:
        groups = [pool.submit(post, base, model, {"prompt": p, "vllm_xargs": x, "max_tokens": m}) for x, p, m in GROUPS]
        plain = [pool.submit(post, base, model, {"prompt": p}) for p in PLAIN]
        served = {"groups": [[c["text"] for c in f.result()["choices"]] for f in groups],
                  "plain": [f.result()["choices"][0]["text"] for f in plain]}
    finished = per_engine_finished(base)
    # Each group alone, then the engine counts again: the engine whose count grew by W took
    # every worker of it (a group split across engines would grow both).
    placement = []
    for flags, prompt, max_tokens in GROUPS:
        before = per_engine_finished(base)
        post(base, model, {"prompt": prompt, "vllm_xargs": flags, "max_tokens": max_tokens})
        after = per_engine_finished(base)
        placement.append({k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)})
    state = json.loads(urllib.request.urlopen(base + "/hogwild/state", timeout=30).read())
    return {"served": served, "finished_per_engine": finished, "placement": placement,
            "state_engines": len(state["engines"]), "state": state}


def sigterm_head(head: Node, node1: Node) -> dict:
    """Part 2: SIGTERM to the head's process group; how long each node takes to exit."""
    head.signal(signal.SIGTERM)
    return {"head_exit_s": head.wait_gone(60), "node1_exit_s_after_head": node1.wait_gone(60)}


def _stream(base: str, model: str, body: dict, events: list, timeout: float) -> dict:
    """One streaming request: how it ended (``done``, ``error chunk``, ``http NNN``,
    ``connection closed``, ``hung``) and after how many seconds."""
    body = {"model": model, "temperature": 0, "stream": True, **body}
    request = urllib.request.Request(base + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start, chunks, error = time.time(), 0, None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            for raw in response:
                line = raw.decode().strip()
                if line == "data: [DONE]":
                    return {"end": "error chunk" if error else "done", "chunks": chunks, "error": error,
                            "seconds": round(time.time() - start, 1)}
                if line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        error = str(chunk["error"])[:200]
                    else:
                        chunks += 1
                        if chunks == 1:
                            events.append(time.time())
        end = "connection closed"
    except urllib.error.HTTPError as e:
        end, error = f"http {e.code}", e.read().decode()[:200]
    except TimeoutError:
        end = "hung"
    except OSError as e:
        end, error = "connection closed", str(e)[:200]
    return {"end": end, "chunks": chunks, "error": error, "seconds": round(time.time() - start, 1)}


def kill_node1_mid_traffic(base: str, model: str, head: Node, node1: Node, plugin: bool) -> dict:
    """Parts 3 and 4: a burst of streams; once every one has a token, SIGKILL to node 1.
    With the plugin off, each group's place is taken by W plain requests of its prompt."""
    long = FAULT_CONTEXT - 124  # a plain request's tokens; a group's W workers share the context with the prompt
    if plugin:
        bodies = [{"prompt": p, "max_tokens": long // x["hogwild_workers"], "vllm_xargs": x}
                  for x, p, _ in GROUPS[:6]]
    else:
        bodies = [{"prompt": p, "max_tokens": long} for x, p, _ in GROUPS[:6] for _ in range(x["hogwild_workers"])]
    bodies += [{"prompt": p, "max_tokens": long} for p in PLAIN]
    events: list = []
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(_stream, base, model, b, events, 120) for b in bodies]
        deadline = time.time() + 60
        while len(events) < len(bodies) and time.time() < deadline:
            time.sleep(0.02)
        started = len(events)
        node1.signal(signal.SIGKILL)
        killed_at = time.time()
        running = [not f.done() for f in futures]
        ends = [f.result() for f in futures]
        ended_at = time.time()
    after = {"head_alive": head.alive(), "head_health": None, "plain_request_after": None}
    try:
        urllib.request.urlopen(base + "/health", timeout=5)
        after["head_health"] = 200
    except urllib.error.HTTPError as e:
        after["head_health"] = e.code
    except OSError as e:
        after["head_health"] = f"unreachable ({type(e).__name__})"
    # Requests after the kill, each kind twice (vLLM's balancer alternates over idle engines).
    tries = {"plain_request_after": {"prompt": PLAIN[0]}}
    if plugin:
        tries["group_request_after"] = {"prompt": GROUPS[0][1], "vllm_xargs": GROUPS[0][0]}
    for name, body in tries.items():
        outcomes = []
        for _ in range(2):
            try:
                post(base, model, body, timeout=90)
                outcomes.append("served")
            except Exception as e:  # noqa: BLE001 - what the server did is the measurement
                outcomes.append(f"failed: {type(e).__name__}: {str(e)[:100]}")
        after[name] = ", ".join(outcomes)
    time.sleep(2)
    log = head.log.read_text(errors="replace")
    named = [l.split("] ", 1)[-1].strip()[:300] for l in log.splitlines()
             if re.search(r"(?i)(engine[ _]?(core)?[ _]?(dp)?1\b|DP1|engine 1|rank 1|died|dead)", l)
             and re.search(r"(?i)(error|dead|died|fail|lost|timeout|unhealthy)", l)]
    return {"streams": len(bodies), "streams_started_before_kill": started,
            "ends": dict(Counter(e["end"] for e in ends)),
            "ends_of_those_running_at_the_kill": dict(Counter(e["end"] for e, r in zip(ends, running) if r)),
            "last_end_after_kill_s": round(ended_at - killed_at, 1),
            "requests": [{**b.get("vllm_xargs", {}), "running_at_kill": r, **e}
                         for b, e, r in zip(bodies, ends, running)],
            "after": after, "head_log_naming_the_engine": named[:8]}


def first_error(logs: list[Path]) -> str:
    """The root cause in the logs: the first exception line (the last ones are summaries),
    with the frame that raised it."""
    for log in logs:
        lines = [l.split("] ", 1)[-1].strip() for l in log.read_text(errors="replace").splitlines()]
        for i, line in enumerate(lines):
            if re.match(r"^[\w.]+(Error|Exception)\b", line):
                frame = next((l for l in reversed(lines[max(i - 8, 0):i]) if l.startswith("File ")), "")
                return f"{line[:300]} ({frame[:200]})" if frame else line[:300]
    return "no error line"


def wait_up(nodes: list[Node], base: str, timeout: float = 300) -> str | None:
    """None once ``base`` answers /health, or why not: a node's exit and its last error."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for node in nodes:
            if node.proc.poll() is not None:
                return f"{node.name} exited {node.proc.returncode}: {first_error([node.log])}"
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            return None
        except OSError:
            time.sleep(1)
    return f"not up within {timeout:.0f} s"


def ray_tensor_parallel(model: str, folder: Path, plugin: bool) -> dict:
    """Part 5: ``--tensor-parallel-size 2 --distributed-executor-backend ray`` on a local Ray
    cluster (``ray start --head``); if it serves, a group's answer against the one-engine run."""
    import shutil

    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if ray is None:
        return {"started": False, "why": "Ray is not installed (pip install 'vllm-hogwild[ray]')"}
    subprocess.run([ray, "start", "--head", "--num-cpus", "2", "--disable-usage-stats"], capture_output=True,
                   check=True, timeout=120)
    try:
        port = free_port()
        node = Node("ray_tp2", model, ["--host", "127.0.0.1", "--port", str(port), "--tensor-parallel-size", "2",
                                       "--distributed-executor-backend", "ray"], "0|1", folder, plugin)
        base = f"http://127.0.0.1:{port}"
        try:
            why = wait_up([node], base)
            result: dict = {"started": why is None, "why": why}
            if why is None:
                x, p, m = GROUPS[0]
                body = post(base, model, {"prompt": p, "max_tokens": m, **({"vllm_xargs": x} if plugin else {})})
                result["served"] = [c["text"] for c in body["choices"]]
        finally:
            node.stop()
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
    return result


def external_lb(model: str, folder: Path, moe_model: str | None, plugin: bool) -> dict:
    """Part 6, external load balancing: a client-side balancer (round robin) over two servers.
    vLLM accepts ``--data-parallel-rank`` (one API server per rank of one data-parallel
    deployment) only for mixture-of-experts models; for the others its message says to run
    independent instances. Both are run: ``independent`` (``model``: two plain servers) and,
    with ``moe_model``, ``ranks`` (``--data-parallel-size 2 --data-parallel-rank R``). Groups
    (W 2..4) go to the servers in turn: each whole, and equal to the one-engine run. With the
    plugin off, plain requests of the same prompts take their places (what vLLM does alone)."""
    result: dict = {}
    modes = [("independent", model, lambda r, rpc: [])]
    if moe_model:
        modes.append(("ranks", moe_model, lambda r, rpc: [
            "--data-parallel-size", "2", "--data-parallel-rank", str(r), "--data-parallel-address", "127.0.0.1",
            "--data-parallel-rpc-port", str(rpc)]))
    for mode, served_model, dp in modes:
        rpc, ports = free_port(), [free_port(), free_port()]
        nodes = [Node(f"{mode}{r}", served_model, ["--host", "127.0.0.1", "--port", str(ports[r]), *dp(r, rpc)], r,
                      folder, plugin) for r in (0, 1)]
        try:
            bases = [f"http://127.0.0.1:{p}" for p in ports]
            why = next((w for w in (wait_up(nodes, b) for b in bases) if w), None)
            r: dict = {"model": served_model, "started": why is None, "why": why}
            if why is None:
                r["served"] = []
                try:
                    for i, (x, p, m) in enumerate(GROUPS[:4]):
                        body = post(bases[i % 2], served_model,
                                    {"prompt": p, "max_tokens": m, **({"vllm_xargs": x} if plugin else {})})
                        r["served"].append([c["text"] for c in body["choices"]])
                    r["finished_per_server"] = [sum(per_engine_finished(b).values()) for b in bases]
                except RuntimeError as e:  # the server's answer is the measurement
                    r["failed"] = f"{str(e)[:200]}; the root cause in the logs: {first_error([n.log for n in nodes])}"
            result[mode] = r
        finally:
            for node in nodes:
                node.stop()
    return result


def offline_answers(model: str, groups: int | None = None) -> dict:
    """The one-engine offline run of part 1's requests, or of its first ``groups`` groups only,
    after the servers are gone; in a process of its own (one offline engine per process)."""
    out = subprocess.run([sys.executable, "-m", __spec__.name, "--offline", model, str(groups or 0)],
                         capture_output=True, text=True, check=True, cwd=paths.ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _offline(model: str, groups: int) -> None:
    from vllm import LLM, SamplingParams

    from vllm_hogwild.cli import _mixes_windows

    options = dict(zip(TEST_OPTIONS[::2], TEST_OPTIONS[1::2]))
    llm = LLM(model=model, dtype=options["--dtype"], max_model_len=int(options["--max-model-len"]),
              block_size=int(options["--block-size"]), kv_cache_memory_bytes=int(options["--kv-cache-memory-bytes"]),
              enforce_eager=True, seed=0, disable_hybrid_kv_cache_manager=_mixes_windows(model))
    answer = {"groups": [[o.text for o in llm.generate([p], SamplingParams(temperature=0, max_tokens=m, extra_args=x),
                                                       use_tqdm=False)[0].outputs] for x, p, m in GROUPS[:groups or None]]}
    if not groups:
        answer["plain"] = [llm.generate([p], SamplingParams(temperature=0, max_tokens=MAX_TOKENS),
                                        use_tqdm=False)[0].outputs[0].text for p in PLAIN]
    print(json.dumps(answer))


def run(args: argparse.Namespace) -> dict:
    from tests.helpers.tiny_models import make_model

    model = driver.model_path(args.model) if args.model else make_model("llama", os.environ.get(
        "HOGWILD_TEST_MODELS", os.path.join("/tmp", "hogwild-tiny-models")))
    folder = Path(args.logs)
    result: dict = {"benchmark": "several_machines", "command": "python -m benchmarks.cluster.several_machines " +
                    " ".join(sys.argv[1:]), "model": model, "machine": driver.machine(), "nodes": {}, "ray": {},
                    "external_lb": {}}
    for setting in args.plugin:
        plugin = setting == "on"
        sub = folder / setting
        for part in ("traffic", "fault", "ray", "external_lb"):
            (sub / part).mkdir(parents=True, exist_ok=True)
        if "nodes" in args.parts:
            r: dict = {}
            if plugin:
                head, node1, base = start_nodes(model, sub / "traffic", plugin)
                try:
                    r["traffic"] = traffic(base, model)
                    r["sigterm"] = sigterm_head(head, node1)
                finally:
                    head.stop(), node1.stop()
            # The embedded SmolLM2: its streams run long enough to be running when node 1 goes
            # (the tiny model decodes a whole context in about a second).
            fault_model = driver.model_path(None)
            head, node1, base = start_nodes(fault_model, sub / "fault", plugin)
            try:
                r["fault"] = kill_node1_mid_traffic(base, fault_model, head, node1, plugin)
                if not plugin:
                    r["sigterm"] = sigterm_head(head, node1)
            finally:
                head.stop(), node1.stop()
            result["nodes"][setting] = r
        if "ray" in args.parts:
            result["ray"][setting] = ray_tensor_parallel(model, sub / "ray", plugin)
        if "external-lb" in args.parts:
            moe = None if args.model else make_model("gpt-oss", os.environ.get(
                "HOGWILD_TEST_MODELS", os.path.join("/tmp", "hogwild-tiny-models")))
            result["external_lb"][setting] = external_lb(model, sub / "external_lb", moe, plugin)
    if "on" in args.plugin:  # the one-engine offline run of what the servers answered
        offline = offline_answers(model)
        served = result["nodes"].get("on", {}).get("traffic", {}).get("served")
        if served:
            result["nodes"]["equal_to_one_engine"] = {
                "groups": [s == o for s, o in zip(served["groups"], offline["groups"])],
                "plain": [s == o for s, o in zip(served["plain"], offline["plain"])]}
        if result["ray"].get("on", {}).get("served"):
            result["ray"]["on"]["equal_to_one_engine"] = result["ray"]["on"]["served"] == offline["groups"][0]
        for mode, r in result["external_lb"].get("on", {}).items():
            if r.get("served") and not r.get("failed"):
                want = offline if r["model"] == model else offline_answers(r["model"], len(r["served"]))
                r["equal_to_one_engine"] = [s == o for s, o in zip(r["served"], want["groups"])]
    return result


def table(result: dict) -> str:
    lines = [f"vLLM {result['machine']['vllm']}, model `{os.path.basename(result['model'])}`, every engine or "
             "rank on a core of its own.", ""]
    nodes = result["nodes"]
    if "on" in nodes:
        t, eq = nodes["on"]["traffic"], nodes["equal_to_one_engine"]
        whole = all(len(p) == 1 and list(p.values())[0] == x["hogwild_workers"]
                    for p, (x, _, _) in zip(t["placement"], GROUPS))
        lines += ["Two nodes on loopback (a head and a `--headless` node, one data-parallel engine each):", "",
                  "| check (plugin on) | result |", "| --- | --- |",
                  f"| groups (W 2..4, every layout, the protocol) equal to the one-engine offline run | "
                  f"{sum(eq['groups'])} / {len(eq['groups'])} |",
                  f"| plain requests equal to it | {sum(eq['plain'])} / {len(eq['plain'])} |",
                  f"| finished per engine (groups' workers and plain requests) | {t['finished_per_engine']} |",
                  f"| each group alone: engines whose count grew, by how much | {t['placement']} |",
                  f"| every group's workers on one engine | {'yes' if whole else 'NO'} |",
                  f"| engines in /hogwild/state | {t['state_engines']} |", ""]
    if any(k in nodes for k in ("on", "off")):
        lines += ["SIGTERM to the head (tiny Llama), and node 1 killed mid-traffic (embedded SmolLM2, its streams "
                  "long enough to be running at the kill; the client gives up on a stream after 120 s and on a "
                  "request after 90 s):", "",
                  "| plugin | SIGTERM head: head exits (s) | node 1 exits after (s) | node 1 killed mid-traffic: "
                  "streams running at the kill ended how | last end after the kill (s) | head after | "
                  "head log naming the engine |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for setting in ("on", "off"):
            if setting not in nodes:
                continue
            s, f = nodes[setting]["sigterm"], nodes[setting]["fault"]
            lines.append(f"| {setting} | {s['head_exit_s']} | {s['node1_exit_s_after_head'] or 'not within 60'} | "
                         f"{f['ends_of_those_running_at_the_kill']} (all {f['streams']}: {f['ends']}) | "
                         f"{f['last_end_after_kill_s']} | health {f['after']['head_health']}; two plain requests: "
                         f"{f['after']['plain_request_after']}; two groups: "
                         f"{f['after'].get('group_request_after', '-')} | "
                         f"{'; '.join(f['head_log_naming_the_engine'][:2]) or 'none'} |")
        lines.append("")
    for setting, r in result["ray"].items():
        lines.append(f"- Ray, `--tensor-parallel-size 2 --distributed-executor-backend ray`, plugin {setting}: "
                     + (f"served; equal to one engine: {r.get('equal_to_one_engine')}" if r["started"]
                        else f"did not start: `{r['why']}`"))
    for setting, modes in result["external_lb"].items():
        for mode, lb in modes.items():
            what = {"independent": "two independent servers", "ranks": "one server per data-parallel rank "
                    "(`--data-parallel-rank`, a mixture-of-experts model)"}[mode]
            sent = "groups" if setting == "on" else "plain requests"
            if not lb["started"]:
                outcome = f"did not start: `{lb['why']}`"
            elif lb.get("failed"):
                outcome = f"started; a request failed: `{lb['failed']}`"
            else:
                outcome = (f"{sent} sent to the servers in turn: equal to one engine "
                           f"{lb.get('equal_to_one_engine', 'not compared')}; requests finished per server "
                           f"{lb['finished_per_server']}")
            lines.append(f"- External load balancing, {what}, `{os.path.basename(lb['model'])}`, plugin {setting}: "
                         + outcome)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--offline"]:
        _offline(argv[1], int(argv[2]))
        return None
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder (default: the tests' tiny Llama, built locally)")
    parser.add_argument("--plugin", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--parts", nargs="+", choices=["nodes", "ray", "external-lb"],
                        default=["nodes", "ray", "external-lb"])
    parser.add_argument("--logs", default="/tmp/hogwild-several-machines", help="the nodes' logs go here")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    return driver.report(parser.parse_args(argv), run, table)


if __name__ == "__main__":
    main()
