"""HTTP: W choices per hogwild request, the final answers on responses, bad flags as 400s.

Patches ``OpenAIServingCompletion.create_completion``,
``OpenAIServingCompletion.request_output_to_completion_response``,
``OpenAIServingCompletion.completion_stream_generator``, ``OpenAIServingChat.create_chat_completion``,
``OpenAIServingChat.chat_completion_full_generator`` and
``OpenAIServingChat.chat_completion_stream_generator``.

Responses carry ``"hogwild": {"final_answers": [...]}`` (one per prompt); a stream sends it as
one more chunk (no choices) before ``[DONE]``.

Think while answering (``hogwild_async``) answers a chat as a reasoning model does: ONE choice,
its ``content`` the writer's answer and its ``reasoning`` (vLLM's field for reasoning models)
the thinker's thoughts; a stream sends the thoughts as ``reasoning`` deltas of choice 0 as they
are written, and the answer's pauses are the stream's. Usage counts both. (``/v1/completions``
has no reasoning field: there the answer is choice 0 and the thoughts choice 1.)
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from vllm_hogwild.hooks.frontend import check_request
from vllm_hogwild.hooks.patching import wrap
from vllm_hogwild.params import field_of, is_hogwild, parse


def install() -> None:
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion

    wrap(OpenAIServingCompletion, "create_completion", _create)
    wrap(OpenAIServingChat, "create_chat_completion", _create)
    wrap(OpenAIServingCompletion, "request_output_to_completion_response", _completion_response)
    wrap(OpenAIServingChat, "chat_completion_full_generator", _chat_full)
    wrap(OpenAIServingCompletion, "completion_stream_generator", lambda f: _stream(f, "text_completion"))
    wrap(OpenAIServingChat, "chat_completion_stream_generator", lambda f: _stream(f, "chat.completion.chunk"))


def _create(original):
    # A bad flag, or an engine setting hogwild cannot run, is a 400 before anything starts,
    # streaming included.
    async def wrapper(self, request, *args, **kwargs):
        extra = getattr(request, "vllm_xargs", None)
        if is_hogwild(extra):
            try:
                check_request(self.engine_client.vllm_config, extra, request.n or 1)
            except ValueError as error:
                return self.create_error_response(str(error), param=field_of(error))
        return await original(self, request, *args, **kwargs)

    return wrapper


def _completion_response(original):
    def wrapper(self, final_res_batch, *args, **kwargs):
        return _with_answers(original(self, final_res_batch, *args, **kwargs), final_res_batch)

    return wrapper


def _chat_full(original):
    async def wrapper(self, request, result_generator, *args, **kwargs):
        seen: list[Any] = []

        async def tap():
            async for res in result_generator:
                seen.append(res)
                yield res

        response = await original(self, request, tap(), *args, **kwargs)
        if _is_async(request) and hasattr(response, "choices") and len(response.choices) == 2:
            answer, thoughts = response.choices
            answer.message.reasoning = thoughts.message.content
            response.choices = [answer]
        return _with_answers(response, seen[-1:])

    return wrapper


def _is_async(request: Any) -> bool:
    extra = getattr(request, "vllm_xargs", None)
    if not is_hogwild(extra):
        return False
    try:
        return parse(extra).is_async
    except ValueError:
        return False


def _as_reasoning(chunk: str) -> str | None:
    """A think-while-answering chat stream's chunk with choice 1 (the thoughts) as ``reasoning``
    deltas of choice 0 (None: nothing of it is left to send)."""
    if not chunk.startswith("data: {"):
        return chunk
    data = json.loads(chunk[len("data: "):])
    choices = []
    for choice in data.get("choices", []):
        if choice.get("index") != 1:
            choices.append(choice)
            continue
        text = (choice.get("delta") or {}).get("content")
        if text:  # the thoughts' role, logprobs and finish are not the answer's
            choices.append({"index": 0, "delta": {"reasoning": text}, "logprobs": None, "finish_reason": None})
    if not choices and data.get("choices"):
        return None
    data["choices"] = choices
    return f"data: {json.dumps(data)}\n\n"


def _stream(original, chunk_object: str):
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

        reasoning = chunk_object == "chat.completion.chunk" and _is_async(request)

        async def chunks():
            async for chunk in original(*bound.args, **bound.kwargs):
                if reasoning and (chunk := _as_reasoning(chunk)) is None:
                    continue
                if chunk.startswith("data: [DONE]") and answers:
                    final = {"id": bound.arguments["request_id"], "object": chunk_object, "choices": [],
                             "hogwild": {"final_answers": [answers.get(i) for i in range(max(answers) + 1)]}}
                    yield f"data: {json.dumps(final)}\n\n"
                yield chunk

        return chunks()

    return wrapper


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
