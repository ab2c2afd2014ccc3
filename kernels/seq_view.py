"""One sequence of a batch as the fragment table takes it: pure data (no torch), so that the
plugin's planner, which is pure logic, hands the backends the very type they read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

Shared = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # rows, starts, ends, offsets


@dataclass(frozen=True)
class SeqView:
    """One sequence of a batch: its rows, its group and worker, and its view.

    ``first_home``: home position of its first query row (rows are consecutive tokens).
    ``fragments``: ``(block-table row, home start, home end, view offset)`` tuples.
    ``view_positions``: one per query row, the row's position in this view.
    ``shared``: more fragments of the view, as arrays, that every sequence of the group
    sees at the same offsets; the same object for all of the group's sequences.
    """

    group: int
    worker: int
    num_rows: int
    first_home: int
    fragments: Sequence[tuple[int, int, int, int]]
    view_positions: Sequence[int]
    shared: Shared | None = None

    def all_fragments(self) -> list[tuple[int, int, int, int]]:
        """The whole view (in no particular order: each fragment carries its offset)."""
        shared = [] if self.shared is None else list(zip(*(a.tolist() for a in self.shared)))
        return shared + list(self.fragments)
