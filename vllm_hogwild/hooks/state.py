"""The plugin's state on vLLM's objects: one record per host object, under one attribute.

Some of what the plugin keeps must live as long as a vLLM object does (a scheduler, a model
runner, an attention layer) and be found from that object in a patched method. Each such host
carries one record, ``_hogwild_state``, of the type this module gives its class; nothing else of the
plugin's rides on vLLM's objects. Records are made on first use and found through the host's
``__dict__``, so a vLLM class's own attributes (or ``__getattr__``) are never consulted.

| host (vLLM class)                                   | record              | set by                      |
| --------------------------------------------------- | ------------------- | --------------------------- |
| ``Scheduler``                                       | ``SchedulerState``  | ``hooks/scheduler.py``      |
| the scheduler's KV cache coordinator                | ``CoordinatorState``| ``hooks/scheduler.py``      |
| ``GPUModelRunner`` / the CPU runner, V1 and V2      | ``RunnerState``     | ``runtime.py``, runner hooks|
| ``DPLBAsyncMPClient`` (data-parallel balancing)     | ``ClientState``     | ``hooks/data_parallel.py``, ``hooks/engine_liveness.py`` |
| ``CPUAttentionMetadataBuilder``                     | ``BuilderState``    | ``cpu_backend.py``          |
| ``CPUAttentionBackendImpl`` (one per layer)         | ``LayerState``      | ``cpu_backend.py``          |
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, TypeVar

ATTRIBUTE = "_hogwild_state"  # (the attention impls have a method named _hogwild)

R = TypeVar("R")


@dataclass
class SchedulerState:
    """``hold``: request id -> shared prompt length of a worker 0 that leads this step alone;
    ``ended``: group -> its ended workers, whose blocks wait for the rest of the group;
    ``failing``: groups being failed (their blocks go as vLLM frees them); ``failed``: failed
    requests not yet reported in an output; ``paced``, ``caps``: think while answering
    (``hooks/pacing.py``)."""

    hold: dict[str, int] = field(default_factory=dict)
    ended: defaultdict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    failing: set[str] = field(default_factory=set)
    failed: list[Any] = field(default_factory=list)
    paced: dict[str, Any] = field(default_factory=dict)  # group -> hooks.pacing.Paced (think while answering)
    caps: dict[str, int] = field(default_factory=dict)  # this step's: writer request id -> its cap
    decode: Any = None  # token id -> text, made on first use


@dataclass
class CoordinatorState:
    """The scheduler's requests by id (vLLM hands the coordinator only their ids); ``groups``:
    each group's worker requests, ended ones included, and ``step``: the scheduler's step count,
    both set each step; ``reach``: group -> what its windowed layers may free
    (``hooks/kv_cache.py``); ``decode``: token id -> text, made on first use."""

    requests: dict[str, Any] | None = None
    groups: dict[str, list[Any]] = field(default_factory=dict)
    step: int = 0
    reach: dict[str, Any] = field(default_factory=dict)
    decode: Any = None


@dataclass
class RunnerState:
    """``planner``: the groups' views; ``layers``: each attention layer's kind (RoPE, window);
    ``rewind``: CPU generators to restore, by batch index (V1); ``batch``: the input batch
    between preparing attention and the step's end, ``requests``: the workers' request states,
    ``pending``: a step's sampled output not yet seen by the planner (V2)."""

    planner: Any = None
    layers: Any = None
    rewind: dict[int, Any] = field(default_factory=dict)
    batch: Any = None
    requests: dict[str, Any] = field(default_factory=dict)
    pending: Any = None


@dataclass
class ClientState:
    """``placed``: group -> (rank, workers still to place, when), for data-parallel balancing;
    ``liveness``: the watch over engines on other nodes."""

    placed: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    liveness: Any = None


@dataclass
class BuilderState:
    """The packed store's size for this builder's runner (``packed`` says whether it was read)."""

    packed: bool = False
    packing: Any = None


@dataclass
class LayerState:
    """One attention layer's: ``layer``: its cache and layout, read once; ``store``: its part of
    the packed store, and ``store_views`` the store as the op reads it."""

    layer: Any = None
    store: Any = None
    store_views: Any = None


def of(host: Any, kind: type[R]) -> R:
    """The host's record, made on first use."""
    record = host.__dict__.get(ATTRIBUTE)
    if record is None:
        record = host.__dict__[ATTRIBUTE] = kind()
    assert isinstance(record, kind), f"{type(host).__name__} carries a {type(record).__name__}, not a {kind.__name__}"
    return record


def peek(host: Any, kind: type[R]) -> R | None:
    """The host's record, or None where it has none yet (nothing is made)."""
    record = host.__dict__.get(ATTRIBUTE)
    assert record is None or isinstance(record, kind)
    return record
