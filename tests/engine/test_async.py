"""Think while answering (``hogwild_async``): the flag, the texts from a chat template, the views,
the writer's pacing, and vLLM held to the recompute oracle (writer and thinker over one cache)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vllm_hogwild import async_prompts
from vllm_hogwild.async_pacing import Pacing
from vllm_hogwild.async_prompts import SECTIONS, THINKER, WRITER, ChatMarkers, chat_markers, texts, view_text
from vllm_hogwild.group import GroupTracker
from vllm_hogwild.layouts import ASYNC_LAYOUT
from vllm_hogwild.params import parse
from vllm_hogwild.steps import BoundaryRule
from vllm_hogwild.worker_requests import spans, stream_starts, worker_prompt

CHATML = ChatMarkers("<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n", "<|im_end|>\n")


# ---------------------------------------------------------------- the flag

@pytest.mark.parametrize("extra, field", [
    ({"hogwild_workers": 3}, "hogwild_workers"),
    ({"hogwild_workers": 2, "hogwild_layout": "combined"}, "hogwild_layout"),
    ({"hogwild_workers": 2, "hogwild_prefixes": ["a", "b"]}, "hogwild_prefixes"),
    ({"hogwild_workers": 2, "hogwild_protocol": True}, "hogwild_protocol"),
    ({"hogwild_workers": 2, "hogwild_async": "maybe"}, "hogwild_async"),
])
def test_a_bad_async_request_names_its_field(extra, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        parse({"hogwild_async": True, **extra})


def test_the_async_flag_chooses_its_layout():
    assert parse({"hogwild_workers": 2, "hogwild_async": True}).is_async
    assert parse({"hogwild_workers": 2, "hogwild_async": True, "hogwild_protocol": False}).layout == ASYNC_LAYOUT
    assert not parse({"hogwild_workers": 2, "hogwild_async": False}).is_async


# ---------------------------------------------------------------- texts from the chat template

def _renderer(template: str):
    from jinja2 import Template

    def render(messages, generation):
        return Template(template).render(messages=messages, add_generation_prompt=generation)

    return render


LLAMA3 = ("<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
          "<|end_header_id|>\n\n{% endif %}")
SYSTEM_CHATML = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nBe brief.<|im_end|>\n{% endif %}"
                 "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_markers_are_read_off_the_template():
    from tests.helpers.tiny_models import CHATML as TEMPLATE

    assert chat_markers(_renderer(TEMPLATE)) == CHATML
    llama = chat_markers(_renderer(LLAMA3))
    assert llama == ChatMarkers("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>",
                                "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>")
    with pytest.raises(ValueError, match="chat template"):
        chat_markers(_renderer("{% for m in messages %}{{ m['content'] }}{% endfor %}"))


def test_a_rendered_chat_keeps_its_conversation_and_a_bare_problem_gets_the_templates_start():
    markers = chat_markers(_renderer(SYSTEM_CHATML))
    chat = _renderer(SYSTEM_CHATML)([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                     {"role": "user", "content": "2+2?"}], True)
    t = texts(markers, chat)
    assert t.conversation == chat[:chat.rfind("2+2?")]
    assert t.sections[WRITER][0].endswith("2+2?<|im_end|>\n") and "2+2?" in t.sections[THINKER][0]
    bare = texts(markers, "2+2?")
    assert bare.conversation == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"


def test_each_view_reads_as_a_chat_of_its_own():
    t = texts(CHATML, "What is 2+2?")
    writer = view_text(t, WRITER, ["The answer is 4.", "2+2 is 4."])
    thinker = view_text(t, THINKER, ["The answer is 4.", "2+2 is 4."])
    # The writer reads the thoughts as the assistant's earlier turn, then answers in a new one.
    assert writer.endswith("<|im_start|>assistant\n" + async_prompts.THOUGHTS_HEADING + "2+2 is 4."
                           + async_prompts.MORE_THOUGHTS + "<|im_end|>\n<|im_start|>assistant\nThe answer is 4.")
    assert writer.count("<|im_start|>user\n") == 1 and writer.count("<|im_end|>") == 2
    # The thinker reads the answer so far as the assistant's earlier turn, then thinks in a new one.
    assert thinker.endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\nThe answer is 4."
                            + async_prompts.ANSWER_GOES_ON + "<|im_end|>\n<|im_start|>assistant\n"
                            + async_prompts.THOUGHTS_HEADING + "2+2 is 4.")
    assert async_prompts.WRITER_INSTRUCTION in writer and async_prompts.THINKER_INSTRUCTION not in writer
    assert async_prompts.THINKER_INSTRUCTION in thinker and async_prompts.WRITER_INSTRUCTION not in thinker


def test_the_async_layout_places_what_the_texts_say():
    """Characters as tokens: every view the tracker gives, written out, is ``view_text`` of the
    streams so far (each worker's request built by the one rule, its sections apart)."""
    t = texts(CHATML, "What is 2+2?")
    prompt = list(t.conversation)
    prefixes = [list("".join(parts)) for parts in t.sections]
    sections = [tuple(zip(SECTIONS, map(len, parts))) for parts in t.sections]
    requests = [worker_prompt(prompt, [], prefixes, w) for w in range(2)]
    tracker = GroupTracker(ASYNC_LAYOUT, BoundaryRule(), len(prompt), stream_starts(len(prompt), [], 2),
                           spans(len(prompt), [], sections, 2))
    streams = ["", ""]
    for writer, thought in [("", ""), ("", "Two"), ("The", " plus two"), (" answer", " is four.")]:
        streams = [streams[0] + writer, streams[1] + thought]
        tokens = [requests[0] + list(streams[0]), requests[1] + list(streams[1])]
        views = tracker.views([len(x) for x in tokens])
        for w in (WRITER, THINKER):
            written = "".join(tokens[f.source][i] for f in views[w] for i in range(f.start, f.end))
            assert written == view_text(t, w, streams)
            offsets = [f.offset for f in views[w]]
            assert offsets == sorted(offsets) and offsets[0] == 0
    # Before it first writes, the writer's request is computed less its last token: its own view
    # stops short of it, and nothing of it is in the thinker's.
    held = tracker.views([len(requests[0]) - 1, len(requests[1])])
    assert sum(f.end - f.start for f in held[WRITER]) == len(view_text(t, WRITER, ["", ""])) - 1
    assert all(f.source == THINKER or f.end <= len(prompt) + len(t.sections[WRITER][0]) for f in held[THINKER])


def test_a_model_without_a_chat_template_is_refused_naming_the_field():
    from vllm_hogwild.hooks.frontend import _async_inputs

    engine = SimpleNamespace(tokenizer=SimpleNamespace(chat_template=None))
    with pytest.raises(ValueError, match="^hogwild_async: the model has no chat template"):
        _async_inputs(engine, [1, 2, 3], lambda text: [])


def test_neither_stream_may_write_its_views_framing_but_each_may_stop():
    from vllm_hogwild.async_bans import StreamBans
    from vllm_hogwild.bans import Bans

    vocabulary = ["[More", " thoughts", " ideas", "<|im_start|>", "<|im_end|>", "x", async_prompts.THOUGHTS_HEADING.strip()]
    bans = StreamBans(Bans(async_prompts.banned_texts(), vocabulary, special=[3, 4]), vocabulary.__getitem__,
                      stop_tokens=[4])
    first = bans.step({WRITER: [], THINKER: [5]})
    assert first[WRITER].ban == first[THINKER].ban == {3, 6}  # another turn's start, the heading; not the stop
    # A note barred by its first words: "[More thoughts will appear below.]" as much as "... above.]".
    assert bans.step({WRITER: [0], THINKER: [5, 5]})[WRITER].ban == {1, 3, 6}
    assert 1 not in bans.step({WRITER: [0, 2], THINKER: [5, 5, 5]})[WRITER].ban


# ---------------------------------------------------------------- pacing

def test_the_writer_waits_for_a_paragraph_of_thoughts_and_after_each_of_its_own():
    pacing = Pacing(BoundaryRule("\n\n", False), lead_tokens=5)
    assert not pacing.update([], [], False)  # it starts waiting
    assert not pacing.update([], ["Let", " me"], False)
    assert pacing.update([], [" see.\n\n"], False)  # a paragraph of thoughts: it writes
    assert pacing.update(["The"], ["More"], False)
    assert not pacing.update([" end.\n\n"], [" thoughts.\n\n"], False)  # its paragraph ended as theirs did
    assert not pacing.update([], ["a", "b", "c", "d"], False)
    assert pacing.update([], ["e"], False)  # lead_tokens thoughts without a paragraph break
    assert not pacing.update(["x\n\n"], [], False)
    assert pacing.update([], [], True)  # the thoughts ended: it writes alone, from now on
    assert pacing.update(["y\n\n"], [], False)


# ---------------------------------------------------------------- vLLM against the oracle

PROBLEM = "Let x be the unknown. Then 2x + 3 = 11."
# A "paragraph" ends at a text each tiny random model writes every few tokens in this run (found by
# running the oracle): its writer waits and writes in turns while its thinker thinks.
MARKERS = {"llama": "l", "qwen3": "t"}


def _flags(family: str) -> dict:
    return {"hogwild_workers": 2, "hogwild_async": True, "hogwild_boundary": MARKERS[family],
            "hogwild_boundary_sentence": False}


def _oracle(family: str, max_tokens: int, stop: set[int], text: str = PROBLEM):
    """The oracle's run of the prompt ``text`` (a bare problem, or a chat the template rendered)."""
    from tests.helpers.engines import decoder, hf_model, tokenizer
    from tests.helpers.oracle import Oracle

    from vllm_hogwild.async_bans import StreamBans
    from vllm_hogwild.bans import Bans, vocabulary_of

    tok = tokenizer(family)
    markers = chat_markers(lambda m, g: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=g))
    t = texts(markers, text)
    parts = [[tok.encode(x, add_special_tokens=False) for x in worker] for worker in t.sections]
    conversation = tok.encode(t.conversation, add_special_tokens=False)
    vocabulary, special = vocabulary_of(tok)
    bans = StreamBans(Bans(async_prompts.banned_texts(), vocabulary, special), decoder(family), stop | {tok.eos_token_id})
    oracle = Oracle(hf_model(family), decoder(family), ASYNC_LAYOUT, BoundaryRule(MARKERS[family], False), conversation,
                    [sum(p, []) for p in parts], max_tokens, stop | {tok.eos_token_id}, protocol=bans,
                    sections=[tuple(zip(SECTIONS, map(len, p))) for p in parts])
    oracle.run()
    oracle.conversation = conversation
    return oracle


@pytest.mark.parametrize("family", sorted(MARKERS))
def test_writer_and_thinker_equal_the_oracle(family):
    """Greedy, float32: each stream's tokens are the oracle's over its own view, logprobs within
    1e-4, with the writer waiting as the pacing says (a writer that never waited, or waited at
    other steps, writes other tokens). Then with a stop token only the writer writes: the writer
    ends there and the thinker ends with it."""
    from vllm import SamplingParams

    from tests.helpers.engines import engine
    from tests.helpers.runs import assert_matches

    llm = engine(family)
    out = llm.generate([PROBLEM], SamplingParams(temperature=0, max_tokens=24, logprobs=3, extra_args=_flags(family)),
                       use_tqdm=False)[0]
    oracle = _oracle(family, 24, set())
    assert list(out.prompt_token_ids) == oracle.conversation
    writer, thinker = oracle.runs
    assert oracle.waits >= 3 and sum(step < thinker.steps[-1] for step in writer.steps) >= 3  # in turns
    assert_matches(out, oracle.runs)

    stop = next(t for t, step in zip(writer.generated, writer.steps) if t not in thinker.generated and step < 20)
    out = llm.generate([PROBLEM], SamplingParams(temperature=0, max_tokens=24, logprobs=3, stop_token_ids=[stop],
                                                 extra_args=_flags(family)), use_tqdm=False)[0]
    stopped = _oracle(family, 24, {stop})
    assert stopped.runs[WRITER].generated[-1] == stop and len(stopped.runs[THINKER].generated) < 24
    assert_matches(out, stopped.runs)
    assert [o.finish_reason for o in out.outputs] == ["stop", "stop"]


def test_a_long_conversation_is_prefilled_in_chunks_by_the_writer_then_both_start():
    """Earlier turns longer than an engine step: the writer (worker 0) prefills the conversation
    in chunks, the thinker joins in the step that computes the rest (the writer's prompt less its
    last token, which waits for it to first write), and both streams are the oracle's. The last
    message, which both workers' first texts hold, must fit the starting step: a 400 naming the
    prompt otherwise."""
    from vllm import SamplingParams

    from tests.helpers.engines import engine, scheduler, tokenizer
    from tests.helpers.runs import assert_matches

    long = " ".join([PROBLEM] * 30)
    messages = [{"role": "user", "content": long}, {"role": "assistant", "content": "x = 4."},
                {"role": "user", "content": "Check it."}]
    # Both instructions are ~600 tokens of the tiny vocabulary: a step of 620 holds them, not the ~550 of
    # the earlier turns as well.
    llm = engine("llama", step_tokens=620)
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=3, extra_args=_flags("llama"))
    out = llm.chat(messages, params, use_tqdm=False)[0]
    chat = tokenizer("llama").apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    oracle = _oracle("llama", 12, set(), chat)
    assert len(out.prompt_token_ids) > 500 and list(out.prompt_token_ids) == oracle.conversation
    assert_matches(out, oracle.runs)
    assert not scheduler(llm).requests
    with pytest.raises(ValueError, match="^prompt: .* shorten that message"):
        llm.chat([{"role": "user", "content": long}], params, use_tqdm=False)


def test_an_abort_while_the_writer_waits_frees_every_block_and_record():
    from vllm import SamplingParams

    from tests.helpers.engines import engine, scheduler
    from vllm_hogwild.hooks import state

    llm = engine("llama")
    sched = scheduler(llm)
    pool = sched.kv_cache_manager.block_pool
    free = pool.get_num_free_blocks()
    params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True,
                            extra_args={"hogwild_workers": 2, "hogwild_async": True})
    llm.llm_engine.add_request("abort-async", PROBLEM, params)
    for _ in range(3):  # the writer waits for 48 thoughts: no paragraph ends in the tiny model's text
        llm.llm_engine.step()
    record = state.of(sched, state.SchedulerState)
    from vllm_hogwild.worker_requests import stamp_of

    writer = next(r for r in sched.requests.values() if stamp_of(r.sampling_params).worker == WRITER)
    assert record.paced and writer.num_computed_tokens == writer.num_prompt_tokens - 1
    llm.llm_engine.abort_request(["abort-async"], internal=False)
    while llm.llm_engine.has_unfinished_requests():
        llm.llm_engine.step()
    assert pool.get_num_free_blocks() == free and not sched.requests
    assert not record.paced and not record.ended and not record.caps
