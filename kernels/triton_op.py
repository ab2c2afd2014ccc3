"""Fragment attention in Triton: one KV tile load serves every worker of a group.

A program owns a tile of query rows of one group (tokens x the query heads of one KV
head) and a slice of the group's KV tiles (split-KV, flash-decoding style). For each KV
tile it loads keys and values once, masks by view position, and updates an online
softmax for the rows of all W workers, so a decode step reads the group's cache once,
not W times. Rotary turns use cos/sin computed in-kernel from ``inv_freq``:

- Shared tiles: the sources every row sees at one offset (the prompt and the committed
  history) packed end to end into full tiles. Each key's cache slot, view position and
  shift come from a per-step map (``map_shared_keys``). The queries stay turned for one
  shift: a tile of one shift turns the queries (when its shift is new) and goes into the
  dot as loaded; a tile of mixed shifts turns its keys, by their shift less the queries'.
- Source tiles: the other sources, a tile at a time; every row's query is turned once
  per source by ``theta = (v - p) - D_f``.

Splits are merged by a second small kernel or, with ``fused_merge``, by the last program
of each row tile to finish (an atomic counter per tile; one launch instead of two).
"""

# The op lives in kernels/gpu/ by role; this module is its public face.
from .gpu.launch import fragment_attention, map_shared_keys, vllm_caches
from .gpu.plan import LaunchPlan, plan  # noqa: F401

__all__ = ["LaunchPlan", "fragment_attention", "map_shared_keys", "plan", "vllm_caches"]
