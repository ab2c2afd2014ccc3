"""Every engine setting of the space hogwild must not crash on: dtype x block size x head
size x KV cache dtype, each started as an in-process engine on a tiny random Llama of that
head size, a W=2 group sent to it and a plain request after.

    python -m benchmarks.end_to_end.support_walk [--out benchmarks/results/support_walk]

Each combination ends one of three ways (``tests.helpers.runs.outcome``, which asserts what
each means): ``runs`` (the group equals the same-dtype oracle within the dtype's noise),
``refused`` (a 400-style error at the request naming the setting), or ``no engine`` (vLLM
itself refuses to start); in every case but the last the engine then serves plain requests.
An exception inside an engine step would fail the walk. The suite runs six of these
(``tests/engine/test_dtypes.py``); this runs all of them (a few minutes). Writes OUT.json, OUT.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

from benchmarks.common import paths  # noqa: E402
from tests import conftest  # noqa: E402,F401  (the tests' environment: in-process engines, the plugin)
from tests.helpers.runs import outcome  # noqa: E402

DTYPES = ("float32", "bfloat16", "float16")
BLOCK_SIZES = (16, 32, 64, 128)
HEAD_SIZES = (64, 80, 96, 128)
KV_CACHE_DTYPES = ("auto", "fp8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write OUT.json and OUT.md")
    args = p.parse_args()
    rows = []
    for dtype, block, head, kv in itertools.product(DTYPES, BLOCK_SIZES, HEAD_SIZES, KV_CACHE_DTYPES):
        start = time.perf_counter()
        result = outcome(dtype, block, head, kv)
        rows.append({"dtype": dtype, "block_size": block, "head_size": head, "kv_cache_dtype": kv,
                     "outcome": result, "seconds": round(time.perf_counter() - start, 1)})
        print(f"{dtype:9s} block {block:3d} head {head:3d} kv {kv:4s}: {result}", file=sys.stderr, flush=True)
    counts = {o: sum(r["outcome"] == o for r in rows) for o in ("runs", "refused", "no engine")}
    lines = [f"`python -m benchmarks.end_to_end.support_walk {' '.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d')}): "
             f"{len(rows)} combinations: " + ", ".join(f"{n} {o}" for o, n in counts.items()), "",
             "| dtype | KV cache | " + " | ".join(f"block {b}" for b in BLOCK_SIZES) + " |",
             "| --- | --- | " + " | ".join("---" for _ in BLOCK_SIZES) + " |"]
    for dtype, kv in itertools.product(DTYPES, KV_CACHE_DTYPES):
        cells = []
        for block in BLOCK_SIZES:
            found = {r["head_size"]: r["outcome"] for r in rows
                     if (r["dtype"], r["kv_cache_dtype"], r["block_size"]) == (dtype, kv, block)}
            cells.append(", ".join(f"{h}: {found[h]}" for h in HEAD_SIZES))
        lines.append(f"| {dtype} | {kv} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: head size: outcome (runs = equal to the same-dtype oracle within the noise; refused = "
              "at the request, naming the setting; no engine = vLLM refuses to start)."]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump({"command": paths.command(), "rows": rows, "counts": counts}, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
