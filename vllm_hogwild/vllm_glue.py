"""Every hook the plugin puts into vLLM 0.32, in one place (a vLLM upgrade touches this file).

How a hogwild request flows:

* command line (``EngineArgs.add_cli_args``): ``--plugin NAME`` is accepted;
* frontend (``InputProcessor.process_inputs``): the flag is validated before anything is
  scheduled (a bad one is a ``HogwildRequestError``: ValueError offline, 400 online);
  with the protocol, the prompt, framing blocks and first headers are built
  (``prompts.py``); the request then asks vLLM's own parallel-sampling fan-out for W
  children (``n = W``; the greedy check on ``n`` ran when the user built
  ``SamplingParams`` with n=1), so the W worker completions come back as one
  RequestOutput, in worker order; ``ParentRequest.get_child_info`` stamps each child
  with its worker index and group (W=1 is stamped in the frontend: no fan-out);
* engine core (``EngineCore.preprocess_add_request``): each child's prompt becomes its
  worker's request: worker 0 holds the shared prompt and the framing blocks, every
  other worker only its own copy of the prompt's last token; each then gets its prefix;
* scheduler: a group is admitted whole (``admission.py``), its workers run before
  ordinary requests (vLLM preempts from the back), and a finished worker's blocks are
  freed only when its whole group has ended (or was aborted);
* model runner (``_update_states``): worker requests are registered with the planner;
  the attention backends (``cpu_backend.py``, ``cuda_backend.py``) ask it for the views;
* sampler (``HogwildLogitsProcessor``): the protocol's forced and greedy tokens;
* outputs (``RequestState.make_request_output``, the OpenAI serving classes): the final
  answer on RequestOutput and HTTP responses, per-worker choices when streaming.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import uuid
from collections import defaultdict
from typing import Any

from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import LogitsProcessor

from vllm_hogwild import prompts, runtime
from vllm_hogwild.admission import Capacity, GroupDemand, blocks_for
from vllm_hogwild.params import (
    FRAMING_KEY,
    GROUP_KEY,
    PREFIX_IDS_KEY,
    PROMPT_LEN_KEY,
    WORKER_KEY,
    field_of,
    is_hogwild,
    parse,
)
from vllm_hogwild.protocol import GroupProtocol

_installed = False


def install() -> None:
    """Patch vLLM once per process (the plugin entry point runs in every vLLM process)."""
    global _installed
    if _installed:
        return
    _installed = True
    from vllm.platforms import current_platform

    _patch_cli()
    _patch_frontend()
    _patch_outputs()
    _patch_engine_core()
    _patch_scheduler()
    _patch_model_runner()
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if current_platform.is_cpu():
        register_backend(AttentionBackendEnum.CPU_ATTN, "vllm_hogwild.cpu_backend.HogwildCPUBackend")
    elif current_platform.is_cuda():
        register_backend(AttentionBackendEnum.CUSTOM, "vllm_hogwild.cuda_backend.HogwildTritonBackend")
        # The runner glue and the protocol's logits processor hook vLLM's V1 model runner,
        # which CUDA builds of vLLM 0.32 leave for Model Runner V2 unless told otherwise.
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")


class HogwildRequestError(VLLMValidationError, ValueError):
    """A bad hogwild request: a ValueError offline, HTTP 400 from the server (vLLM maps
    its validation errors to 400; a bare ValueError would be a 500)."""


def _wrap(cls: type, name: str, make) -> None:
    original = getattr(cls, name)
    setattr(cls, name, make(original))


# ---------------------------------------------------------------- command line


def _enabled_plugin(name: str) -> str:
    """``--plugin NAME``: a general plugin that is installed and enabled here."""
    from importlib.metadata import entry_points

    installed = {ep.name for ep in entry_points(group="vllm.general_plugins")}
    allowed = os.environ.get("VLLM_PLUGINS")
    enabled = installed if allowed is None else installed & set(allowed.split(","))
    if name not in enabled:
        raise argparse.ArgumentTypeError(
            f"plugin {name!r} is not an enabled vLLM plugin; enabled: {', '.join(sorted(enabled)) or 'none'}")
    return name


def _patch_cli() -> None:
    """Accept ``vllm serve MODEL --plugin hogwild``. vLLM loads plugins from entry points
    (before it builds its parser), so the option only checks that each named plugin is
    installed and enabled."""
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.add_cli_args

    def add_cli_args(parser, *args, **kwargs):
        parser = original(parser, *args, **kwargs)
        if not any("--plugin" in action.option_strings for action in parser._actions):
            parser.add_argument("--plugin", action="append", type=_enabled_plugin, metavar="NAME",
                                help="a vLLM general plugin that must be enabled (e.g. hogwild)")
        return parser

    EngineArgs.add_cli_args = staticmethod(add_cli_args)


# ---------------------------------------------------------------- frontend


def _check_n(workers: int, n: int) -> None:
    if n != 1:
        raise ValueError(f"n: a hogwild request takes n=1 (got {n}); its hogwild_workers={workers} "
                         "worker completions are the choices")


def _check_engine(vllm_config: Any) -> None:
    """Hogwild's hooks are in place on this engine: synchronous scheduling (the planner and
    the protocol read each step's sampled tokens) and, on CUDA, our backend and the V1 runner."""
    from vllm.platforms import current_platform

    if vllm_config.scheduler_config.async_scheduling:
        raise ValueError("hogwild_workers: needs synchronous scheduling; start vLLM with "
                         "--no-async-scheduling (LLM(..., async_scheduling=False))")
    if getattr(vllm_config, "speculative_config", None) is not None:
        raise ValueError("hogwild_workers: not supported with speculative decoding (vLLM then loads "
                         "no logits-processor plugins, and draft tokens would enter the shared cache)")
    if not current_platform.is_cuda():
        return
    backend = vllm_config.attention_config.backend
    if backend is None or backend.name != "CUSTOM":
        raise ValueError("hogwild_workers: on CUDA, start vLLM with --attention-backend CUSTOM "
                         "(the plugin's Triton backend); this engine uses "
                         f"{backend.name if backend else 'the default backend'}")
    if vllm_config.use_v2_model_runner:
        raise ValueError("hogwild_workers: needs vLLM's V1 model runner (VLLM_USE_V2_MODEL_RUNNER=0)")


def _check_model(model_config: Any) -> None:
    cfg = model_config.hf_text_config
    if not any(getattr(cfg, k, None) is not None for k in ("rope_theta", "rope_parameters", "rope_scaling")):
        raise ValueError(
            f"hogwild_workers: model {model_config.model!r} has no rotary position embedding "
            "(RoPE); hogwild needs a RoPE model (Llama, Qwen2, Qwen3, Mistral, ...)"
        )
    if model_config.get_sliding_window() is not None:
        raise ValueError("hogwild_workers: sliding-window attention models are not supported")


def _check_lengths(engine: Any, params: Any, prompt_len: int, prefixes: list[list[int]], framing: int) -> int:
    """The views must fit the model and the group's prefill one step; returns max_tokens."""
    max_len = engine.model_config.max_model_len
    workers = len(prefixes)
    written = prompt_len + framing + sum(len(p) for p in prefixes)
    room = max_len - written
    if params.max_tokens is None:
        if room < workers:
            raise ValueError(
                f"max_tokens: the prompt ({written} tokens with the protocol's texts) leaves no room "
                f"for {workers} workers within max_model_len={max_len}"
            )
        return room // workers
    if params.max_tokens * workers > room:
        raise ValueError(
            f"max_tokens: {workers} workers x max_tokens={params.max_tokens} plus the prompt and "
            f"the workers' first texts ({written} tokens) exceed max_model_len={max_len}; allowed: "
            f"max_tokens <= {max(room, 0) // workers}"
        )
    prefill = written + workers - 1
    budget = engine.vllm_config.scheduler_config.max_num_batched_tokens
    if prefill > budget:
        raise ValueError(
            f"prompt: a hogwild group prefills its prompt and every worker's first text in one step "
            f"({prefill} tokens), more than max_num_batched_tokens={budget}; raise it or shorten the prompt"
        )
    return params.max_tokens


def _check_capacity(engine: Any, prompt_lens: list[int], max_tokens: int) -> None:
    """A group that could never be admitted (too many workers, or a worst case larger than
    the whole KV cache) is refused now instead of waiting forever."""
    workers = len(prompt_lens)
    seats = engine.vllm_config.scheduler_config.max_num_seqs
    if workers > seats:
        raise ValueError(f"hogwild_workers: {workers} workers run at once, more than max_num_seqs={seats}")
    cache = engine.vllm_config.cache_config
    if not cache.num_gpu_blocks:
        return  # not known yet (engine start-up)
    blocks = cache.num_gpu_blocks - 1

    def need(tokens: int) -> int:
        return GroupDemand(tuple(prompt_lens), tokens).worst_blocks(cache.block_size)

    if need(max_tokens) > blocks:
        allowed = max_tokens
        while allowed > 0 and need(allowed) > blocks:
            allowed -= 1
        raise ValueError(f"max_tokens: {workers} workers x max_tokens={max_tokens} need {need(max_tokens)} KV "
                         f"blocks at worst, more than the cache holds ({blocks}); allowed: max_tokens <= {allowed}")


def _worker_prompt(shared: list[int], framing: list, prefixes: list[list[int]], worker: int) -> list[int]:
    """A worker's request: worker 0 holds the shared prompt and the framing blocks, every
    other worker its own copy of the prompt's last token; then its prefix."""
    own = list(shared) + [t for _, ids in framing for t in ids] if worker == 0 else list(shared[-1:])
    return own + list(prefixes[worker])


def _protocol_inputs(engine: Any, hog: Any, prompt_ids: list[int],
                     encode) -> tuple[list[int], list[list[int]], list]:
    """The protocol's prompt (instruction and layout heading around the user's text),
    each worker's first text, and worker 0's framing blocks, as token ids."""
    tokenizer = engine.tokenizer
    names = list(hog.protocol.names)
    preset_name = hog.preset
    if preset_name == "auto":
        vocab = tokenizer.get_vocab()
        preset_name = prompts.auto_preset(engine.model_config.hf_config.model_type, vocab.__contains__)
    preset = prompts.PRESETS[preset_name]
    text = tokenizer.decode(prompt_ids, skip_special_tokens=False)
    if not preset.user_open or preset.user_open not in text:
        text = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full = prompts.prompt_text(preset, hog.layout, names, text)
    ids = tokenizer.encode(full, add_special_tokens=preset.special_tokens)
    prefixes = [encode(prompts.first_step(n, w)) for w, n in enumerate(names)]
    framing = [[name, encode(block)] for name, block in prompts.framing(hog.layout, names)]
    return ids, prefixes, framing


def _stop_tokens(sp: Any) -> set[int]:
    """The tokens that end a request (vLLM's stop check), so that forcing one stops a worker."""
    eos = {sp.eos_token_id} if sp.eos_token_id is not None else set()
    return eos | set(sp.stop_token_ids or ())


def _check_protocol(hog: Any, sp: Any, encode) -> None:
    if not _stop_tokens(sp):
        raise ValueError("ignore_eos: hogwild_protocol=true needs a stop token (its workers stop with "
                         "it); set ignore_eos=false or give stop_token_ids")
    closing = len(encode(prompts.CLOSING))
    need = GroupProtocol.least_max_tokens(hog.protocol, closing)
    if sp.max_tokens < need:
        raise ValueError(f"max_tokens: hogwild_protocol=true needs max_tokens >= {need} (the closing "
                         f"sentence and up to hogwild_answer_tokens={hog.protocol.answer_tokens} answer "
                         f"tokens), got {sp.max_tokens}")


def _patch_frontend() -> None:
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.engine.parallel_sampling import ParentRequest

    def process_inputs(original):
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
            extra = params.extra_args
            hog = parse(extra)
            _check_n(hog.workers, params.n)
            _check_model(self.model_config)
            _check_engine(self.vllm_config)
            request = original(self, request_id, prompt, params, *args, **kwargs)
            if request.prompt_embeds is not None or request.mm_features or not request.prompt_token_ids:
                raise ValueError("prompt: hogwild takes a non-empty text or token-id prompt (no embeddings or images)")
            encode = runtime.encoder(self.model_config)
            framing: list = []
            if hog.protocol is not None:
                request.prompt_token_ids, prefixes, framing = _protocol_inputs(
                    self, hog, request.prompt_token_ids, encode)
            else:
                prefixes = [encode(p) for p in hog.prefixes] or [[] for _ in range(hog.workers)]
            prompt_len = len(request.prompt_token_ids)
            sp = request.sampling_params
            sp.max_tokens = _check_lengths(self, params, prompt_len, prefixes, sum(len(b[1]) for b in framing))
            if hog.protocol is not None:
                _check_protocol(hog, sp, encode)
            lengths = [len(_worker_prompt(request.prompt_token_ids, framing, prefixes, w)) for w in range(hog.workers)]
            _check_capacity(self, lengths, sp.max_tokens)
            sp.extra_args = {**sp.extra_args, PROMPT_LEN_KEY: prompt_len, PREFIX_IDS_KEY: prefixes,
                             FRAMING_KEY: framing}
            if hog.workers == 1:  # vLLM fans out only n > 1: the one worker is stamped here
                sp.extra_args.update({WORKER_KEY: 0, GROUP_KEY: request.request_id})
            sp.n = hog.workers
            sp.skip_reading_prefix_cache = True
            # A salt of its own keeps the group's blocks (whose keys depend on the other
            # workers) out of every other request's prefix-cache hits.
            request.cache_salt = f"hogwild-{uuid.uuid4().hex}"
            return request

        return wrapper

    def get_child_info(original):
        def wrapper(self, index: int):
            child_id, params = original(self, index)
            extra = params.extra_args
            if extra and PROMPT_LEN_KEY in extra:
                params = params.clone()
                params.extra_args = {**extra, WORKER_KEY: index, GROUP_KEY: self.request_id}
            return child_id, params

        return wrapper

    _wrap(InputProcessor, "process_inputs", process_inputs)
    _wrap(ParentRequest, "get_child_info", get_child_info)


# ---------------------------------------------------------------- outputs (final answer)


def _protocol_on(params: Any) -> bool:
    extra = getattr(params, "extra_args", None)
    return bool(extra) and is_hogwild(extra) and parse(extra).protocol is not None


def _patch_outputs() -> None:
    """The group's final answer, parsed from worker 0's text when it ends, rides on every
    RequestOutput of the group from then on (``hogwild_final_answer``), and on HTTP
    responses as ``"hogwild": {"final_answers": [...]}`` (one per prompt)."""
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
    from vllm.v1.engine.output_processor import OutputProcessor, RequestState

    def add_request(original):
        def wrapper(self, request, *args, **kwargs):
            original(self, request, *args, **kwargs)
            state = self.request_states.get(request.request_id)
            if state is not None:
                state.hogwild_protocol = _protocol_on(request.sampling_params)

        return wrapper

    def make_request_output(original):
        def wrapper(self, new_token_ids, pooling_output, finish_reason, *args, **kwargs):
            group = self.parent_req if self.parent_req is not None else self  # W=1: no fan-out
            if (finish_reason is not None and self.request_index == 0 and self.detokenizer is not None
                    and getattr(self, "hogwild_protocol", False)):
                group.hogwild_final_answer = prompts.final_answer(self.detokenizer.output_text)
            output = original(self, new_token_ids, pooling_output, finish_reason, *args, **kwargs)
            if output is not None and hasattr(group, "hogwild_final_answer"):
                output.hogwild_final_answer = group.hogwild_final_answer
            return output

        return wrapper

    def completion_response(original):
        def wrapper(self, final_res_batch, *args, **kwargs):
            return _with_answers(original(self, final_res_batch, *args, **kwargs), final_res_batch)

        return wrapper

    def chat_full(original):
        async def wrapper(self, request, result_generator, *args, **kwargs):
            seen: list[Any] = []

            async def tap():
                async for res in result_generator:
                    seen.append(res)
                    yield res

            response = await original(self, request, tap(), *args, **kwargs)
            return _with_answers(response, seen[-1:])

        return wrapper

    def stream(original, chunk_object: str):
        # The stream generators size their per-choice state from request.n; a hogwild
        # request keeps n=1 (the flag fans it out), so they get a view with n=W. The
        # final answers go out as one more chunk (no choices) before [DONE].
        signature = inspect.signature(original)

        def wrapper(self, request, *args, **kwargs):
            bound = signature.bind(self, _with_worker_choices(request), *args, **kwargs)
            answers: dict[int, Any] = {}

            async def tap(results):
                async for item in results:
                    index, res = item if isinstance(item, tuple) else (0, item)
                    if hasattr(res, "hogwild_final_answer"):
                        answers[index] = res.hogwild_final_answer
                    yield item

            bound.arguments["result_generator"] = tap(bound.arguments["result_generator"])

            async def chunks():
                async for chunk in original(*bound.args, **bound.kwargs):
                    if chunk.startswith("data: [DONE]") and answers:
                        final = {"id": bound.arguments["request_id"], "object": chunk_object, "choices": [],
                                 "hogwild": {"final_answers": [answers.get(i) for i in range(max(answers) + 1)]}}
                        yield f"data: {json.dumps(final)}\n\n"
                    yield chunk

            return chunks()

        return wrapper

    _wrap(OutputProcessor, "add_request", add_request)
    _wrap(RequestState, "make_request_output", make_request_output)
    _wrap(OpenAIServingCompletion, "request_output_to_completion_response", completion_response)
    _wrap(OpenAIServingChat, "chat_completion_full_generator", chat_full)
    _wrap(OpenAIServingCompletion, "completion_stream_generator", lambda f: stream(f, "text_completion"))
    _wrap(OpenAIServingChat, "chat_completion_stream_generator", lambda f: stream(f, "chat.completion.chunk"))

    def create(original):
        # A bad flag is a 400 before anything starts, streaming included.
        async def wrapper(self, request, *args, **kwargs):
            extra = getattr(request, "vllm_xargs", None)
            if is_hogwild(extra):
                try:
                    _check_n(parse(extra).workers, request.n or 1)
                except ValueError as error:
                    return self.create_error_response(str(error), param=field_of(error))
            return await original(self, request, *args, **kwargs)

        return wrapper

    _wrap(OpenAIServingCompletion, "create_completion", create)
    _wrap(OpenAIServingChat, "create_chat_completion", create)


def _with_worker_choices(request: Any) -> Any:
    extra = getattr(request, "vllm_xargs", None)
    if not is_hogwild(extra) or (request.n or 1) != 1:
        return request
    try:
        workers = parse(extra).workers
    except ValueError:
        return request  # the engine refuses it with a message naming the field
    return request.model_copy(update={"n": workers})


def _with_answers(response: Any, results: list[Any]) -> Any:
    if any(hasattr(r, "hogwild_final_answer") for r in results) and hasattr(response, "choices"):
        response.hogwild = {"final_answers": [getattr(r, "hogwild_final_answer", None) for r in results]}
    return response


# ---------------------------------------------------------------- engine core


def _patch_engine_core() -> None:
    from vllm.v1.engine.core import EngineCore

    def preprocess_add_request(original):
        def wrapper(self, request):
            sp = request.sampling_params
            extra = sp.extra_args if sp is not None else None
            if extra and WORKER_KEY in extra:
                shared = request.prompt_token_ids[: int(extra[PROMPT_LEN_KEY])]
                request.prompt_token_ids = _worker_prompt(shared, extra[FRAMING_KEY], extra[PREFIX_IDS_KEY],
                                                          int(extra[WORKER_KEY]))
            return original(self, request)

        return wrapper

    _wrap(EngineCore, "preprocess_add_request", preprocess_add_request)


# ---------------------------------------------------------------- scheduler


def _group_of(request: Any) -> str | None:
    sp = request.sampling_params
    extra = sp.extra_args if sp is not None else None
    return extra.get(GROUP_KEY) if extra else None


def _patch_scheduler() -> None:
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.request import RequestStatus

    def schedule(original):
        def wrapper(self, *args, **kwargs):
            groups: dict[str, list[Any]] = defaultdict(list)
            for request in self.requests.values():
                key = _group_of(request)
                if key is not None and not request.is_finished():
                    groups[key].append(request)
            if not groups:
                return original(self, *args, **kwargs)
            # Workers first: under KV pressure vLLM preempts from the back of `running`.
            self.running.sort(key=lambda r: _group_of(r) is None)
            admitted, held = _admit(self, groups, RequestStatus.WAITING)
            self.waiting.remove_requests(held + [r for key in admitted for r in groups[key]])
            self.waiting.prepend_requests(reversed([r for key in admitted for r in groups[key]]))
            try:
                output = original(self, *args, **kwargs)
            finally:
                self.waiting.prepend_requests(held)
            _check_whole(output, admitted, groups)
            return output

        return wrapper

    def free_blocks(original):
        def wrapper(self, request):
            key = _group_of(request)
            if key is None:
                return original(self, request)
            ended = self.__dict__.setdefault("_hogwild_ended", defaultdict(list))
            ended[key].append(request)
            if len(ended[key]) < parse(request.sampling_params.extra_args).workers:
                return None  # the others still read this worker's keys
            for member in ended.pop(key):
                original(self, member)
            return None

        return wrapper

    _wrap(Scheduler, "schedule", schedule)
    _wrap(Scheduler, "_free_blocks", free_blocks)


def _admit(sched: Any, groups: dict[str, list[Any]], waiting_status: Any) -> tuple[list[str], list[Any]]:
    """Which waiting groups start now (in arrival order) and which requests wait."""
    bs = sched.block_size
    pool = sched.kv_cache_manager.block_pool
    running_need = sum(max(0, r.num_tokens_with_spec - r.num_computed_tokens) for r in sched.running)
    active = [reqs for reqs in groups.values() if any(r.status != waiting_status for r in reqs)]
    reserved = sum(blocks_for(r.num_prompt_tokens + r.max_tokens, bs) for reqs in active for r in reqs)
    capacity = Capacity(
        tokens=sched.max_num_scheduled_tokens - running_need,
        seats=sched.max_num_running_reqs - len(sched.running),
        free_blocks=pool.get_num_free_blocks() - len(sched.running),
        unreserved_blocks=pool.num_gpu_blocks - 1 - reserved,
        block_size=bs,
    )
    waiting = sorted(
        (key for key, reqs in groups.items() if all(r.status == waiting_status for r in reqs)),
        key=lambda key: min(r.arrival_time for r in groups[key]),
    )
    admitted, held, blocked = [], [], False
    for key in waiting:
        reqs = sorted(groups[key], key=lambda r: r.sampling_params.extra_args[WORKER_KEY])
        complete = len(reqs) == parse(reqs[0].sampling_params.extra_args).workers
        demand = GroupDemand(tuple(r.num_prompt_tokens for r in reqs), reqs[0].max_tokens)
        if not blocked and complete and capacity.take(demand):
            admitted.append(key)
            groups[key] = reqs
        else:
            blocked = blocked or complete  # first come, first served among groups
            held.extend(reqs)
    return admitted, held


def _check_whole(output: Any, admitted: list[str], groups: dict[str, list[Any]]) -> None:
    """A group runs whole or not at all: anything else is a bug, never silent."""
    for key in admitted:
        for r in groups[key]:
            if output.num_scheduled_tokens.get(r.request_id) != r.num_prompt_tokens:
                raise RuntimeError(f"hogwild: group {key} was only partly admitted (request {r.request_id})")
    preempted = output.preempted_req_ids or ()
    for key, reqs in groups.items():
        if any(r.request_id in preempted for r in reqs):
            raise RuntimeError(f"hogwild: a worker of group {key} was preempted")


# ---------------------------------------------------------------- model runner


def _patch_model_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    def update_states(original):
        def wrapper(self, scheduler_output):
            result = original(self, scheduler_output)
            runtime.set_runner(self)
            for new in scheduler_output.scheduled_new_reqs:
                sp = new.sampling_params
                if sp is not None and sp.extra_args and WORKER_KEY in sp.extra_args:
                    runtime.planner(self).add(new.req_id, sp.extra_args, self.requests[new.req_id])
            if scheduler_output.finished_req_ids and getattr(self, "_hogwild_planner", None) is not None:
                self._hogwild_planner.finish(list(scheduler_output.finished_req_ids))
            return result

        return wrapper

    _wrap(GPUModelRunner, "_update_states", update_states)


# ---------------------------------------------------------------- sampler (protocol)


class HogwildLogitsProcessor(LogitsProcessor):
    """Applies the protocol's per-step ``Action``s (``protocol.py``) to the logits rows of
    hogwild workers; every other row is left alone. Loaded in every engine through the
    ``vllm.logits_processors`` entry point.

    ``worker_steps`` and ``forced_steps`` count, since the engine started, the protocol
    workers' sampled rows and those whose token was forced (benchmarks read them)."""

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        self.worker_steps = 0
        self.forced_steps = 0
        self._model_config = vllm_config.model_config
        self._rows: dict[int, tuple[str, int, list[int]]] = {}  # batch index -> (group, worker, outputs)
        self._groups: dict[str, GroupProtocol] = {}
        self._ended: dict[str, set[int]] = defaultdict(set)
        self._decode = None
        self._encode = None

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            row = self._rows.pop(index, None)
            if row is not None:
                self._ended[row[0]].add(row[1])
        for index, params, _, output_ids in batch_update.added:
            self._rows.pop(index, None)
            extra = params.extra_args if params is not None else None
            config = parse(extra).protocol if extra and WORKER_KEY in extra else None
            if config is not None:
                key = str(extra[GROUP_KEY])
                self._rows[index] = (key, int(extra[WORKER_KEY]), output_ids)
                if key not in self._groups:
                    self._groups[key] = self._protocol(config, params)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self._rows.pop(a, None), self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if row_b is not None and direction.name == "SWAP":
                self._rows[a] = row_b
        live = {group for group, _, _ in self._rows.values()}
        for group in list(self._groups):
            if group not in live:
                del self._groups[group]
                self._ended.pop(group, None)

    def _protocol(self, config: Any, params: Any) -> GroupProtocol:
        if self._decode is None:
            self._decode = runtime.token_texts(self._model_config)
            self._encode = runtime.encoder(self._model_config)
        return GroupProtocol(config, self._encode, self._decode, _stop_tokens(params), params.max_tokens)

    def apply(self, logits: Any) -> Any:
        if not self._rows:
            return logits
        by_group: dict[str, dict[int, int]] = defaultdict(dict)
        for index, (group, worker, _) in self._rows.items():
            by_group[group][worker] = index
        for group, rows in by_group.items():
            protocol = self._groups[group]
            outputs = {w: self._rows[i][2] for w, i in rows.items()}
            wants_stop = 0 in rows and int(logits[rows[0]].argmax()) in protocol.stop_tokens
            actions = protocol.step(outputs, self._ended[group], wants_stop)
            self.worker_steps += len(actions)
            self.forced_steps += sum(action.force is not None for action in actions.values())
            for w, action in actions.items():
                row = logits[rows[w]]
                if action.ban:
                    row[list(action.ban)] = float("-inf")
                keep = action.force if action.force is not None else int(row.argmax()) if action.greedy else None
                if keep is not None:
                    row.fill_(float("-inf"))
                    row[keep] = 0.0
        return logits
