"""A real ``vllm-hogwild serve`` on 127.0.0.1, started as users start it (vLLM's default
multiprocess mode), for the tests that talk HTTP to it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from tests.helpers.tiny_models import CHATML  # noqa: F401  (the tiny models' own template, also given as --chat-template)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The tests' engine settings (float32, as the offline engines the tests compare with; a small
# cache and context; eager); ``as_typed`` starts without them.
TEST_OPTIONS = ("--dtype", "float32", "--max-model-len", "1024", "--block-size", "32",
                "--kv-cache-memory-bytes", str(64 * 2**20), "--enforce-eager", "--seed", "0")


@contextlib.contextmanager
def running_server(model: str | None, folder: Path, *options: str, env: dict[str, str] | None = None,
                   start_timeout: float = 240, as_typed: bool = False) -> Iterator[str]:
    """Serve ``model`` (None: the embedded default) with the plugin until the block ends;
    yields the base URL. The server's output goes to ``folder/server.log`` (quoted in the
    error if it dies); ``env`` adds to the environment; ``as_typed``: no option but the
    address and ``options``, as a user types ``vllm-hogwild serve``."""
    port = free_port()
    log_path = folder / "server.log"
    command = [sys.executable, "-m", "vllm_hogwild.cli", "serve", *([model] if model else []),
               "--host", "127.0.0.1", "--port", str(port), *(() if as_typed else ("--plugin", "hogwild", *TEST_OPTIONS)),
               *options]
    env = {**{k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}, **(env or {})}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + start_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited {proc.returncode}: {log_path.read_text()[-3000:]}")
                try:
                    urllib.request.urlopen(base + "/health", timeout=2)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(1)
            yield base
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
