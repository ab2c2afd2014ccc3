"""benchmarks/common/transcripts.py: what a group's workers did, read from hand-written transcripts."""


from benchmarks.common import transcripts  # noqa: E402
from vllm_hogwild import prompts  # noqa: E402

NAMES = ["Alice", "Bob"]
PROBLEM = "Janet has 16 eggs. She eats 3 and sells the rest at $2 each. How much does she make?"


def worker(w: int, *steps: str, final: str = "") -> str:
    """A worker's output as the protocol writes it: forced first step, headers, then the closing."""
    name = NAMES[w]
    text = prompts.first_step(NAMES, w) + " " + steps[0]
    for i, step in enumerate(steps[1:], start=2):
        text += "\n\n" + prompts.step_header(name, i) + " " + step
    return text + (prompts.CLOSING + final + "}" if final else "")


def test_numbers_are_plain_decimals():
    assert transcripts.numbers("1,200 and 1200.0 and 3.50, then -2") == {"1200", "3.5", "-2"}


def test_steps_drop_headers_forced_openings_and_the_closing():
    text = worker(0, "I take the eggs left.", "16 - 3 = 13.", final="26")
    steps = transcripts.steps_of(text, NAMES, 0)
    assert [s.text for s in steps] == ["I take the eggs left.", "16 - 3 = 13."]
    # The clock counts sampled characters only: a forced text takes one step, whatever its length.
    assert (steps[1].start, steps[1].end) == (len(steps[0].text), len(steps[0].text) + len("16 - 3 = 13."))


def test_a_step_that_redoes_a_finished_result_is_a_duplicate():
    alice = worker(0, "Eggs left: 16 - 3 = 13.", "Money: 13 * 2 = 26.")
    bob = worker(1, "Hmm, let me look at it from the start again, slowly.", "Eggs left: 16 - 3 = 13.")
    r = transcripts.read([alice, bob], NAMES, PROBLEM)
    assert r.steps == 4
    assert r.empty == 1  # Bob's first step derives nothing
    assert r.duplicates == 1  # Bob's 13, after Alice's first step ended
    assert (r.results, r.shared) == (2, 1)  # 13 (both) and 26 (Alice)


def test_the_same_result_written_at_the_same_time_is_no_duplicate():
    alice = worker(0, "Eggs left: 16 - 3 = 13.")
    bob = worker(1, "Eggs left: 16 - 3 = 13.")
    r = transcripts.read([alice, bob], NAMES, PROBLEM)
    assert r.duplicates == 0 and r.shared == 1


def test_naming_another_worker_is_a_reaction_and_its_words_a_copy():
    alice = worker(0, "She sells the rest of the eggs at two dollars each, so 26.")
    bob = worker(1, "A long opening step that takes a while to write out in full here.",
                 "Alice is right: she sells the rest of the eggs at two dollars each, so 26.")
    r = transcripts.read([alice, bob], NAMES, PROBLEM)
    assert r.reacts == 1
    assert r.copies == 1


def test_redundancy_answers_are_counted():
    bob = worker(1, "13 eggs." + prompts.REDUNDANCY_CHECK + " yes", "I'll check 26 instead."
                 + prompts.REDUNDANCY_CHECK + " No")
    r = transcripts.read([worker(0, "Plan: eggs then money."), bob], NAMES, PROBLEM)
    assert r.checks == {"yes": 1, "no": 1}


def test_summary_adds_groups_up():
    a = transcripts.Reading(steps=4, empty=2, duplicates=1, results=2, shared=1, checks={"yes": 1})
    b = transcripts.Reading(steps=2, results=2, shared=0, checks={"yes": 2, "no": 1})
    s = transcripts.summary([a, b])
    assert (s["groups"], s["steps"], s["empty"], s["duplicates"], s["shared_share"]) == (2, 6, 2, 1, 0.25)
    assert s["checks"] == {"yes": 3, "no": 1}
