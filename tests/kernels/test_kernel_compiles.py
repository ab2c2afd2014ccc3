"""The Triton kernels compile for real GPUs, fit their shared memory, load their tiles as
wide vectors, and the plugin's default decode launch does not spill registers: what the
interpreter tests cannot show.

No GPU is needed: Triton's wheel carries ptxas, and ``benchmarks/gpu/kernel_resources.py``
compiles every launch variant for a named target and reads each kernel's resources
from its cubin. It runs in a subprocess, because this process has chosen the
interpreter (conftest) before Triton was imported."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import python_at_root
SHARED_LIMIT = {80: 166912, 90: 232448}


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(SHARED_LIMIT))
def test_kernels_compile_for_gpus(arch, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = python_at_root(["-m", "benchmarks.gpu.kernel_resources", "--arch", str(arch), "--out", str(tmp_path / "resources")],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    result = json.loads((tmp_path / "resources.json").read_text())
    assert result["target"] == f"sm_{arch}" and len(result["variants"]) >= 10
    for variant in result["variants"]:
        names = [k["kernel"] for k in variant["kernels"]]
        merge = [] if variant["fused_merge"] else ["_merge_splits_kernel"]
        assert names == ["_map_shared_keys_kernel", "_fragment_attn_kernel", *merge], variant["name"]
        for kernel in variant["kernels"]:
            assert 0 < kernel["registers"] <= 255 and kernel["shared_bytes"] <= SHARED_LIMIT[arch]
            assert kernel["narrow_global_loads"] == 0, (variant["name"], kernel)  # tiles load as wide vectors
    plugin_default = [v for v in result["variants"] if v["name"].startswith("decode, the plugin's default")]
    assert [k["stack_bytes"] for k in plugin_default[0]["kernels"]] == [0, 0, 0]
