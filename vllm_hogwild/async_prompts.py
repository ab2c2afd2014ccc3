"""Think while answering (``hogwild_async``): every text around the answer and the thoughts.

A *writer* (worker 0, the answer the user reads) and a *thinker* (worker 1, private thoughts)
share one cache, as in AsyncReasoning (Yandex, 2025); our own wording, built from the model's
chat template (``ChatMarkers``), never from one model's tokens. Each view is a chat:

    writer:  [conversation][writer intro ... user close][thinker opening: assistant open, thoughts heading]
             [thoughts][writer split: note, assistant close, assistant open][answer]
    thinker: [conversation][thinker intro ... user close, assistant open][answer]
             [thinker split: note, assistant close][thinker opening][thoughts]

so the writer reads the thoughts as an earlier assistant turn and answers in the next one, and the
thinker reads the answer so far as an earlier assistant turn and thinks in the next one. A turn is
closed by the text before the other's stream (the writer's intro, the thinker's split), so the
thinker's opening, which both views hold, fits both. The conversation is what both views share:
the chat up to the last user message's text; the intros hold that message, each after its own
instruction. A model with no chat template is refused at the request. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

WRITER, THINKER = 0, 1
SECTIONS = ("intro", "split", "opening")  # the parts of each worker's first text, in order

WRITER_INSTRUCTION = (
    "You answer the user while your thoughts on the problem are still being written. Your thoughts so "
    "far come before your answer, and more of them appear as you write. Answer in short paragraphs, "
    "each saying only what the thoughts above have already worked out; never guess ahead of them. "
    "When the thoughts reach the result, state it and put the final answer inside \\boxed{}."
)
THINKER_INSTRUCTION = (
    "You think about the problem in private, in short paragraphs, step by step. Your answer to the user "
    "is being written at the same time from your thoughts: what has been written of it so far comes "
    "before your thoughts. Think ahead of the answer, check what it says, and stop thinking once the "
    "result is certain."
)
THOUGHTS_HEADING = "Private thoughts (the user does not see these):\n\n"
MORE_THOUGHTS = "\n\n[More thoughts will appear above.]"
ANSWER_GOES_ON = "\n\n[The answer goes on here.]"


@dataclass(frozen=True)
class ChatMarkers:
    """What a chat template writes around a message's text: before a user message's text (for the
    first message: with the template's default system turn), after it, then before and after an
    assistant message's text."""

    user_open: str
    user_close: str
    assistant_open: str
    assistant_close: str


_USER, _ASSISTANT = "\x01HOGWILD-USER\x01", "\x02HOGWILD-ASSISTANT\x02"


def chat_markers(render: Callable[[list[dict], bool], str]) -> ChatMarkers:
    """The markers of a chat template, read by rendering sentinel messages: ``render(messages,
    add_generation_prompt)`` is the template (the tokenizer's ``apply_chat_template`` to text).
    Raises ValueError where the template does not render them as plain turns."""
    user = [{"role": "user", "content": _USER}]
    closed = render(user, False)
    opened = render(user, True)
    both = render(user + [{"role": "assistant", "content": _ASSISTANT}], False)
    if _USER not in closed or not opened.startswith(closed) or _ASSISTANT not in both:
        raise ValueError("the chat template does not write plain user and assistant turns")
    user_open, user_close = closed.split(_USER, 1)
    assistant_open = opened[len(closed):]
    between, assistant_close = both.split(_USER, 1)[1].split(_ASSISTANT, 1)
    if between != user_close + assistant_open:
        raise ValueError("the chat template writes an assistant turn other than its generation prompt")
    if not assistant_open or not (user_close or assistant_close):
        raise ValueError("the chat template marks no turns")
    return ChatMarkers(user_open, user_close, assistant_open, assistant_close)


@dataclass(frozen=True)
class AsyncTexts:
    """The conversation both views share, then each worker's sections (``SECTIONS``), by worker."""

    conversation: str
    sections: tuple[tuple[str, str, str], tuple[str, str, str]]


def split_conversation(markers: ChatMarkers, text: str) -> tuple[str, str]:
    """``text`` as (the conversation before the last user message's text, that text). ``text`` is
    a chat already rendered by the template (it ends with the assistant's opening) or a bare
    problem (then the conversation is the template's own start)."""
    turn = _last_turn_opener(markers)
    if text.endswith(markers.user_close + markers.assistant_open) and turn and turn in text:
        at = text.rfind(turn) + len(turn)
        return text[:at], text[at:len(text) - len(markers.user_close + markers.assistant_open)]
    return markers.user_open, text


def _last_turn_opener(markers: ChatMarkers) -> str:
    """What opens a user turn, wherever it is (the first one's opener may carry a system turn
    before it): the opener's text after its last turn close, if any."""
    for close in (markers.assistant_close, markers.user_close):
        if close and close in markers.user_open:
            return markers.user_open.rsplit(close, 1)[1]
    return markers.user_open


def texts(markers: ChatMarkers, text: str) -> AsyncTexts:
    """Every text of a think-while-answering request whose prompt is ``text``."""
    conversation, problem = split_conversation(markers, text)
    m = markers
    thinker_opening = m.assistant_open + THOUGHTS_HEADING
    writer = (f"{WRITER_INSTRUCTION}\n\n{problem}{m.user_close}",
              f"{MORE_THOUGHTS}{m.assistant_close}{m.assistant_open}", "")
    thinker = (f"{THINKER_INSTRUCTION}\n\n{problem}{m.user_close}{m.assistant_open}",
               f"{ANSWER_GOES_ON}{m.assistant_close}", thinker_opening)
    return AsyncTexts(conversation, (writer, thinker))


def banned_texts() -> list[str]:
    """What neither stream may write of its own (``async_bans.py``): the thoughts heading, and the
    views' notes by their first words, so that a look-alike is barred too (SmolLM2's writer wrote
    "[More thoughts will appear below.]" when the exact note was banned)."""
    return [THOUGHTS_HEADING.strip()] + [" ".join(note.split()[:2]) for note in (MORE_THOUGHTS, ANSWER_GOES_ON)]


def view_text(t: AsyncTexts, viewer: int, streams: Sequence[str]) -> str:
    """The text a worker's view reads, given each worker's stream (what it wrote after its
    opening): what the layout places, written out (for tests and transcripts)."""
    other = 1 - viewer
    intro, split, opening = t.sections[viewer]
    return (t.conversation + intro + t.sections[other][2] + streams[other] + split + opening
            + streams[viewer])
