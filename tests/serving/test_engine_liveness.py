"""A remote data-parallel engine that stops answering (another node gone): its requests end with
an error instead of waiting forever, and new requests go to the engines that answer.

Driven on vLLM's own load-balancing client class with its engine links replaced: engine 0 is
this node's, engine 1 another node's that answers utility calls until it is "killed". The
whole path with real nodes is ``benchmarks/cluster/several_machines.py`` (a headless node killed
mid-traffic)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

import pytest
from vllm_hogwild import envs
from vllm_hogwild.hooks import state


def _client(monkeypatch, alive: dict):
    from vllm.plugins import load_general_plugins
    from vllm.v1.engine.core_client import DPLBAsyncMPClient

    from vllm_hogwild.hooks import engine_liveness

    load_general_plugins()  # the plugin's hooks, as in every vLLM process

    monkeypatch.setattr(engine_liveness, "PERIOD", 0.05)
    monkeypatch.setenv(envs.ENGINE_TIMEOUT_SECONDS.name, "0.3")
    client = DPLBAsyncMPClient.__new__(DPLBAsyncMPClient)  # no engines started: only the balancing state
    client.core_engines = [b"\x00\x00", b"\x01\x00"]
    client.reqs_in_flight, client.engine_inflight, client.streaming_reqs = {}, Counter(), set()
    client.lb_engines = [[0, 0, 0.0], [0, 0, 0.0]]
    client.eng_start_index, client.client_count = 0, 1
    client.outputs_queue = asyncio.Queue()
    client.vllm_config = SimpleNamespace(parallel_config=SimpleNamespace(
        data_parallel_size=2, data_parallel_size_local=1, data_parallel_rank=0, data_parallel_rank_local=None,
        data_parallel_hybrid_lb=False, data_parallel_external_lb=False))

    async def call(method, *args, engine):
        while not alive[engine]:
            await asyncio.sleep(3600)  # a dead node never answers
        return False

    client._call_utility_async = call
    return client


def _request(rid: str, rank: int | None = None):
    return SimpleNamespace(request_id=rid, data_parallel_rank=rank, pooling_params=None, sampling_params=None,
                           resumable=False)


def test_a_silent_remote_engine_fails_its_requests_and_gets_no_new_ones(monkeypatch):
    from vllm.v1.engine import FinishReason

    from vllm_hogwild.hooks import engine_liveness

    assert engine_liveness.remote_ranks(SimpleNamespace(
        data_parallel_size=4, data_parallel_size_local=2, data_parallel_rank=0, data_parallel_rank_local=None,
        data_parallel_hybrid_lb=False, data_parallel_external_lb=False)) == {2, 3}

    async def scenario():
        alive = {b"\x00\x00": True, b"\x01\x00": True}
        client = _client(monkeypatch, alive)
        placed = {rid: client.get_core_engine_for_request(_request(rid)) for rid in ("a", "b", "c", "d")}
        assert set(placed.values()) == set(client.core_engines)  # balanced over both
        await asyncio.sleep(0.5)  # engine 1 answers: nothing happens past the timeout
        assert client.outputs_queue.empty()
        alive[b"\x01\x00"] = False
        await asyncio.sleep(0.8)
        out = client.outputs_queue.get_nowait()
        held = {rid for rid, e in placed.items() if e == b"\x01\x00"}
        assert out.engine_index == 1 and out.finished_requests == held
        assert {o.request_id for o in out.outputs} == held
        assert all(o.finish_reason == FinishReason.ERROR for o in out.outputs)
        assert set(client.reqs_in_flight) == set(placed) - held and client.engine_inflight[b"\x01\x00"] == 0
        # New requests: all to engine 0; one that names rank 1 ends at once with an error.
        assert {client.get_core_engine_for_request(_request(f"new{i}")) for i in range(4)} == {b"\x00\x00"}
        client.get_core_engine_for_request(_request("pinned", rank=1))
        assert [o.request_id for o in client.outputs_queue.get_nowait().outputs] == ["pinned"]
        state.of(client, state.ClientState).liveness.task.cancel()

    asyncio.run(scenario())


def test_an_engine_of_this_node_is_never_asked(monkeypatch):
    """vLLM watches the engines it started itself (and a long step there is no death)."""

    async def scenario():
        alive = {b"\x00\x00": False, b"\x01\x00": True}
        client = _client(monkeypatch, alive)
        for rid in "abcd":
            client.get_core_engine_for_request(_request(rid))
        await asyncio.sleep(0.8)
        assert client.outputs_queue.empty() and len(client.reqs_in_flight) == 4
        state.of(client, state.ClientState).liveness.task.cancel()

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", ["data_parallel_hybrid_lb", "data_parallel_external_lb"])
def test_no_remote_engines_where_each_server_talks_to_its_own(mode):
    from vllm_hogwild.hooks import engine_liveness

    config = dict(data_parallel_size=2, data_parallel_size_local=1, data_parallel_rank=0, data_parallel_rank_local=0,
                  data_parallel_hybrid_lb=False, data_parallel_external_lb=False)
    assert engine_liveness.remote_ranks(SimpleNamespace(**{**config, mode: True})) == set()
