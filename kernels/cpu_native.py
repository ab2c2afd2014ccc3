"""Fragment attention for the CPU path, compiled: a work list per step, one call per layer.

Same contract as ``reference.fragment_attention``. ``prepare`` turns the step's fragment
table into a flat work list once per step (vectorised, no Python loop over groups or
fragments): every group's *tiles* (a cache block of one of its sources), and for every
tile its *entries*, the rows that see it with the run of slots ``[lo, hi)`` visible to
each and the *turn* (a row of a cos/sin table) that rotates the row's query to where those
keys sit in its view. ``fragment_attention`` hands the list to ``cpu_native.cpp``, which
walks each group's tiles once per KV head, every row of the group taking a tile while it
is in cache: a step reads a group's keys once, whatever its number of workers, and costs
one rotation of a row's queries per fragment.

A tile's block is the cache's, or the *packed store*'s (``stored_from``: block-table rows
that list store blocks): a copy of a group's committed history, each key turned to its
index in the history, that ``pack`` fills as steps commit (``vllm_hogwild/packing.py``
says why). A history of hundreds of fragments is then one, read in whole tiles.

The extension is compiled on first use (``torch.utils.cpp_extension``) into PyTorch's
extension cache (``TORCH_EXTENSIONS_DIR``), for the x86 level ``VLLM_HOGWILD_CPU_ISA`` names
(``isa.LEVELS``): ``native`` by default (``-march=native``: built on the machine that runs
it), or ``x86-64-v3`` (AVX2 + FMA) or ``x86-64-v4`` (AVX-512) on purpose, to test and time
another kind of CPU's build on this one. The C++ sizes its blocks of accumulators to the
level's registers (16 of 256 bits, or 32 of 512). ``scripts/setup.sh`` builds it ahead.
``available()`` says whether it runs here; the CPU backend falls back to ``cpu_op`` if not.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from . import isa
from .rotary import partners
from .table import FragmentTable, SeqView, shared_of_groups

log = logging.getLogger(__name__)
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_native.cpp")


# The arrays of a step's work, as Prepared shows them (tensor copies; the tests read them):
ARRAYS = (
    "row_at",  # [R] int64: batch row of each query row (of q and out)
    "group_rows",  # [R] int64: query rows by group
    "group_row_ptr",  # [G+1] int64: rows of group g are group_rows[ptr[g]:ptr[g+1]]
    "group_tile_ptr",  # [G+1] int64: tiles of group g are [ptr[g], ptr[g+1])
    "tile_entry_ptr",  # [T+1] int64: entries of tile t are [ptr[t], ptr[t+1])
    "tile_block",  # [T] int64: the tile's block, in the cache or the packed store
    "tile_stored",  # [T] int32: 1 where that block is the packed store's
    "entry_row",  # [E] int32: the entry's row, as an index into its group's rows
    "entry_lo",  # [E] int32: first visible slot of the block
    "entry_hi",  # [E] int32: past the last visible slot
    "entry_turn",  # [E] int32: row of turn_cos / turn_sin
    "turns",  # [U] int64: the distinct turns (angles, in positions), ascending
    "turn_cos",  # [U, D] rounded to the op's dtype, held in its compute_dtype
    "turn_sin",
    "perm",  # [D] int64: rotation partner of each dimension
)


@dataclass(frozen=True)
class Prepared:
    """A step's work list for one kind of layer, shared by every layer of the kind.

    Query rows are listed by group; a group's *tiles* (one cache block of one of its
    sources each) in order; a tile's *entries* (one per row that sees a slot of it) in row
    order. The op walks a group's tiles once, each tile taken by all its entries in turn.

    The arrays (``ARRAYS``) stay in C++ (``work``, a ``StepWork`` of ``cpu_native.cpp``),
    where they are made and read: a layer's call hands over one object, not fifteen tensors.
    Reading one here (``prepared.entry_lo``) copies it into a tensor."""

    work: Any

    def __getattr__(self, name: str) -> torch.Tensor:
        if name in ARRAYS:
            return getattr(self.work, name)
        raise AttributeError(name)




def level() -> str:
    """The x86 level the op is built for: ``VLLM_HOGWILD_CPU_ISA`` (``isa.LEVELS``: native,
    the default, x86-64-v3 or x86-64-v4), so that one machine can build, test and time the op
    of another kind of CPU it can run."""
    from vllm_hogwild import envs

    return envs.get(envs.CPU_ISA)


def _cpu_tag() -> str:
    """A digest of this CPU's model and flags: a native build for another CPU is never reused."""
    cpu = isa.this_cpu()
    return hashlib.sha1(f"{cpu.model}{sorted(cpu.flags)}".encode()).hexdigest()[:10]


@functools.cache
def _build(at: str):
    from torch.utils import cpp_extension

    name = f"hogwild_cpu_{_cpu_tag()}" if at == "native" else f"hogwild_cpu_{at.replace('-', '_')}"
    return cpp_extension.load(
        name=name, sources=[SOURCE], extra_cflags=["-O3", isa.LEVELS[at][1], "-ffast-math", "-fopenmp"],
        extra_ldflags=["-fopenmp"], verbose=False)


def _extension():
    return _build(level())


@functools.cache
def _available(at: str) -> bool:
    cpu = isa.this_cpu()
    if not isa.runs_level(cpu, at):
        needs = [f for f in isa.LEVELS[at][0] if f not in cpu.flags] or ["an x86-64 CPU"]
        log.warning("hogwild: this CPU (%s, %s) cannot run the compiled CPU op built for %s (it lacks %s); "
                    "using the PyTorch op", cpu.model, cpu.machine, at, ", ".join(needs))
        return False
    try:
        _build(at)
        return True
    except Exception as e:  # no compiler, no ninja, a compiler without that target, a build error
        log.warning("hogwild: the compiled CPU op could not be built for %s (%s); using the PyTorch op", at, e)
        return False


def available() -> bool:
    """Whether the extension for ``level()`` runs here (building it now if it is not: ~30 s,
    once per level). False, after one log line, where this CPU lacks the level's instructions
    (AVX2 and FMA at least) or the build fails: the caller falls back to the PyTorch op."""
    return _available(level())


def _ints(x, dtype=np.int64) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))


def prepare(table: FragmentTable, block_table: torch.Tensor, block_size: int, inv_freq: torch.Tensor,
            is_neox: bool, head_dim: int, row_index: torch.Tensor | None = None,
            dtype: torch.dtype = torch.float32, stored_from: int | None = None, window: int = 0) -> Prepared:
    """The work list of a step. ``row_index[i]``: where the table's query row ``i`` sits in
    the ``q`` and ``out`` that ``fragment_attention`` gets (default: row ``i``); ``dtype``:
    the op's (its rotations are tabled in it); ``stored_from``: block-table rows from this
    one on list blocks of the packed store, not of the cache; ``window``: a sliding window of
    that many view positions (0: none), a row at view position ``v`` seeing the keys at
    ``(v - window, v]``. Tiles that no row sees are left out, so a step's cost stops growing
    with the context once it is past the window.

    The lists are made in C++ (``work_list`` in ``cpu_native.cpp``; the tests hold them to a
    NumPy reference), and so are the rotations (``turn_table`` there, held to ``rotary.turn_table``):
    a step of one small group spends less time there than in its attention."""
    t = table
    return Prepared(_extension().work_list(
        t.query_start_loc, t.seq_group, t.seq_worker, t.q_pos, t.q_view, t.group_src_ptr, t.src_row, t.src_start,
        t.src_end, t.src_offset, _int32s(block_table), block_size, -1 if stored_from is None else stored_from, window,
        _rows_at(row_index), inv_freq, is_neox, head_dim, dtype))


def _rows_at(row_index: torch.Tensor | None) -> torch.Tensor:
    """``row_index`` as the C++ side takes it (empty: query row ``i`` at row ``i`` of q)."""
    return _NO_ROWS if row_index is None else row_index.to(torch.int64).contiguous()


_NO_ROWS = torch.zeros(0, dtype=torch.int64)


def _laid_out(views: Sequence[SeqView]) -> tuple:
    """The views as ``fragment_table`` and ``step_work`` in ``cpu_native.cpp`` take them: flat
    lists (pybind11 reads a list of ints into a vector faster than NumPy builds an array) and
    the groups' shared histories as one int64 array ``[4, K]`` with its run pointers."""
    seq = [x for v in views for x in (v.group, v.worker, v.num_rows, v.first_home)]
    frag_ptr = list(itertools.accumulate((len(v.fragments) for v in views), initial=0))
    frags = [x for v in views for f in v.fragments for x in f]
    positions = [p for v in views for p in v.view_positions]
    by_group = shared_of_groups(views)
    given = [by_group[g] for g in sorted(by_group)]
    runs = [np.asarray(s, dtype=np.int64) for s in given if s is not None]
    shared = np.concatenate(runs, axis=1) if len(runs) > 1 else runs[0] if runs else np.zeros((4, 0), dtype=np.int64)
    shared_ptr = list(itertools.accumulate((0 if s is None else s[0].size for s in given), initial=0))
    return seq, frag_ptr, frags, positions, _ints(shared), shared_ptr


def fragment_table(views: Sequence[SeqView]) -> FragmentTable:
    """``table.build(views)``, made in C++ (``fragment_table`` in ``cpu_native.cpp``; the tests
    hold it to ``table.build`` array by array): the cuts and merges of a group's fragments are
    Python per fragment there, ~0.15 ms of a small group's step once the forward pass has left
    the interpreter cold. ``prepare_step`` makes it and the work lists in one call."""
    (qsl, seq_group, seq_worker, q_pos, q_view, group_src_ptr, group_shared, src_row, src_start, src_end, src_offset,
     sizes) = _extension().fragment_table(*_laid_out(views))
    max_workers, max_rows = sizes.tolist()
    return FragmentTable(qsl, seq_group, seq_worker, q_pos, q_view, group_src_ptr, group_shared, src_row, src_start,
                         src_end, src_offset, max_workers, max_rows)


@dataclass(frozen=True)
class WorkKind:
    """What a step's work list depends on, per kind of layer: its RoPE and its sliding window
    (0: none)."""

    inv_freq: torch.Tensor
    is_neox: bool
    window: int = 0


def prepare_step(views: Sequence[SeqView], block_table: torch.Tensor, block_size: int, kinds: Sequence[WorkKind],
                 head_dim: int, row_index: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                 stored_from: int | None = None) -> list[Prepared]:
    """``prepare(fragment_table(views), ...)`` for each of ``kinds``, in one call into
    ``cpu_native.cpp`` (``step_work``): the table and the lists between never come back to
    Python, where laying them out as tensors and reading them again cost a small group's step
    more than making them."""
    kinds = list(kinds)
    return [Prepared(work) for work in _extension().step_work(
        *_laid_out(views), _int32s(block_table), block_size, -1 if stored_from is None else stored_from,
        [k.window for k in kinds], [k.inv_freq for k in kinds], [k.is_neox for k in kinds], head_dim, dtype,
        _rows_at(row_index))]


def _int32s(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.int32 and x.is_contiguous() else x.to(torch.int32).contiguous()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """What the op sums in, and keeps the packed store in, for a cache of ``dtype``: float64
    for float64 (the tests' references), float32 for float32, bfloat16 and float16."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def fragment_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, prepared: Prepared,
                       scale: float, out: torch.Tensor | None = None, splits: int = 0,
                       store: tuple[torch.Tensor, torch.Tensor] | None = None, amx: bool = False,
                       softcap: float = 0.0, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of ``q [T, Hq, D]`` (float32, bfloat16, float16 or float64); caches
    ``[blocks, block_size, Hkv, D]`` of q's dtype (any strides). Scores, softmax and sums are
    in ``compute_dtype``; ``out`` (q's dtype) is rounded once. Only the prepared rows of
    ``out`` are written. ``splits``: how many runs of tiles each group's walk is cut into (0:
    as many as keep the threads busy; the tests set it to check the merge). ``store``: the
    packed store's keys and values (shaped like the caches, of ``compute_dtype``), which
    tiles of ``stored_from`` rows read. ``amx``: the caches hold vLLM's amx layout (bfloat16)
    inside each (block, head), and only their block and head strides are read
    (``vllm_hogwild.cpu_backend.cpu_caches``). ``softcap``: scores (scaled) become
    ``softcap * tanh(score / softcap)`` (Gemma 2; 0: none). ``sinks [Hq]``: a learned logit
    per query head in every row's softmax denominator, with no value (gpt-oss)."""
    out = torch.empty_like(q) if out is None else out
    if store is None:
        empty = key_cache.new_empty((0, *key_cache.shape[1:]), dtype=compute_dtype(q.dtype))
        store = (empty, empty)
    if sinks is not None:
        sinks = sinks.to(compute_dtype(q.dtype)).contiguous()
    _extension().fragment_attention(q, key_cache, value_cache, store[0], store[1], out, prepared.work, scale, splits,
                                    amx, softcap, sinks)
    return out


def bf16_dots(key_cache: torch.Tensor, amx: bool = False) -> bool:
    """Whether the op takes bfloat16 dot products over this key cache: a bfloat16 cache, a
    build for a CPU with AVX512-BF16 (``native`` on such a CPU), the amx layout or vLLM's vec
    layout of blocks of a multiple of 32 slots. There the turned query and the values' weights
    are rounded to bfloat16 before their dots (the sums stay float32); the packed store's tiles
    keep float32 dots."""
    return _extension().bf16_dots(key_cache, amx)


@dataclass
class Copies:
    """A step's copies into the packed store (``vllm_hogwild/packing.py``), shared by every
    layer: token ``n``'s key and value, at slot ``src_slot[n]`` of cache block
    ``src_block[n]``, go to slot ``dst_slot[n]`` of store block ``dst_block[n]``, the key
    turned by row ``turn[n]`` of the cos/sin table."""

    src_block: torch.Tensor  # [N] int64
    src_slot: torch.Tensor  # [N] int32
    dst_block: torch.Tensor  # [N] int64
    dst_slot: torch.Tensor  # [N] int32
    turn: torch.Tensor  # [N] int32
    turn_cos: torch.Tensor  # [U, D] rounded to the op's dtype, held in its compute_dtype
    turn_sin: torch.Tensor
    perm: torch.Tensor  # [D] int64


def prepare_copies(src_row: np.ndarray, home: np.ndarray, dst_row: np.ndarray, index: np.ndarray,
                   turn: np.ndarray, block_table: torch.Tensor, block_size: int, inv_freq: torch.Tensor,
                   is_neox: bool, head_dim: int, dtype: torch.dtype = torch.float32) -> Copies:
    """The copies of tokens at ``home`` of block-table rows ``src_row`` to ``index`` of the
    rows ``dst_row`` (rows that list store blocks), keys turned by ``turn`` positions."""
    table = block_table.numpy()
    turns, turn_of = np.unique(np.asarray(turn, dtype=np.int64), return_inverse=True)
    cos, sin = _extension().turn_table(torch.from_numpy(turns), inv_freq, head_dim, is_neox, dtype)
    return Copies(_ints(table[src_row, home // block_size]), _ints(home % block_size, np.int32),
                  _ints(table[dst_row, index // block_size]), _ints(index % block_size, np.int32),
                  _ints(turn_of.reshape(-1), np.int32), cos, sin, partners(head_dim, inv_freq.numel(), is_neox))


def pack(key_cache: torch.Tensor, value_cache: torch.Tensor, store: tuple[torch.Tensor, torch.Tensor],
         copies: Copies, amx: bool = False) -> None:
    """Make ``copies`` from the caches into the store (each ``[blocks, block_size, Hkv, D]``,
    the store of the caches' ``compute_dtype``: a turned key is not rounded back)."""
    c = copies
    if c.src_block.numel():
        _extension().pack(key_cache, value_cache, store[0], store[1], c.src_block, c.src_slot, c.dst_block,
                          c.dst_slot, c.turn, c.turn_cos, c.turn_sin, c.perm, amx)
