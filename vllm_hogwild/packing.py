"""The shared history, packed: one run of keys, whatever the number of committed steps.

Pure logic (numpy, no torch, no vLLM). The interleaved and combined views hold the group's
committed history alike, from view offset ``prompt_len`` on, but in the cache it is a
fragment per committed step (a paragraph: ~20 tokens), spread over the workers' blocks;
every one costs the op a partly used tile and a turn of every query. So the CPU path keeps a
copy: each committed token's key, turned from its home position to its place in the history
(token ``i`` of the history is rotated at position ``i``), and its value, laid end to end in
blocks of a *packed store* (one per layer, the layout of vLLM's cache). The history is then
one fragment of the store (home ``[0, n)``, view offset ``prompt_len``), read in whole tiles
with one turn per query row, and a step copies only the tokens committed since the last.

The store is a pool of blocks shared by the runner's groups, of bounded size: a group takes
blocks as its history grows while the pool has some, and gives them back when it ends. What
does not fit stays in the cache as fragments (the op reads both), so a full pool costs
speed, never a result. A token's key is copied once, when its step commits (keys are written
once: a committed token never changes), and then read from the copy by every view.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np


class BlockPool:
    """Block ids of the packed store, lowest first (so the store stays as small as it can)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = list(range(capacity))
        self.in_use = 0

    def take(self, n: int) -> list[int]:
        """Up to ``n`` blocks (fewer, or none, when the pool runs short)."""
        taken = [heapq.heappop(self._free) for _ in range(min(n, len(self._free)))]
        self.in_use += len(taken)
        return taken

    def give_back(self, blocks: list[int]) -> None:
        for b in blocks:
            heapq.heappush(self._free, b)
        self.in_use -= len(blocks)


@dataclass
class PackOrder:
    """Tokens to copy into the packed store this step, one entry per token: the key of
    ``worker``'s token at ``home`` turned by ``turn`` (history index minus home) goes, with
    its value, to slot ``index`` of the group's packed run."""

    worker: np.ndarray
    home: np.ndarray
    index: np.ndarray
    turn: np.ndarray

    def __len__(self) -> int:
        return int(self.index.size)

    @staticmethod
    def empty() -> PackOrder:
        return PackOrder(*(np.zeros(0, dtype=np.int64) for _ in range(4)))


@dataclass
class PackedHistory:
    """A group's packed run: history tokens ``[0, packed)`` in ``blocks`` of the store."""

    block_size: int
    blocks: list[int] = field(default_factory=list)
    packed: int = 0

    def advance(self, history: np.ndarray, prompt_len: int, pool: BlockPool) -> PackOrder:
        """Pack the history (columns worker, start, end, offset: ``layouts.shared_history``)
        as far as the pool allows; what to copy for it."""
        total = int(history[2, -1] - history[1, -1] + history[3, -1] - prompt_len) if history.size else 0
        want = -(-total // self.block_size) - len(self.blocks)
        if want > 0:
            self.blocks += pool.take(want)
        end = min(total, len(self.blocks) * self.block_size)
        if end == self.packed:  # most steps commit nothing
            return PackOrder.empty()
        order = tokens_between(history, prompt_len, self.packed, end)
        self.packed = end  # the history and the blocks only grow
        return order

    def release(self, pool: BlockPool) -> None:
        pool.give_back(self.blocks)
        self.blocks, self.packed = [], 0

    def rest(self, history: np.ndarray, prompt_len: int) -> np.ndarray:
        """The history's columns past the packed run (the fragment it cuts, trimmed)."""
        cut = prompt_len + self.packed
        if not history.size or int(history[3, -1] + history[2, -1] - history[1, -1]) <= cut:
            return history[:, :0].copy()  # all packed (most steps)
        start, end, offset = history[1], history[2], history[3]
        keep = offset + (end - start) > cut
        rest = history[:, keep].copy()
        if rest.size:
            trim = max(0, cut - int(rest[3, 0]))
            rest[1, 0] += trim
            rest[3, 0] += trim
        return rest


def tokens_between(history: np.ndarray, prompt_len: int, first: int, end: int) -> PackOrder:
    """History tokens ``[first, end)`` (indices from the history's start) as a PackOrder."""
    worker, start, stop, offset = history
    index0 = offset - prompt_len  # history index of each fragment's first token
    lo = np.clip(first - index0, 0, stop - start)
    hi = np.clip(end - index0, 0, stop - start)
    count = hi - lo
    frag = np.repeat(np.arange(count.size), count)
    within = np.arange(frag.size) - np.repeat(np.cumsum(count) - count, count) + lo[frag]
    home = start[frag] + within
    index = index0[frag] + within
    return PackOrder(worker[frag], home, index, index - home)
