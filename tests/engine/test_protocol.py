"""The collaboration protocol: its texts, its per-step decisions, and vLLM equal to the oracle."""

from __future__ import annotations

import pytest

from tests.helpers.engines import engine
from tests.helpers.runs import PROBLEM, assert_matches, protocol_flags, protocol_oracle, protocol_run
from vllm_hogwild import prompts
from vllm_hogwild.params import parse
from vllm_hogwild.protocol import Action, GroupProtocol, ProtocolConfig
from vllm_hogwild.steps import BoundaryRule


# ---------------------------------------------------------------- texts


def test_prompt_wraps_a_bare_problem_in_the_preset():
    text = prompts.prompt_text(prompts.PRESETS["chatml"], "combined", ["Ann", "Ben"], "What is 2+2?")
    assert text.startswith("<|im_start|>user\nYou are 2 assistants, Ann and Ben,")
    assert "follow Ann's plan" in text and '"### Steps in progress"' in text
    assert text.endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n" + prompts.PAST_STEPS)


def test_prompt_goes_into_the_last_user_turn_of_a_rendered_chat():
    chat = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n")
    text = prompts.prompt_text(prompts.PRESETS["chatml"], "interleaved", ["A", "B", "C"], chat)
    head, last = text.rsplit("<|im_start|>user\n", 1)
    assert head == chat.rsplit("<|im_start|>user\n", 1)[0]
    assert last.startswith("You are 3 assistants, A, B and C,") and "What is 2+2?<|im_end|>" in last
    assert text.endswith("<|im_start|>assistant\n" + prompts.PAST_STEPS)


@pytest.mark.parametrize("layout,blocks", [
    ("combined", ["others", "marker", "own"]), ("interleaved", ["own"]),
    ("contiguous", ["workspace:0", "workspace:1", "workspace:2"]),
])
def test_framing_blocks_match_the_layout(layout, blocks):
    framing = prompts.framing(layout, ["A", "B", "C"])
    assert [name for name, _ in framing] == blocks
    text = prompts.prompt_text(prompts.PRESETS["plain"], layout, ["A", "B", "C"], "P")
    assert text.endswith("P\n\n" + ("" if layout == "contiguous" else prompts.PAST_STEPS))


def test_presets_are_data_and_auto_picks_by_model():
    vocab = {"<|im_start|>"}
    assert prompts.auto_preset("qwen3", vocab.__contains__) == "qwen3-thinking"
    assert prompts.auto_preset("llama", vocab.__contains__) == "chatml"  # SmolLM2
    assert prompts.auto_preset("llama", {"<|start_header_id|>"}.__contains__) == "llama3"
    assert prompts.auto_preset("llama", set().__contains__) == "plain"
    assert prompts.PRESETS["qwen3-thinking"].assistant_open.endswith("<think>\n")


def test_one_worker_instruction_and_headers():
    assert prompts.instruction("interleaved", ["Solo"]).startswith("You are Solo, solving a problem")
    # One worker has no others' steps in progress: combined frames like interleaved.
    assert prompts.framing("combined", ["Solo"]) == prompts.framing("interleaved", ["Solo"])
    assert "Steps in progress" not in prompts.instruction("combined", ["Solo"])
    assert "together" not in prompts.instruction("combined", ["Solo"])  # one worker has no one to split with
    assert "How to work together" in prompts.instruction("combined", ["Ann", "Ben"])
    assert prompts.first_step(["Ann"], 0) == "**Ann [1]:**" + prompts.OPENINGS["alone"]
    assert prompts.first_step(["Ann", "Ben", "Cy"], 0) == "**Ann [1]:**" + prompts.OPENINGS["first"]
    assert prompts.first_step(["Ann", "Ben", "Cy"], 2) == "**Cy [1]:**" + prompts.OPENINGS["other"]
    assert "split" not in prompts.OPENINGS["alone"] and "others" not in prompts.OPENINGS["alone"]
    assert prompts.step_header("Ann", 7) == "**Ann [7]:**"


@pytest.mark.parametrize("text,answer", [
    ("blah" + prompts.CLOSING + "42} and more", "42"),
    ("x" + prompts.CLOSING + "\\frac{1}{2}}", "\\frac{1}{2}"),
    ("x" + prompts.CLOSING + "12", "12"),  # answer budget ran out before the brace
    ("no closing here \\boxed{3}", None),
])
def test_final_answer(text, answer):
    assert prompts.final_answer(text) == answer


def test_boxed_finds_the_last_complete_box():
    assert prompts.boxed("a \\boxed{1} b \\boxed{x^{2}} c \\boxed{unfinished") == "x^{2}"
    assert prompts.boxed("\\boxed{") is None


def test_protocol_flags():
    hog = parse({"hogwild_workers": 2, "hogwild_protocol": "true", "hogwild_check_tokens": "0",
                 "hogwild_names": ["Ann", "Ben"], "hogwild_preset": "chatml", "hogwild_answer_tokens": 8})
    assert hog.protocol == ProtocolConfig(("Ann", "Ben"), BoundaryRule(), 0, 8) and hog.preset == "chatml"
    assert parse({"hogwild_workers": 3, "hogwild_protocol": True}).protocol.names == ("Alice", "Bob", "Carol")
    assert parse({"hogwild_workers": 3}).protocol is None


@pytest.mark.parametrize("args,match", [
    ({"hogwild_names": ["A", "B"]}, "hogwild_names: only with hogwild_protocol=true"),
    ({"hogwild_protocol": 1, "hogwild_names": ["A"]}, "hogwild_names: expected 2 strings"),
    ({"hogwild_protocol": 1, "hogwild_names": ["A", "A"]}, "hogwild_names: expected 2 distinct"),
    ({"hogwild_protocol": 1, "hogwild_preset": "vicuna"}, "hogwild_preset: got 'vicuna'; allowed: auto, plain"),
    ({"hogwild_protocol": 1, "hogwild_check_tokens": -1}, "hogwild_check_tokens: expected an int"),
    ({"hogwild_protocol": 1, "hogwild_answer_tokens": 0}, r"hogwild_answer_tokens: expected an int in 1\.\.256"),
    ({"hogwild_protocol": 1, "hogwild_prefixes": ["a", "b"]}, "hogwild_prefixes: not with hogwild_protocol"),
    ({"hogwild_protocol": 1, "hogwild_repeat_tokens": 1}, r"hogwild_repeat_tokens: expected 0 or an int in 2\.\.4096"),
    ({"hogwild_protocol": 1, "hogwild_repeat_tokens": "many"}, r"hogwild_repeat_tokens: expected an int"),
    ({"hogwild_protocol": "sometimes"}, "hogwild_protocol: expected a bool"),
])
def test_bad_protocol_flags(args, match):
    with pytest.raises(ValueError, match=match):
        parse({"hogwild_workers": 2, **args})


# ---------------------------------------------------------------- decisions, on scripted streams

# A toy vocabulary: one character per token; encode spells a text out.
STOP = 0
VOCAB = ["<stop>"] + [chr(c) for c in range(32, 127)] + ["\n"]
ID = {t: i for i, t in enumerate(VOCAB)}


def encode(text: str) -> list[int]:
    return [ID[c] for c in text]


def decode(token: int) -> str:
    return VOCAB[token]


def protocol(workers=2, check=0, answer=4, max_tokens=400, whole_texts=False, repeat=0) -> GroupProtocol:
    """One token per step unless ``whole_texts``: the decisions below are stated step by step.
    ``repeat``: the repeat guard's run length (off unless given: the scripts repeat their steps)."""
    config = ProtocolConfig(prompts.NAMES[:workers], BoundaryRule("\n\n", True), check, answer, repeat)
    return GroupProtocol(config, encode, decode, {STOP}, max_tokens, whole_texts=whole_texts)


class Script:
    """Drives a GroupProtocol as the engine does: free tokens come from each worker's script."""

    def __init__(self, proto: GroupProtocol, scripts: dict[int, str], answer: str = "7") -> None:
        self.proto, self.scripts = proto, {w: encode(s) for w, s in scripts.items()}
        self.answer, self.greedy = encode(answer), 0
        self.cursor = {w: 0 for w in scripts}
        self.outputs = {w: [] for w in scripts}
        self.ended: set[int] = set()
        self.steps = 0

    def run(self, steps: int, wants_stop_at: int = -1) -> None:
        for step in range(steps):
            running = {w: o for w, o in self.outputs.items() if w not in self.ended}
            if not running:
                return
            self.steps += 1
            actions = self.proto.step(running, self.ended, wants_stop=step == wants_stop_at)
            for w, action in actions.items():
                out = self.outputs[w]
                if action.force is not None:
                    token = action.force
                else:
                    script = self.scripts[w]
                    free = [t for t in script if t not in action.ban] or [ID["?"]]
                    token = free[self.cursor[w] % len(free)]
                    self.cursor[w] += 1
                    if action.greedy:
                        token, self.greedy = self.answer[self.greedy % len(self.answer)], self.greedy + 1
                out.append(token)
                out.extend(action.then)  # a forced text's other tokens, in the same step
                if token == STOP:
                    self.ended.add(w)

    def text(self, w: int) -> str:
        return "".join(decode(t) for t in self.outputs[w] if t != STOP)


def test_step_headers_follow_each_finished_step():
    s = Script(protocol(), {0: "We add.\n\n" * 3, 1: "I check.\n\n" * 3})
    s.run(60)
    assert s.text(0).startswith("We add.\n\n**Alice [2]:**We add.\n\n**Alice [3]:**")
    assert s.text(1).startswith("I check.\n\n**Bob [2]:**I check.\n\n**Bob [3]:**")


def test_a_worker_never_copies_a_finished_step():
    """With runs of 4 barred, a worker whose script repeats its step writes each step once, word
    for word, then is steered off the copy at its 4th token (here onto '?', the script's next
    choice being banned); the other worker's finished step is barred to it too."""
    s = Script(protocol(repeat=4), {0: "We add.\n\n" * 3, 1: "I check.\n\n" * 3})
    s.run(40)
    first, second = s.text(0).split("**Alice [2]:**")[:2]
    assert first == "We add.\n\n" and not second.startswith("We add")
    assert second.startswith("We ") and "We add" not in second
    assert "I check." not in s.text(1).split("**Bob [2]:**")[1]
    guarded = Script(protocol(repeat=4), {0: "We add.\n\n" * 2, 1: "We add.\n\n" * 2})
    guarded.run(40)
    assert guarded.text(0).count("We add.") + guarded.text(1).count("We add.") <= 2


def test_a_forced_text_is_written_in_one_step():
    one, whole = (Script(protocol(whole_texts=w), {0: "We add.\n\n" * 3, 1: "I check.\n\n" * 3}) for w in (False, True))
    for s in (one, whole):
        while not s.text(0).endswith("**Alice [5]:**"):  # Alice's first 4 headers, written
            s.run(1)
    assert whole.text(0) == one.text(0)  # the same text
    assert whole.text(0).startswith("We add.\n\n**Alice [2]:**We add.\n\n**Alice [3]:**")
    header = encode("**Alice [2]:**")
    assert one.steps - whole.steps == 4 * (len(header) - 1)  # a header costs one step, not one per token
    proto = protocol(whole_texts=True)
    actions = proto.step({0: encode("We add.\n\n"), 1: encode("I")})  # Alice's step ends: her header is due
    assert actions[0] == Action(force=header[0], then=tuple(header[1:])) and actions[1] == Action(ban=frozenset({STOP}))


def test_a_header_never_eats_into_the_answer_reserve():
    """Worker 0's queued header counts as written: where it would cross into the reserve,
    the answer starts instead, so the closing sentence and the answer always fit."""
    reserve = GroupProtocol.reserve(protocol().config, len(encode(prompts.CLOSING)))
    for whole in (False, True):
        for budget in range(reserve + 8, reserve + 24):
            s = Script(protocol(max_tokens=budget, answer=3, whole_texts=whole), {0: "Go.\n\n", 1: "b"})
            s.run(400)
            assert s.text(0).endswith(prompts.CLOSING + "777") and len(s.outputs[0]) <= budget, (whole, budget)


def test_no_header_where_the_boundary_is_not_a_sentence_end():
    s = Script(protocol(), {0: "x = 1\n\n", 1: "no"})
    s.run(12)
    assert "**Alice" not in s.text(0)


def test_redundancy_question_after_the_threshold_then_again():
    s = Script(protocol(check=20), {0: "One two three.\n\n", 1: "b"})
    s.run(300)
    text = s.text(0)
    first = text.index(prompts.REDUNDANCY_CHECK)
    assert text[:first].endswith("**Alice [3]:**")  # 32 tokens after steps 1-2: over 20
    assert text.count(prompts.REDUNDANCY_CHECK) >= 2
    assert "**Bob" not in s.text(1)  # Bob's stream has no step end


def test_budget_forces_the_closing_and_a_greedy_answer():
    proto = protocol(max_tokens=120, answer=3)
    s = Script(proto, {0: "ab", 1: "cd"})
    s.run(200)
    text = s.text(0)
    reserve = GroupProtocol.reserve(proto.config, len(encode(prompts.CLOSING)))
    assert text == ("ab" * 60)[:120 - reserve] + prompts.CLOSING + "777"
    assert s.outputs[0][-1] == STOP and len(s.outputs[0]) <= 120
    assert s.outputs[1][-1] == STOP and len(s.outputs[1]) == 120 - reserve + 1
    assert prompts.final_answer(text) == "777"


def test_answer_stops_when_its_brace_closes():
    s = Script(protocol(answer=8), {0: "ab.\n\n", 1: "cd"}, answer="4}")
    s.run(200, wants_stop_at=19)  # Alice's step 1 ended at her 5th token, her header took 14 more
    assert s.text(0) == "ab.\n\n**Alice [2]:**" + prompts.CLOSING + "4}"
    assert prompts.final_answer(s.text(0)) == "4"


def test_a_worker_that_ends_starts_the_answer_and_stops_the_others():
    s = Script(protocol(workers=3), {0: "ab", 1: "cd", 2: "ef"})
    s.run(4)
    s.outputs[2].append(STOP)
    s.ended.add(2)  # Carol ends: aborted, or at her own token limit
    s.run(200)
    assert s.outputs[1][-1] == STOP and len(s.outputs[1]) == 5
    assert prompts.final_answer(s.text(0)) == "7777"


def test_no_worker_stops_on_its_own_and_worker_zeros_wish_starts_the_answer_after_its_first_step():
    """An instruct model's end of turn right after the forced opening must not end the group:
    every worker's stop tokens are banned, and worker 0's wish to stop is heard only once it
    has finished a step."""
    proto = protocol()
    outputs = {0: encode("ab"), 1: encode("cd")}
    stop_banned = Action(ban=frozenset({STOP}))
    assert proto.step(outputs, set(), False) == {0: stop_banned, 1: stop_banned}
    assert proto.step(outputs, set(), wants_stop=True) == {0: stop_banned, 1: stop_banned}
    s = Script(protocol(), {0: "ab.\n\n", 1: "cd"})
    s.run(200, wants_stop_at=19)  # after her step 1 (5 tokens) and header (14): now her wish counts
    assert s.text(0) == "ab.\n\n**Alice [2]:**" + prompts.CLOSING + "7777"
    assert s.outputs[1][-1] == STOP and STOP not in s.outputs[1][:-1]


def test_a_boxed_answer_in_a_finished_step_starts_the_answer():
    s = Script(protocol(), {0: "Go.\n\n", 1: "So x is \\boxed{4}.\n\n"})
    s.run(200)
    # Bob's step ends with his 20th token; the next step, Alice answers and Bob stops.
    assert s.text(0).startswith("Go.\n\n**Alice [2]:**G" + prompts.CLOSING)
    assert s.text(0).endswith(prompts.CLOSING + "7777")
    assert s.text(1) == "So x is \\boxed{4}.\n\n" and s.outputs[1][-1] == STOP


def test_worker_zero_aborted_stops_the_others_without_answer():
    proto = protocol()
    assert proto.step({1: encode("cd")}, {0}, False) == {1: Action(force=STOP)}


# ---------------------------------------------------------------- in vLLM, against the oracle

@pytest.mark.parametrize("family,layout,workers,headers,checks", [
    ("llama", "combined", 3, True, True), ("qwen3", "interleaved", 2, True, False),
    ("qwen2", "contiguous", 2, True, False), ("llama3-scaled", "combined", 2, False, False),
    ("qwen3", "contiguous", 3, True, True), ("qwen3", "combined", 1, True, False),
])
def test_protocol_in_vllm_equals_the_oracle(family, layout, workers, headers, checks):
    """Forced texts written whole, one step each. Which texts a random model's run comes to
    (a second step's header, a redundancy question) is the oracle's business: the flags say
    which cases show them, so that each appears in some run."""
    out, runs = protocol_run(family, workers, layout)
    assert_matches(out, runs)
    texts = [o.text for o in out.outputs]
    answer = prompts.final_answer(texts[0])
    assert answer is not None and out.hogwild_final_answer == answer
    # A worker whose forced texts (whole, one step each) use up its max_tokens ends at it.
    assert all(o.finish_reason == "stop" or len(o.token_ids) == 80 for o in out.outputs)
    names = [f"**{n} [2]:**" for n in prompts.NAMES[:workers]]
    assert any(h in t for h, t in zip(names, texts)) == headers, texts
    assert any("Quick check:" in t for t in texts) == checks, texts


@pytest.mark.parametrize("family,layout,workers", [("llama", "combined", 3), ("qwen2", "interleaved", 2)])
def test_with_logprobs_forced_tokens_come_one_per_step(family, layout, workers):
    """Logprobs are per token: a request that asks for them gets one forced token per step."""
    out, runs = protocol_run(family, workers, layout, logprobs=3)
    assert_matches(out, runs)
    assert all(len(o.logprobs) == len(o.token_ids) for o in out.outputs)


@pytest.mark.parametrize("family,layout,workers", [("llama", "combined", 3), ("qwen3", "contiguous", 3)])
def test_each_forced_text_costs_one_engine_step(family, layout, workers):
    """vLLM takes as many engine steps as the oracle, which writes each forced text in one
    step: fewer than one token per step by the forced texts' length."""
    from vllm import SamplingParams

    llm = engine(family).llm_engine
    llm.add_request("steps", PROBLEM, SamplingParams(temperature=0, max_tokens=80,
                                                     extra_args=protocol_flags(workers, layout)))
    steps, tokens = 0, {}
    while llm.has_unfinished_requests():
        for out in llm.step():
            tokens.update({o.index: list(o.token_ids) for o in out.outputs})
        steps += 1
    _, whole = protocol_oracle(family, workers, layout, 80)
    _, single = protocol_oracle(family, workers, layout, 80, whole_texts=False)
    assert [tokens[w] for w in range(workers)] == [r.generated for r in whole.runs]
    assert steps == whole.steps < single.steps - 10, (steps, whole.steps, single.steps)
