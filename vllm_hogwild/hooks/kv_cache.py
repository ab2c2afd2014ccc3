"""KV cache manager: what a group's blocks may do in vLLM's prefix cache and window freeing.

Patches ``KVCacheManager.get_computed_blocks``, ``KVCacheCoordinator.cache_blocks`` and
``KVCacheCoordinator.remove_skipped_blocks``.

**Prefix cache.** A group's shared prompt is plain causal text: its keys depend on no
worker, so worker 0 reads it from vLLM's prefix cache and writes it there as a plain request
does (``worker_requests.cacheable_tokens``): a group leading with a cached system prompt or
protocol instruction starts from the hit, and a later group or plain request hits what it
left. Nothing after the prompt enters the cache (vLLM hashes every full block of a request;
only the cached ones can be hit): not the framing or prefixes, not a generated token, not any
block of another worker's request. No request can hit a block whose keys depend on a view.
A hit is capped where the prompt ends (a plain request that wrote the same prompt and more
cached its continuation computed without the group's views).

**Window freeing.** With a sliding-window model, vLLM frees a request's blocks that fall
out of its own window. A worker's window is over its own positions, but other workers' views
place its tokens elsewhere (the prompt, a step committed long ago, another worker's current
step), so vLLM's rule never runs for a group. Instead each windowed manager frees the whole
blocks that ``window_reach`` finds no running worker's view can reach again: settled tokens
behind every running view's window. The coordinator keeps a copy of each group's commits
(a ``GroupTracker`` fed the same texts as the model runner's planner, up to each worker's
computed tokens) and works the blocks out once per step, from the first worker vLLM asks it
to free for. Nothing is freed before every worker has computed its prompt (a leading worker 0
prefills alone, and a view assumes the whole prompt). The scheduler hook tells the coordinator
its requests and groups (``state.CoordinatorState``), since vLLM passes it only request ids.
Full-attention managers free nothing: admission counts a group's blocks as full attention's.

Reads, besides the patched methods: ``SingleTypeKVCacheManager`` ``single_type_managers``,
``sliding_window``, ``req_to_blocks``, ``_null_block`` and ``_remove_blocks_in_range``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm_hogwild import window_reach
from vllm_hogwild.group import GroupTracker
from vllm_hogwild.hooks import state
from vllm_hogwild.hooks.patching import group_of, wrap
from vllm_hogwild.worker_requests import cacheable_tokens, stamp_of, stream_starts


def install() -> None:
    from vllm.v1.core.kv_cache_coordinator import KVCacheCoordinator
    from vllm.v1.core.kv_cache_manager import KVCacheManager

    wrap(KVCacheManager, "get_computed_blocks", _get_computed_blocks)
    wrap(KVCacheCoordinator, "cache_blocks", _cache_blocks)
    wrap(KVCacheCoordinator, "remove_skipped_blocks", _remove_skipped_blocks)


def _get_computed_blocks(original):
    def wrapper(self, request, *args, **kwargs):  # (0.34 adds max_cache_hit_length)
        stamp = stamp_of(request.sampling_params)
        if stamp is None:
            return original(self, request, *args, **kwargs)
        whole = cacheable_tokens(stamp) // self.block_pool.hash_block_size  # hashed blocks of the prompt
        if whole == 0:
            return self.empty_kv_cache_blocks, 0, 0
        hashes = request.block_hashes
        request.block_hashes = hashes[:whole]  # the hit ends where the prompt does, at the latest
        try:
            return original(self, request, *args, **kwargs)
        finally:
            request.block_hashes = hashes

    return wrapper


def _cache_blocks(original):
    def wrapper(self, request, num_computed_tokens):
        stamp = stamp_of(request.sampling_params)
        if stamp is not None:
            num_computed_tokens = min(num_computed_tokens, cacheable_tokens(stamp))
        return original(self, request, num_computed_tokens)

    return wrapper


def _remove_skipped_blocks(original):
    def wrapper(self, request_id, *args, **kwargs):
        record = state.peek(self, state.CoordinatorState)
        requests = getattr(record, "requests", None)
        request = requests.get(request_id) if requests else None
        if request is None or group_of(request) is None:
            return original(self, request_id, *args, **kwargs)
        for manager in self.single_type_managers:
            window = getattr(manager, "sliding_window", None)
            if window:
                _free_unreachable(manager, record, request, window)
        return None

    return wrapper


@dataclass
class _Reach:
    """One group's copy of its commits, and this step's unreachable home ranges per window."""

    tracker: GroupTracker
    step: int = -1  # the scheduler step its views are of
    views: list = field(default_factory=list)  # each worker's view of the computed keys
    running: list[int] = field(default_factory=list)  # the workers not finished
    ranges: dict[int, list] = field(default_factory=dict)  # window -> per worker, home ranges


def _free_unreachable(manager: Any, record: state.CoordinatorState, request: Any, window: int) -> None:
    """Free the whole blocks of ``request`` that no running view of its group reaches again."""
    stamp = stamp_of(request.sampling_params)
    ranges = _unreachable(record, stamp, window)
    if not ranges:
        return
    blocks = manager.req_to_blocks.get(request.request_id, [])
    for first, last in window_reach.whole_blocks(ranges[stamp.worker], manager.block_size):
        run = None  # runs of blocks still held (vLLM's range free stops at a freed one)
        for i in range(first, min(last, len(blocks)) + 1):
            held = i < min(last, len(blocks)) and blocks[i] is not manager._null_block
            if held and run is None:
                run = i
            elif not held and run is not None:
                manager._remove_blocks_in_range(request.request_id, run, i)
                run = None


def _unreachable(record: state.CoordinatorState, stamp: Any, window: int) -> list | None:
    """Per worker of ``stamp``'s group, its home ranges no running view reaches again, worked
    out once per step; None before every worker has computed its prompt."""
    members = record.groups.get(stamp.group, [])
    if len(members) < stamp.flag.workers:
        return None
    reach = record.reach.get(stamp.group)
    if reach is None:
        starts = stream_starts(stamp.prompt_len, stamp.framing, stamp.flag.workers)
        reach = record.reach[stamp.group] = _Reach(GroupTracker(
            stamp.flag.layout, stamp.flag.boundary, stamp.prompt_len, starts, stamp.spans()))
    if reach.step != record.step:
        by_worker = sorted(members, key=lambda r: stamp_of(r.sampling_params).worker)
        tracker = reach.tracker
        if any(r.num_computed_tokens < w.stream_start for r, w in zip(by_worker, tracker.state.workers)):
            return None
        texts = {}
        for w, r in enumerate(by_worker):
            start = tracker.scanned(w)
            if r.num_computed_tokens > start:
                texts[w] = [record.decode(t) for t in r.all_token_ids[start:r.num_computed_tokens]]
        tracker.commit_written(texts)
        history = tracker.shared_history()
        split = tracker.split_views([r.num_computed_tokens for r in by_worker])
        reach.views = [(before, history, after) for before, after in split]
        reach.running = [w for w, r in enumerate(by_worker) if not r.is_finished()]
        reach.step, reach.ranges = record.step, {}
    if window not in reach.ranges:
        reach.ranges[window] = window_reach.unreachable(reach.tracker.layout, reach.tracker.state, reach.views,
                                                        reach.running, window)
    return reach.ranges[window]
