"""What each Triton kernel of the plugin costs a GPU, found without one.

    python -m benchmarks.gpu.kernel_resources --arch 90 --out benchmarks/results/resources_sm90

Triton's wheel carries its own ptxas, so a kernel compiles for a named NVIDIA target on a
machine with no GPU. This script puts a stand-in for Triton's CUDA driver in place
(``CompileOnly``: it names the target, and records each compiled kernel instead of
loading and launching it), calls ``triton_op.fragment_attention`` on CPU tensors for each
variant below, and reports what ptxas gave each kernel: registers per thread, stack
bytes (local memory a thread uses: spilled registers, as these kernels' PTX declares no
local arrays), global loads of under 4 bytes, shared memory, warps and stages.

It shows what the interpreter tests cannot: that the kernels compile for a GPU, that they
fit its shared memory (the launch refuses them otherwise, as on a GPU), and where they
spill. Speed still needs a GPU (``kernel_bench.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("kernel_resources.py compiles kernels: run it without TRITON_INTERPRET=1")

import torch

from benchmarks.common import paths  # noqa: E402
from benchmarks.gpu.standalone import load_kernels  # noqa: E402

load_kernels()
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from hogwild_kernels import build, triton_op  # noqa: E402
from tests.helpers.paged import inv_freq_for, layout_views, random_cache, random_views  # noqa: E402

# Shared memory a block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin) and SM counts.
_TARGETS = {80: ("A100", 166912, 108), 89: ("L40S", 101376, 142), 90: ("H100", 232448, 132)}


class CompileOnly:
    """Triton's driver interface, enough of it to compile for ``arch`` and "launch": a
    launch records which compiled kernel it would run; loading a kernel reads its
    resources from the cubin with the wheel's ``cuobjdump``."""

    def __init__(self, arch: int) -> None:
        if arch not in _TARGETS:
            raise ValueError(f"arch {arch} unsupported; allowed: {sorted(_TARGETS)}")
        self.target = GPUTarget("cuda", arch, 32)
        self.max_shared, self.sms = _TARGETS[arch][1], _TARGETS[arch][2]
        self.resources: dict[str, dict] = {}  # by kernel hash
        self.launches: list[str] = []  # kernel hashes, in launch order
        self._loading: dict | None = None
        self.utils = self
        owner = self

        def launcher_cls(src, metadata):
            owner._loading = {"kernel": metadata.name, "hash": metadata.hash, "num_warps": metadata.num_warps,
                              "num_stages": metadata.num_stages, "shared_bytes": metadata.shared}
            kernel_hash = metadata.hash
            return lambda *args: owner.launches.append(kernel_hash)

        self.launcher_cls = launcher_cls

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_device_properties(self, device: int) -> dict:
        return {"max_shared_mem": self.max_shared, "multiprocessor_count": self.sms}

    def load_binary(self, name: str, cubin: bytes, shared: int, device: int):
        info = dict(self._loading, **cubin_resources(cubin))
        self.resources[info["hash"]] = info
        return None, None, info["registers"], info["stack_bytes"], 1024


def cubin_resources(cubin: bytes) -> dict:
    """Registers and stack bytes of the one kernel in ``cubin`` (``cuobjdump``), and how
    many of its global loads fetch under 4 bytes (SASS ``LDG.E.U16`` and the like: a tile
    loaded an element at a time, where 16-byte vectors should be)."""
    import triton.backends.nvidia as nvidia

    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage, sass = (subprocess.run([tool, flag, f.name], capture_output=True, text=True, check=True).stdout
                       for flag in ("--dump-resource-usage", "--dump-sass"))
    found = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    if found is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output:\n{usage}")
    return {"registers": int(found.group(1)), "stack_bytes": int(found.group(2)),
            "narrow_global_loads": len(re.findall(r"\bLDG\.E\.[US](?:8|16)\b", sass))}


@dataclass(frozen=True)
class Variant:
    """One launch configuration; the defaults are a Qwen3-8B-like decode step of a
    4-worker group as the plugin's CUDA backend launches it (bf16, vLLM's block size 16)."""

    name: str
    dtype: torch.dtype = torch.bfloat16
    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    rotary_dim: int = 128
    neox: bool = True
    workers: int = 4
    decode: bool = True
    block_size: int = 16
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3
    fused_merge: bool = False


VARIANTS = [
    Variant("decode, the plugin's default"),
    Variant("decode, fused merge", fused_merge=True),
    Variant("decode, 8 warps, 2 stages", num_warps=8, num_stages=2),
    Variant("decode, 128-key tiles, 2 stages", block_n=128, num_stages=2),
    Variant("decode, W=8", workers=8),
    Variant("decode, fp16", dtype=torch.float16),
    Variant("decode, fp32", dtype=torch.float32),
    Variant("decode, GPT-J style, partial rotary", neox=False, rotary_dim=64),
    Variant("decode, MHA (GQA group 1)", q_heads=8),
    Variant("decode, SmolLM2 heads (9 q / 3 KV, head_dim 64)", q_heads=9, kv_heads=3, head_dim=64, rotary_dim=64),
    Variant("prefill (several query rows per worker)", decode=False),
    Variant("prefill, block size 32", decode=False, block_size=32),
]


def compile_variant(variant: Variant, device: CompileOnly) -> list[dict]:
    """Launch ``variant`` once on CPU tensors through the stand-in driver; the resources of
    every kernel the launch ran (the key map, attention, the merge)."""
    rng = random.Random(0)
    if variant.decode:
        lengths, views = layout_views(variant.workers, 1024, "combined")
    else:
        lengths, views = random_views(rng, 2, variant.workers, variant.block_size, 300, False, shared=True)
    cache = random_cache(lengths, variant.block_size, variant.kv_heads, variant.head_dim, variant.dtype,
                         torch.Generator().manual_seed(0))
    q = torch.zeros(sum(v.num_rows for v in views), variant.q_heads, variant.head_dim, dtype=variant.dtype)
    table = build(views)
    launch = triton_op.plan(table, variant.q_heads // variant.kv_heads, block_n=variant.block_n)
    first = len(device.launches)
    triton_op.fragment_attention(q, cache.key, cache.value, cache.block_table, table,
                                 inv_freq_for(variant.rotary_dim), variant.neox, variant.head_dim**-0.5,
                                 launch=launch, num_splits=4, fused_merge=variant.fused_merge,
                                 num_warps=variant.num_warps, num_stages=variant.num_stages)
    return [device.resources[h] for h in dict.fromkeys(device.launches[first:])]


def _commit() -> str:
    """The commit the kernels come from, ``-dirty`` if ``kernels/`` has changes since
    (``unknown`` without git)."""
    try:
        git = ["git", "-C", paths.ROOT]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        changed = subprocess.run([*git, "status", "--porcelain", "--", "kernels"], capture_output=True, text=True,
                                 check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")


def report(arch: int, variants: list[Variant]) -> dict:
    device = CompileOnly(arch)
    driver.set_active(device)  # this process compiles only, from here on
    rows = []
    for variant in variants:
        t0 = time.time()
        kernels = compile_variant(variant, device)
        config = {k: str(v) if isinstance(v, torch.dtype) else v for k, v in dataclasses.asdict(variant).items()}
        rows.append({**config, "compile_s": round(time.time() - t0, 1), "kernels": kernels})
        for k in kernels:
            print(f"{variant.name:50s} {k['kernel']:24s} {k['registers']:3d} regs  {k['stack_bytes']:4d} B stack"
                  f"  {k['narrow_global_loads']:3d} narrow loads  {k['shared_bytes']:6d} B shared"
                  f"  {k['num_warps']} warps", flush=True)
    return {"target": f"sm_{arch}", "like": _TARGETS[arch][0], "triton": triton.__version__, "commit": _commit(),
            "torch": torch.__version__, "command": paths.command(), "date": time.strftime("%Y-%m-%d"),
            "variants": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help=f"compute capability x 10: {sorted(_TARGETS)}")
    parser.add_argument("--only", default="", help="variants whose name contains this text")
    parser.add_argument("--out", help="write <out>.json")
    args = parser.parse_args()
    result = report(args.arch, [v for v in VARIANTS if args.only in v.name])
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
    else:
        json.dump(result, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
