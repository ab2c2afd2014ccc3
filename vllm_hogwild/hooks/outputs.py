"""Outputs: each worker's text starts with its first text, and the group's final answer rides
on every RequestOutput of the group.

Patches ``OutputProcessor.add_request`` and ``RequestState.make_request_output``.

A worker's first text (its ``hogwild_prefixes`` entry, or the protocol's step-1 header and
greeting) is the end of its request's prompt, so vLLM's detokenizer would start the worker's
text after it. The hook starts the detokenizer's text with it instead: every
``CompletionOutput.text`` (cumulative, or the first delta of a stream) and so every HTTP
choice and the live view's columns read the worker's whole stream. ``token_ids`` stay what
the worker generated.

The answer is parsed from worker 0's text when it ends (``prompts.final_answer``) and set as
``RequestOutput.hogwild_final_answer`` from then on; ``serving.py`` puts it on HTTP responses.

``RequestOutput.num_cached_tokens`` of a group is worker 0's: the group's prompt tokens read
from the prefix cache (``kv_cache.py``; vLLM's merge of the fan-out would carry whichever
worker's came last, and the others never read the cache). HTTP usage reports it as
``cached_tokens``.
"""

from __future__ import annotations

from typing import Any

from vllm_hogwild import prompts
from vllm_hogwild.hooks.patching import wrap
from vllm_hogwild.worker_requests import stamp_of


def install() -> None:
    from vllm.v1.engine.output_processor import OutputProcessor, RequestState

    wrap(OutputProcessor, "add_request", _add_request)
    wrap(RequestState, "make_request_output", _make_request_output)


def _protocol_on(params: Any) -> bool:
    stamp = stamp_of(params)
    return stamp is not None and stamp.flag.protocol is not None


def _add_request(original):
    def wrapper(self, request, *args, **kwargs):
        original(self, request, *args, **kwargs)
        state = self.request_states.get(request.request_id)
        if state is None:
            return
        state.hogwild_protocol = _protocol_on(request.sampling_params)
        stamp = stamp_of(request.sampling_params)
        state.hogwild_worker = stamp is not None
        detokenizer = getattr(state, "detokenizer", None)
        if stamp is not None and self.tokenizer is not None and hasattr(detokenizer, "output_text"):
            first = stamp.prefix_ids[stamp.worker]
            if first and not stamp.flag.is_async:  # (think while answering: only what each writes)
                skip = request.sampling_params.skip_special_tokens
                detokenizer.output_text = self.tokenizer.decode(list(first), skip_special_tokens=skip)

    return wrapper


def _make_request_output(original):
    def wrapper(self, new_token_ids, pooling_output, finish_reason, *args, **kwargs):
        group = self.parent_req if self.parent_req is not None else self  # W=1: no fan-out
        if self.request_index == 0 and self.parent_req is not None and getattr(self, "hogwild_worker", False):
            group.hogwild_cached_tokens = self.num_cached_tokens  # the group's prompt hit
        if (finish_reason is not None and self.request_index == 0 and self.detokenizer is not None
                and getattr(self, "hogwild_protocol", False)):
            group.hogwild_final_answer = prompts.final_answer(self.detokenizer.output_text)
        output = original(self, new_token_ids, pooling_output, finish_reason, *args, **kwargs)
        if output is not None and hasattr(group, "hogwild_final_answer"):
            output.hogwild_final_answer = group.hogwild_final_answer
        if output is not None and hasattr(group, "hogwild_cached_tokens"):
            output.num_cached_tokens = group.hogwild_cached_tokens
        return output

    return wrapper
