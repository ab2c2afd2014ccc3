"""Every text the collaboration protocol writes (docs/design.md, section 6), in one place.

Our own wording of what the paper's authors did: one instruction before the problem,
headings that frame each layout's sections, a header before every step of a worker
(the first one with an opening that invites planning), a redundancy question, and a
closing sentence that forces a ``\\boxed{`` answer. Chat formats are data (``PRESETS``),
not branches. Pure Python: no tokenizer, no vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

NAMES = ("Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi",
         "Ivan", "Judy", "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil")


@dataclass(frozen=True)
class Preset:
    """How a model's chat format wraps the user turn and opens the assistant's turn.

    ``special_tokens``: let the tokenizer add its own (BOS) when encoding the prompt;
    the chat presets spell out every special token themselves.
    """

    user_open: str
    user_close: str
    assistant_open: str
    special_tokens: bool = False


PRESETS = {
    "plain": Preset("", "\n\n", "", special_tokens=True),
    "chatml": Preset("<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n"),
    "qwen3-thinking": Preset("<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n<think>\n"),
    "llama3": Preset("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>",
                     "<|start_header_id|>assistant<|end_header_id|>\n\n"),
}

# "auto": the first row whose model type (None: any) and marker token both match.
AUTO_PRESETS = (
    ("qwen3", "<|im_start|>", "qwen3-thinking"),
    (None, "<|im_start|>", "chatml"),
    (None, "<|start_header_id|>", "llama3"),
)


def auto_preset(model_type: str, has_token) -> str:
    """The preset for a model, from its ``model_type`` and its tokenizer's special tokens."""
    for kind, marker, preset in AUTO_PRESETS:
        if kind in (None, model_type) and has_token(marker):
            return preset
    return "plain"


# Layout framing: the heading that ends the prompt, then the blocks the layout places.
PAST_STEPS = "### Past steps\n\n"
FRAMING = {
    "combined": [("others", "### Steps in progress\n\n"), ("marker", "\n\n"),
                 ("own", "### My step in progress\n\n")],
    "interleaved": [("own", "### My step in progress\n\n")],
}
LAYOUT_GUIDE = {
    "combined": (
        'Under "### Past steps" you see everyone\'s finished steps, in the order they were finished. '
        'Under "### Steps in progress" you see the step each of the others is writing right now, '
        'cut off where they are now; your own unfinished step comes last, under "### My step in progress".'
    ),
    "interleaved": (
        'Under "### Past steps" you see everyone\'s finished steps, in the order they were finished; '
        'your own unfinished step comes last, under "### My step in progress".'
    ),
    "contiguous": (
        "Each of you writes in a workspace of your own, headed with your name. The others' "
        "workspaces come first and yours comes last; they keep growing while you read them."
    ),
}


def workspace_heading(name: str) -> str:
    return f"# {name}'s workspace\n\n"


def _shown(layout: str, names: list[str]) -> str:
    """The layout whose sections a view shows: one worker has no others' steps in progress."""
    return "interleaved" if layout == "combined" and len(names) == 1 else layout


def framing(layout: str, names: list[str]) -> list[tuple[str, str]]:
    """The framing blocks (layout block name, text) that follow the prompt in worker 0's
    request; every one of them is in worker 0's view."""
    if layout == "contiguous":
        return [(f"workspace:{w}", workspace_heading(n)) for w, n in enumerate(names)]
    return list(FRAMING[_shown(layout, names)])


def instruction(layout: str, names: list[str]) -> str:
    """What every worker reads before the problem."""
    if len(names) == 1:
        who = f"You are {names[0]}, solving a problem step by step."
    else:
        who = (f"You are {len(names)} assistants, {', '.join(names[:-1])} and {names[-1]}, "
               "solving one problem together. You all write at the same time, and each of you "
               "sees what the others write the moment it is written.")
    together = "" if len(names) == 1 else (
        "How to work together: first agree on a plan and split the work. Try different approaches "
        "in parallel, tell the others what you find, and react to what they write. If someone finds "
        f"a mistake or a better way, change course. When you disagree, follow {names[0]}'s plan. If "
        "you notice that you are doing the same work as someone else, stop and do something else. ")
    return (
        f"{who} {LAYOUT_GUIDE[_shown(layout, names)]}\n\n{together}"
        "Write short steps, each ending with a blank line. When you know the final answer, put it "
        "inside \\boxed{}."
    )


def prompt_text(preset: Preset, layout: str, names: list[str], text: str) -> str:
    """The shared prompt: instruction and problem in the user turn, then the layout's heading.

    ``text`` is either the bare problem or a conversation the chat template already
    rendered (it contains the preset's user turn opener): then the instruction goes at
    the start of the last user turn and the rendered assistant opening is kept.
    """
    guide = instruction(layout, names)
    at = text.rfind(preset.user_open) if preset.user_open else -1
    if at >= 0:
        cut = at + len(preset.user_open)
        body = text[:cut] + guide + "\n\n" + text[cut:]
    else:
        body = preset.user_open + guide + "\n\n" + text + preset.user_close + preset.assistant_open
    return body + ("" if layout == "contiguous" else PAST_STEPS)


def step_header(name: str, step: int) -> str:
    """The text that opens a worker's step ``step`` (1-based)."""
    return f"**{name} [{step}]:**"


# The opening of each worker's step 1: alone, first of a group, or one of the others. A group's
# openings invite a plan; one worker gets no word of others. Measured on Qwen 1.5B over GSM8K
# 0-39 (budget 256, docs/lab_notes.md, 2026-12-07): the lone worker, told of a team and a
# split, answered 8 of 40; as here, 15. A group opened with "Let me solve it step by step." /
# "I'll solve it my own way, and compare with what the others find." answered 10 of 40, with
# these 13: kept.
OPENINGS = {
    "alone": " Let me solve it step by step.",
    "first": " Let's agree on a plan first. I suggest we split it like this:",
    "other": " I'll read the plan and take a part of it.",
}


def first_step(names: Sequence[str], worker: int) -> str:
    """A worker's first text: the header of step 1 and its opening (``OPENINGS``). No greeting:
    a greeting that opens step 1 is what a real model repeats at every later step."""
    kind = "alone" if len(names) == 1 else "first" if worker == 0 else "other"
    return f"{step_header(names[worker], 1)}{OPENINGS[kind]}"


REDUNDANCY_CHECK = " Quick check: is someone else already doing what I am doing? (yes/no):"
FINAL_HEADING = "**Final answer.**"
CLOSING = f"\n\n{FINAL_HEADING} Putting together what everyone found, the answer is \\boxed{{"


def answer_closed(answer: str) -> bool:
    """True once the text after ``\\boxed{`` closes its brace."""
    return _close(answer) is not None


def _close(answer: str) -> int | None:
    depth = 1
    for i, ch in enumerate(answer):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return i
    return None


def boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` in ``text``, if any."""
    start = text.rfind("\\boxed{")
    while start >= 0:
        rest = text[start + len("\\boxed{"):]
        end = _close(rest)
        if end is not None:
            return rest[:end].strip()
        start = text.rfind("\\boxed{", 0, start)
    return None


def final_answer(text: str) -> str | None:
    """The group's final answer from the answering worker's text (``None``: none was written).

    The answer follows the first ``\\boxed{`` after the last ``FINAL_HEADING`` (found by
    the heading, as detokenizers may respace the closing sentence); if the answer budget
    ended before its brace closed, what was written is returned.
    """
    at = text.rfind(FINAL_HEADING)
    box = text.find("\\boxed{", at) if at >= 0 else -1
    if box < 0:
        return None
    rest = text[box + len("\\boxed{"):]
    end = _close(rest)
    return (rest if end is None else rest[:end]).strip()


# A view's sections are headed ``### ...``: to a model reading a view, any heading of that form is
# framing. Banning the exact headings left their look-alikes: Qwen 1.5B's W=2 groups on GSM8K 0-99
# (budget 256) wrote ``### Steps in process``, ``### My step inprogress``, ``### Past actions``,
# ``### Bob's step in progress`` in 40 of 200 worker texts (a lone worker: 11 of 100), and the other
# worker read them as sections of the view.
HEADING_MARK = "##"


def banned_texts(names: Sequence[str]) -> list[str]:
    """What no worker may write of its own (``bans.py``): every layout's section headings and any
    look-alike (``HEADING_MARK``), the workspace headings, every worker's name before a step
    number (``Bob [``: a header, bold or not; a worker's own headers are forced, never sampled) or
    as a bold speaker (``**Bob:``, ``**Bob**``), the redundancy question and the final-answer heading."""
    headings = [PAST_STEPS] + [text for blocks in FRAMING.values() for _, text in blocks]
    texts = [t.strip() for t in headings if t.strip()] + [HEADING_MARK] \
        + [workspace_heading(n).strip() for n in names] \
        + [t for n in names for t in (f"{n} [", f"**{n}:", f"**{n}**")] + [REDUNDANCY_CHECK.strip(), FINAL_HEADING]
    return list(dict.fromkeys(texts))
