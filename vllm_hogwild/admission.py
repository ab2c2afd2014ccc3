"""When a hogwild group may start: all of it at once, and never half-evicted later.

Pure arithmetic. Policy: *hold back*, never preempt. A group is admitted only when
(1) the step its workers start in fits this step's token budget and seats,
(2) the free blocks hold its prompts now, with one spare block per running request, and
(3) the worst case of every admitted group (each worker at ``max_tokens``) fits the whole
cache. Ordinary requests may use the rest and are the ones preempted under pressure, so a
running group always finds its next blocks and no group is ever partly evicted (a
preempted worker's keys could not be recomputed as the others saw them).

A group whose whole prefill does not fit one step *leads*: worker 0 alone prefills the
shared prompt (all of it but its last token, whose keys are the plain causal prompt's in
every layout) in chunks, over as many steps as it takes; the group is charged in full when
it leads. The other workers *join* in the step that prefills the rest: worker 0's last
prompt token and framing, and every worker's first text, so all workers start together
and every key that depends on another worker is written in that one step, as without
chunks.

A group that could never start is refused when it arrives (``check_lengths``,
``check_capacity``), so nothing waits for room that will never come.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_hogwild import envs

# How long a group's worker requests may take to all reach one scheduler (they are sent
# back to back, so seconds are plenty); then the group fails instead of waiting forever.
GROUP_ASSEMBLY_SECONDS = envs.get(envs.GROUP_ASSEMBLY_SECONDS)


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


@dataclass(frozen=True)
class GroupDemand:
    """What a waiting group needs: ``prompts`` is each worker's prompt length (worker 0's
    first); ``shared`` is how many of worker 0's prompt tokens it may prefill ahead, alone."""

    prompts: tuple[int, ...]
    max_tokens: int
    shared: int = 0

    def prefill_tokens(self) -> int:
        return sum(self.prompts)

    def prompt_blocks(self, block_size: int) -> int:
        return sum(blocks_for(p, block_size) for p in self.prompts)

    def worst_blocks(self, block_size: int) -> int:
        return sum(blocks_for(p + self.max_tokens, block_size) for p in self.prompts)


@dataclass
class Capacity:
    """The scheduler's room this step, before waiting requests are admitted."""

    tokens: int  # token budget left after the running requests' worst use
    seats: int  # free running slots
    free_blocks: int  # free now, minus one growth block per running request
    unreserved_blocks: int  # total blocks minus the worst case of admitted groups
    block_size: int

    def _fits(self, tokens: int, seats: int, free_blocks: int, unreserved_blocks: int) -> bool:
        """Consume the room if all of it is there; False (and nothing taken) if not."""
        need = (tokens, seats, free_blocks, unreserved_blocks)
        room = (self.tokens, self.seats, self.free_blocks, self.unreserved_blocks)
        if any(n > r for n, r in zip(need, room)):
            return False
        self.tokens -= tokens
        self.seats -= seats
        self.free_blocks -= free_blocks
        self.unreserved_blocks -= unreserved_blocks
        return True

    def take(self, group: GroupDemand) -> bool:
        """Admit ``group`` whole (its prefill in this one step) if it fits."""
        return self._fits(group.prefill_tokens(), len(group.prompts), group.prompt_blocks(self.block_size),
                          group.worst_blocks(self.block_size))

    def lead(self, group: GroupDemand) -> bool:
        """Start worker 0 on the shared prompt, the group charged in full (seats, blocks of
        every prompt, worst case); it takes whatever token budget is left, up to ``shared``."""
        if group.shared <= 0 or self.tokens <= 0:
            return False
        return self._fits(min(group.shared, self.tokens), len(group.prompts), group.prompt_blocks(self.block_size),
                          group.worst_blocks(self.block_size))

    def join(self, group: GroupDemand, led: int) -> bool:
        """Start the other workers of a group whose worker 0 has prefilled ``led`` tokens:
        their prompts fit this step beside worker 0's rest (a running request's need, already
        counted in ``tokens``). The group was charged its seats and blocks when it led."""
        rest = group.prompts[1:]
        blocks = sum(blocks_for(p, self.block_size) for p in rest) \
            + blocks_for(group.prompts[0], self.block_size) - blocks_for(led, self.block_size)
        return self._fits(sum(rest), len(rest), blocks, 0)


FIRST_TEXTS = {  # the field of the workers' first texts: (what the starting step prefills, the remedy)
    "hogwild_prefixes": ("every worker's first text with the prompt's last token and the protocol's texts",
                         "shorten the prefixes"),
    "prompt": ("the writer's and the thinker's instructions, each with the last message of the prompt "
               "(hogwild_async)", "shorten that message (earlier turns are prefilled in chunks)"),
}


def check_lengths(max_model_len: int, step_budget: int, max_tokens: int | None, prompt_len: int,
                  prefix_lens: list[int], framing_len: int, first_texts: str = "hogwild_prefixes",
                  shown: int | None = None) -> int:
    """The views must fit the model and the step the workers start in (the prompt's last
    token, the framing and every worker's first text) must fit one step; returns max_tokens
    (each worker's share of the room when the user gave none). ``first_texts``: the field the
    workers' first texts come from (think while answering: ``prompt``, whose last message is in
    both workers' first texts). ``shown``: the tokens of the longest view besides the workers'
    outputs (default: the prompt, the framing and every first text, which every view of the
    three layouts holds)."""
    workers = len(prefix_lens)
    written = prompt_len + framing_len + sum(prefix_lens)
    shown = written if shown is None else shown
    room = max_model_len - shown
    if max_tokens is None:
        if room < workers:
            raise ValueError(
                f"max_tokens: the prompt ({shown} tokens with the protocol's texts) leaves no room "
                f"for {workers} workers within max_model_len={max_model_len}"
            )
        max_tokens = room // workers
    elif max_tokens * workers > room:
        raise ValueError(
            f"max_tokens: {workers} workers x max_tokens={max_tokens} plus the prompt and "
            f"the workers' first texts ({shown} tokens) exceed max_model_len={max_model_len}; allowed: "
            f"max_tokens <= {max(room, 0) // workers}"
        )
    start = written - (prompt_len - 1) + workers - 1  # all prompts but the shared part worker 0 leads with
    if start > step_budget:
        what, shorten = FIRST_TEXTS[first_texts]
        raise ValueError(
            f"{first_texts}: a hogwild group's workers start in one step, which prefills {what} "
            f"({start} tokens), more than max_num_batched_tokens={step_budget}; raise it or {shorten}"
        )
    return max_tokens


def check_capacity(seats: int, cache_blocks: int | None, block_size: int, prompt_lens: list[int],
                   max_tokens: int) -> None:
    """A group that could never be admitted (more workers than seats, or a worst case larger
    than the whole KV cache of ``cache_blocks``, None while unknown) is refused now."""
    workers = len(prompt_lens)
    if workers > seats:
        raise ValueError(f"hogwild_workers: {workers} workers run at once, more than max_num_seqs={seats}")
    if not cache_blocks:
        return  # not known yet (engine start-up)

    def need(tokens: int) -> int:
        return GroupDemand(tuple(prompt_lens), tokens).worst_blocks(block_size)

    if need(max_tokens) > cache_blocks:
        allowed = max_tokens
        while allowed > 0 and need(allowed) > cache_blocks:
            allowed -= 1
        raise ValueError(f"max_tokens: {workers} workers x max_tokens={max_tokens} need {need(max_tokens)} KV "
                         f"blocks at worst, more than the cache holds ({cache_blocks}); allowed: "
                         f"max_tokens <= {allowed}")
