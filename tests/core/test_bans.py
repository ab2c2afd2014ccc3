"""The bans that keep a worker from writing the view's framing: a banned text never appears in a
sampled text, however the vocabulary splits it, and nothing else is taken away."""

from __future__ import annotations

import random

from vllm_hogwild import prompts
from vllm_hogwild.bans import Bans

NAMES = ["Alice", "Bob", "Carol"]


def vocabulary(rng: random.Random) -> list[str]:
    """Pieces of the banned texts cut at every place, ordinary words and characters."""
    pieces = {"", "<|im_start|>", "<|im_end|>"}
    for text in prompts.banned_texts(NAMES):
        for i in range(len(text)):
            for j in range(i + 1, min(len(text), i + 6) + 1):
                pieces.add(text[i:j])
        pieces.add(" " + text)
    pieces |= {" the", " answer", " is", " 12", ".", "\n\n", "###", " Step", " Past", "**", "Alice", " [", "2", "]:"}
    pieces |= {"".join(rng.choice("abc #*[]<.>") for _ in range(rng.randint(1, 4))) for _ in range(300)}
    return sorted(pieces)


def test_a_banned_text_never_appears_in_a_sampled_text():
    rng = random.Random(0)
    vocab = vocabulary(rng)
    special = [vocab.index("<|im_start|>"), vocab.index("<|im_end|>")]
    bans = Bans(prompts.banned_texts(NAMES), vocab, special)
    banned_texts = prompts.banned_texts(NAMES)
    # A sampler that prefers the pieces of banned texts: every text is tried and refused.
    favoured = [i for i, t in enumerate(vocab) if any(t and t in s for s in banned_texts)]
    for trial in range(200):
        text = ""
        for _ in range(60):
            barred = bans.of(text)
            allowed = [i for i in favoured if i not in barred] or [i for i in range(len(vocab)) if i not in barred]
            token = rng.choice(allowed)
            assert token not in special
            text += vocab[token]
        for s in banned_texts:
            assert s not in text, (s, text)


def test_what_is_not_banned_stays_allowed():
    vocab = ["###", " Past", " steps", " attempts", "**", "Alice", " [", " said", "<", "...", ">", "<|im_end|>"]
    bans = Bans(prompts.banned_texts(NAMES), vocab, [vocab.index("<|im_end|>")])
    # A token that is a heading mark of its own is never sampled; the others are free at the start.
    assert bans.of("") == {vocab.index("<|im_end|>"), vocab.index("###")}
    assert vocab.index(" steps") in bans.of("work.\n\n### Past") and vocab.index(" attempts") not in bans.of("### Past")
    assert vocab.index(" [") in bans.of("as **Alice") and vocab.index(" said") not in bans.of("as **Alice")
    # Only the text's end counts: a banned text already written (forced) bans nothing more.
    assert bans.of("**Alice [2]:** Hi") == bans.always


def test_look_alikes_of_the_framing_are_banned():
    """A heading the view never shows (``### Steps in process``) reads to the others as a section of
    the view; so does a bold speaker (``**Bob:**``). A single ``#`` (a code comment) stays free."""
    vocab = ["#", "##", " Steps", "**", "Bob", ":", "**:", " said", "<|im_end|>"]
    bans = Bans(prompts.banned_texts(NAMES), vocab, [vocab.index("<|im_end|>")])
    assert vocab.index("#") in bans.of("done.\n\n#") and vocab.index("#") not in bans.of("x = 1  ")
    assert vocab.index("##") in bans.always
    assert vocab.index(":") in bans.of("done.\n\n**Bob") and vocab.index(" said") not in bans.of("**Bob")
    assert vocab.index("**:") not in bans.of("Bob")  # "Bob**:" is no speaker's heading
