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
step), so no block of a group is freed that way: a group keeps its blocks until it ends, as
with full attention (which the admission's block count assumes). The scheduler hook tells
the coordinator its requests (``state.CoordinatorState``), since vLLM passes it only their ids.
"""

from __future__ import annotations

from vllm_hogwild.hooks import state
from vllm_hogwild.hooks.patching import group_of, wrap
from vllm_hogwild.worker_requests import cacheable_tokens, stamp_of


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
        requests = getattr(state.peek(self, state.CoordinatorState), "requests", None)
        request = requests.get(request_id) if requests else None
        if request is not None and group_of(request) is not None:
            return None  # other workers' views reach blocks outside this worker's window
        return original(self, request_id, *args, **kwargs)

    return wrapper
