"""When a hogwild group may start: all of it at once, and never half-evicted later.

Pure arithmetic. Policy: *hold back*, never preempt. A group is admitted only when
(1) its whole prefill (every worker's prompt) fits this step's token budget and seats,
(2) the free blocks hold its prompts now, with one spare block per running request, and
(3) the worst case of every admitted group (each worker at ``max_tokens``) fits the whole
cache. Ordinary requests may use the rest and are the ones preempted under pressure, so a
running group always finds its next blocks and no group is ever partly evicted (a
preempted worker's keys could not be recomputed as the others saw them).
"""

from __future__ import annotations

from dataclasses import dataclass


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


@dataclass(frozen=True)
class GroupDemand:
    """What a waiting group needs: ``prompts`` is each worker's prompt length."""

    prompts: tuple[int, ...]
    max_tokens: int

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

    def take(self, group: GroupDemand) -> bool:
        """Admit ``group`` if it fits, consuming its room; False leaves it waiting."""
        need = (
            group.prefill_tokens(),
            len(group.prompts),
            group.prompt_blocks(self.block_size),
            group.worst_blocks(self.block_size),
        )
        room = (self.tokens, self.seats, self.free_blocks, self.unreserved_blocks)
        if any(n > r for n, r in zip(need, room)):
            return False
        self.tokens -= need[0]
        self.seats -= need[1]
        self.free_blocks -= need[2]
        self.unreserved_blocks -= need[3]
        return True
