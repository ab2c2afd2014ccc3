"""Frontend: a hogwild request is validated and fanned out into its W worker requests.

Patches ``InputProcessor.process_inputs`` and ``ParentRequest.get_child_info``.

The flag is validated before anything is scheduled (a bad one is a ``HogwildRequestError``:
ValueError offline, 400 online). With the protocol, the prompt, framing blocks and first
headers are built (``prompts.py``). The request then asks vLLM's own parallel-sampling
fan-out for W children (``n = W``; the greedy check on ``n`` ran when the user built
``SamplingParams`` with n=1), so the W worker completions come back as one RequestOutput,
in worker order; ``get_child_info`` stamps each child with its worker index and group
(W=1 is stamped here: no fan-out).
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Any

from vllm.exceptions import VLLMValidationError

from vllm_hogwild import admission, async_prompts, prompts, releases, runtime, support
from vllm_hogwild.hooks.patching import stop_tokens, wrap
from vllm_hogwild.params import field_of, is_hogwild, parse
from vllm_hogwild.protocol import GroupProtocol
from vllm_hogwild.worker_requests import WorkerStamp, framing_length, stamp_of, stamped, worker_prompt


class HogwildRequestError(VLLMValidationError, ValueError):
    """A bad hogwild request: a ValueError offline, HTTP 400 from the server (vLLM maps
    its validation errors to 400; a bare ValueError would be a 500)."""


def check_n(workers: int, n: int) -> None:
    if n != 1:
        raise ValueError(f"n: a hogwild request takes n=1 (got {n}); its hogwild_workers={workers} "
                         "worker completions are the choices")


def engine_facts(vllm_config: Any) -> support.EngineFacts:
    """What hogwild needs to know of an engine (``support.EngineFacts``), from its config: its
    scheduling, backend and runner, and what its attention reads (the CPU layout by vLLM's own
    choice)."""
    from vllm.platforms import current_platform

    model = vllm_config.model_config
    cache = vllm_config.cache_config
    dtype = str(model.dtype).removeprefix("torch.")
    layout = None
    if current_platform.is_cpu():
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        try:
            layout = _get_attn_isa(model.dtype, cache.block_size, model.get_head_size(), cache.cache_dtype)
        except NotImplementedError as e:  # vLLM's own refusal (fp8 without AVX-512): the engine runs none
            layout = f"none ({e})"
    cfg = model.hf_text_config
    parameters = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    if parameters is None and getattr(cfg, "rope_theta", None) is not None:
        parameters = {"rope_type": "default"}
    ropes, extra = support.rope_types(parameters)
    platform = "cpu" if current_platform.is_cpu() else "cuda" if current_platform.is_cuda() else \
        current_platform.device_name
    mixed = support.mixed_windows(model.get_sliding_window(), getattr(cfg, "layer_types", None))
    hybrid = not vllm_config.scheduler_config.disable_hybrid_kv_cache_manager
    runner = importlib.import_module(releases.adapter("model_runner")).runner_kind()
    backend = vllm_config.attention_config.backend if platform == "cuda" else None
    return support.EngineFacts(platform, dtype, str(cache.cache_dtype), layout, ropes, extra, mixed, hybrid,
                               getattr(model, "attention_chunk_size", None), runner,
                               async_scheduling=bool(vllm_config.scheduler_config.async_scheduling),
                               speculative=getattr(vllm_config, "speculative_config", None) is not None,
                               attention_backend=backend.name if backend is not None else None,
                               v2_runner_chosen=platform == "cuda" and bool(getattr(vllm_config,
                                                                                    "use_v2_model_runner", False)))


def check_request(vllm_config: Any, extra_args: Any, n: int) -> Any:
    """The hogwild flag of a request parsed, and everything this engine must have to run it
    checked: what the serving layer asks before a stream starts, and the frontend again
    before anything is scheduled (offline requests come only this way)."""
    flag = parse(extra_args)
    check_n(flag.workers, n)
    _check_model(vllm_config)
    return flag


def _check_model(vllm_config: Any) -> None:
    why = support.refusal(engine_facts(vllm_config))
    if why is not None:
        raise ValueError(why)


def _protocol_inputs(engine: Any, flag: Any, prompt_ids: list[int],
                     encode) -> tuple[list[int], list[list[int]], list]:
    """The protocol's prompt (instruction and layout heading around the user's text),
    each worker's first text, and worker 0's framing blocks, as token ids."""
    tokenizer = engine.tokenizer
    names = list(flag.protocol.names)
    preset_name = flag.preset
    if preset_name == "auto":
        vocab = tokenizer.get_vocab()
        preset_name = prompts.auto_preset(engine.model_config.hf_config.model_type, vocab.__contains__)
    preset = prompts.PRESETS[preset_name]
    text = tokenizer.decode(prompt_ids, skip_special_tokens=False)
    if not preset.user_open or preset.user_open not in text:
        text = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full = prompts.prompt_text(preset, flag.layout, names, text)
    ids = tokenizer.encode(full, add_special_tokens=preset.special_tokens)
    prefixes = [encode(prompts.first_step(names, w)) for w in range(len(names))]
    framing = [[name, encode(block)] for name, block in prompts.framing(flag.layout, names)]
    return ids, prefixes, framing


def _async_inputs(engine: Any, prompt_ids: list[int], encode) -> tuple[list[int], list[list[int]], tuple]:
    """Think while answering: the conversation both views share, each worker's first text (its
    intro, split and opening, ``async_prompts``) and those sections' lengths, as token ids."""
    tokenizer = engine.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("hogwild_async: the model has no chat template (its views are chats); "
                         "allowed only on chat models")

    def render(messages: list[dict], generation: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    try:
        markers = async_prompts.chat_markers(render)
    except ValueError as e:
        raise ValueError(f"hogwild_async: {e}") from None
    texts = async_prompts.texts(markers, tokenizer.decode(prompt_ids, skip_special_tokens=False))
    ids = tokenizer.encode(texts.conversation, add_special_tokens=False)
    parts = [[encode(text) for text in worker] for worker in texts.sections]
    prefixes = [[t for part in worker for t in part] for worker in parts]
    sections = tuple(tuple(zip(async_prompts.SECTIONS, map(len, worker))) for worker in parts)
    return ids, prefixes, sections


def _check_protocol(flag: Any, sp: Any, encode) -> None:
    if not stop_tokens(sp):
        raise ValueError("ignore_eos: hogwild_protocol=true needs a stop token (its workers stop with "
                         "it); set ignore_eos=false or give stop_token_ids")
    closing = len(encode(prompts.CLOSING))
    need = GroupProtocol.least_max_tokens(flag.protocol, closing)
    if sp.max_tokens < need:
        raise ValueError(f"max_tokens: hogwild_protocol=true needs max_tokens >= {need} (the closing "
                         f"sentence and up to hogwild_answer_tokens={flag.protocol.answer_tokens} answer "
                         f"tokens), got {sp.max_tokens}")


def install() -> None:
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.engine.parallel_sampling import ParentRequest

    wrap(InputProcessor, "process_inputs", _process_inputs)
    wrap(ParentRequest, "get_child_info", _get_child_info)


def _process_inputs(original):
    from vllm.sampling_params import SamplingParams

    def wrapper(self, request_id, prompt, params, *args, **kwargs):
        extra = getattr(params, "extra_args", None)
        if not isinstance(params, SamplingParams) or not is_hogwild(extra):
            return original(self, request_id, prompt, params, *args, **kwargs)
        try:
            return hogwild_inputs(self, request_id, prompt, params, *args, **kwargs)
        except ValueError as error:
            if isinstance(error, HogwildRequestError):
                raise
            raise HogwildRequestError(str(error), parameter=field_of(error)) from None

    def hogwild_inputs(self, request_id, prompt, params, *args, **kwargs):
        flag = check_request(self.vllm_config, params.extra_args, params.n)
        request = original(self, request_id, prompt, params, *args, **kwargs)
        if request.prompt_embeds is not None or request.mm_features or not request.prompt_token_ids:
            raise ValueError("prompt: hogwild takes a non-empty text or token-id prompt (no embeddings or images)")
        encode = runtime.encoder(self.model_config)
        framing: list = []
        sections: tuple = ()
        if flag.protocol is not None:
            request.prompt_token_ids, prefixes, framing = _protocol_inputs(
                self, flag, request.prompt_token_ids, encode)
        elif flag.is_async:
            request.prompt_token_ids, prefixes, sections = _async_inputs(self, request.prompt_token_ids, encode)
        else:
            prefixes = [encode(p) for p in flag.prefixes] or [[] for _ in range(flag.workers)]
        prompt_len = len(request.prompt_token_ids)
        sp = request.sampling_params
        # A think-while-answering view holds its own first text and the other's opening, not the other's.
        shown = prompt_len + max(len(prefixes[w]) + sections[1 - w][-1][1] for w in (0, 1)) if flag.is_async else None
        sp.max_tokens = admission.check_lengths(
            self.model_config.max_model_len, self.vllm_config.scheduler_config.max_num_batched_tokens,
            params.max_tokens, prompt_len, [len(p) for p in prefixes], framing_length(framing),
            first_texts="prompt" if flag.is_async else "hogwild_prefixes", shown=shown)
        if flag.protocol is not None:
            _check_protocol(flag, sp, encode)
        lengths = [len(worker_prompt(request.prompt_token_ids, framing, prefixes, w)) for w in range(flag.workers)]
        cache = self.vllm_config.cache_config
        admission.check_capacity(self.vllm_config.scheduler_config.max_num_seqs,
                                 cache.num_gpu_blocks and cache.num_gpu_blocks - 1,  # less vLLM's null block
                                 cache.block_size, lengths, sp.max_tokens)
        # Worker 0 of a group named after the request: W=1 has no fan-out, and vLLM's
        # fan-out stamps each child with its own index (get_child_info).
        sp.extra_args = stamped(sp.extra_args, WorkerStamp(
            request.request_id, 0, flag, prompt_len, tuple(map(tuple, prefixes)),
            tuple((name, tuple(ids)) for name, ids in framing), sections))
        sp.n = flag.workers
        # The prefix cache: the group's shared prompt is read and written like a plain request's,
        # nothing else of it (hooks/kv_cache.py); a user's cache_salt still isolates it.
        return request

    return wrapper


def _get_child_info(original):
    def wrapper(self, index: int):
        child_id, params = original(self, index)
        stamp = stamp_of(params)
        if stamp is not None:
            params = params.clone()
            params.extra_args = stamped(params.extra_args, replace(stamp, group=self.request_id, worker=index))
        return child_id, params

    return wrapper
