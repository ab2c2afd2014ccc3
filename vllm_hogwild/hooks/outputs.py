"""Outputs: the group's final answer on RequestOutput and on HTTP responses; W choices when streaming.

Patches ``OutputProcessor.add_request``, ``RequestState.make_request_output``,
``OpenAIServingCompletion.request_output_to_completion_response``,
``OpenAIServingCompletion.completion_stream_generator``, ``OpenAIServingCompletion.create_completion``,
``OpenAIServingChat.chat_completion_full_generator``, ``OpenAIServingChat.chat_completion_stream_generator``
and ``OpenAIServingChat.create_chat_completion``.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from vllm_hogwild import prompts
from vllm_hogwild.hooks.frontend import check_n
from vllm_hogwild.hooks.patching import wrap
from vllm_hogwild.params import field_of, is_hogwild, parse
from vllm_hogwild.worker_requests import stamp_of

def _protocol_on(params: Any) -> bool:
    stamp = stamp_of(params)
    return stamp is not None and stamp.hog.protocol is not None


def install() -> None:
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

    wrap(OutputProcessor, "add_request", add_request)
    wrap(RequestState, "make_request_output", make_request_output)
    wrap(OpenAIServingCompletion, "request_output_to_completion_response", completion_response)
    wrap(OpenAIServingChat, "chat_completion_full_generator", chat_full)
    wrap(OpenAIServingCompletion, "completion_stream_generator", lambda f: stream(f, "text_completion"))
    wrap(OpenAIServingChat, "chat_completion_stream_generator", lambda f: stream(f, "chat.completion.chunk"))

    def create(original):
        # A bad flag is a 400 before anything starts, streaming included.
        async def wrapper(self, request, *args, **kwargs):
            extra = getattr(request, "vllm_xargs", None)
            if is_hogwild(extra):
                try:
                    check_n(parse(extra).workers, request.n or 1)
                except ValueError as error:
                    return self.create_error_response(str(error), param=field_of(error))
            return await original(self, request, *args, **kwargs)

        return wrapper

    wrap(OpenAIServingCompletion, "create_completion", create)
    wrap(OpenAIServingChat, "create_chat_completion", create)


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
