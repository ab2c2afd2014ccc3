"""Data parallel over several nodes: an engine of another node that stops answering.

Patches ``DPLBAsyncMPClient.get_core_engine_for_request``.

vLLM watches the engine processes it started (one that dies ends the server), but not the
engines of other nodes (``--headless``): when such a node dies, every request it held waits
forever, plain or hogwild, and the balancer goes on sending it new ones (measured with the
plugin off: ``benchmarks/cluster/several_machines.py``). So while a remote engine holds requests of
this API server, the hook asks it for a cheap utility answer every ``PERIOD`` seconds; an
engine that has not answered within ``VLLM_HOGWILD_ENGINE_TIMEOUT_SECONDS`` (default 60: a
step is slow on a CPU, never that slow) is taken as gone. Its requests end with finish
reason ``error`` (a stream's last chunk says so; a whole response is an HTTP 500), the log
names the engine, and new requests go to the engines that answer. A request that names the
gone engine's rank itself (``data_parallel_rank``) is failed the same way at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from vllm_hogwild import envs
from vllm_hogwild.hooks import state
from vllm_hogwild.hooks.patching import wrap

log = logging.getLogger(__name__)

PERIOD = 2.0


def timeout_seconds() -> float:
    return envs.get(envs.ENGINE_TIMEOUT_SECONDS)


def remote_ranks(parallel_config) -> set[int]:
    """The data-parallel ranks whose engines this node did not start (and vLLM does not watch);
    none where each API server talks only to its own node's engines (hybrid or external
    load balancing)."""
    if getattr(parallel_config, "data_parallel_hybrid_lb", False) or getattr(
            parallel_config, "data_parallel_external_lb", False):
        return set()
    first = parallel_config.data_parallel_rank if parallel_config.data_parallel_rank_local is not None else 0
    local = range(first, first + parallel_config.data_parallel_size_local)
    return {r for r in range(parallel_config.data_parallel_size) if r not in local}


def install() -> None:
    from vllm.v1.engine.core_client import DPLBAsyncMPClient

    def get_core_engine_for_request(original):
        def wrapper(self, request):
            watch = _watch_of(self)
            engine = original(self, request)
            if engine in watch.gone:
                if request.data_parallel_rank is None and len(watch.gone) < len(self.core_engines):
                    engine = _reroute(self, request, engine, watch)
                else:
                    watch.fail_soon(self, [request.request_id], engine)
            return engine

        return wrapper

    wrap(DPLBAsyncMPClient, "get_core_engine_for_request", get_core_engine_for_request)


class _Watch:
    """The liveness of one client's remote engines: the asyncio task that asks them."""

    def __init__(self, client) -> None:
        self.gone: set = set()
        self.remote = [client.core_engines[r] for r in sorted(remote_ranks(client.vllm_config.parallel_config))
                       if r < len(client.core_engines)]
        try:
            loop = asyncio.get_running_loop()  # the API server's: requests are placed inside it
        except RuntimeError:
            loop = None
        self.task = loop.create_task(self.run(client)) if self.remote and loop is not None else None

    async def run(self, client) -> None:
        timeout = timeout_seconds()
        asked: dict = {}  # engine -> (the pending answer, when it was asked)
        while True:
            await asyncio.sleep(PERIOD)
            now = time.monotonic()
            for engine in self.remote:
                if engine in self.gone:
                    continue
                pending = asked.get(engine)
                if pending is not None and pending[0].done():
                    asked.pop(engine)
                    pending = None
                if pending is None:
                    if client.engine_inflight[engine] > 0:  # an idle engine is not asked
                        asked[engine] = (asyncio.ensure_future(
                            client._call_utility_async("is_sleeping", engine=engine)), now)
                elif now - pending[1] > timeout:
                    pending[0].cancel()
                    self.declare_gone(client, engine, now - pending[1])

    def declare_gone(self, client, engine, waited: float) -> None:
        self.gone.add(engine)
        rank = client.core_engines.index(engine)
        held = [rid for rid, e in client.reqs_in_flight.items() if e == engine]
        log.error("hogwild: data-parallel engine %d (another node's) has not answered for %.0f s: taken as gone; "
                  "its %d requests end with an error%s", rank, waited, len(held),
                  "" if len(self.gone) == len(client.core_engines) else "; new requests go to the other engines")
        self.fail_soon(client, held, engine)

    def fail_soon(self, client, request_ids: list[str], engine) -> None:
        """End ``request_ids`` (held by the gone ``engine``) with finish reason ``error``, as if
        the engine had said so: through the client's output queue, which the server reads."""
        from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason

        for rid in request_ids:
            if client.reqs_in_flight.pop(rid, None) is not None:
                client.engine_inflight[engine] -= 1
        if request_ids:
            client.outputs_queue.put_nowait(EngineCoreOutputs(
                engine_index=client.core_engines.index(engine), finished_requests=set(request_ids),
                outputs=[EngineCoreOutput(request_id=rid, new_token_ids=[], finish_reason=FinishReason.ERROR)
                         for rid in request_ids]))


def _watch_of(client) -> _Watch:
    record = state.of(client, state.ClientState)
    if record.liveness is None:
        record.liveness = _Watch(client)
    return record.liveness


def _reroute(client, request, gone_engine, watch: _Watch):
    """The least loaded engine that answers, in place of the gone one vLLM chose."""
    client.engine_inflight[gone_engine] -= 1
    engine = min((e for e in client.core_engines if e not in watch.gone), key=lambda e: client.engine_inflight[e])
    client.reqs_in_flight[request.request_id] = engine
    client.engine_inflight[engine] += 1
    return engine
