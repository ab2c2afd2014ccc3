"""vLLM 0.34: what each seam wraps or subclasses (see ``releases/__init__.py``).

Model Runner V2 is the only runner: the CPU worker runs the standalone CPU runner (built without
triton-cpu) or, with a Triton backend, the GPU runner (its subclass ``CPUModelRunner``); GPU
workers run ``vllm.v1.worker.gpu.model_runner.GPUModelRunner``."""

from vllm_hogwild.releases import Target, v0_32

# seam -> the module with its part for this release (Model Runner V2 and its logits processors)
ADAPTERS = {
    "model_runner": "vllm_hogwild.hooks.model_runner_v2",
    "sampler": "vllm_hogwild.hooks.sampler_v2",
}

# What moved since 0.32: the V1 runner is gone (Model Runner V2 in its place) and the prefix cache's
# lookup takes a bound; every other seam wraps the same methods with the same parameters.
_CHANGED = {"model_runner", "KVCacheManager.get_computed_blocks"}

# Model Runner V2's two runners, hooked at the same methods (``hooks/model_runner_v2``).
_RUNNER_METHODS = {
    "load_model": ("load_dummy_weights", "*args", "model", "**kwargs"),
    "add_requests": ("scheduler_output",),
    "update_requests": ("scheduler_output",),
    "_remove_request": ("req_id",),
    "finish_requests": ("scheduler_output",),
    "prepare_attn": ("input_batch",),
    "sample_tokens": ("grammar_output",),
}
_RUNNERS = (("vllm.v1.worker.cpu.standalone_model_runner", "StandaloneCPUModelRunner"),
            ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner"))

TARGETS = [t for t in v0_32.TARGETS if t.seam not in _CHANGED and t.name not in _CHANGED] + [
    Target("kv_cache", "vllm.v1.core.kv_cache_manager", "KVCacheManager", "get_computed_blocks",
           ("request", "max_cache_hit_length")),
] + [Target("model_runner", module, cls, method, params)
     for module, cls in _RUNNERS for method, params in _RUNNER_METHODS.items()]
