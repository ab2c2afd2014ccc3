"""What each kind of x86 CPU gets: the flags read from /proc/cpuinfo, the op's build levels it
runs, and what vLLM's CPU build does there (the default dtype, the amx writer, fp8 caches)."""

from __future__ import annotations

from hogwild_kernels import isa
from vllm_hogwild import vllm_cpu

# First lines of /proc/cpuinfo on the two kinds of machine this project runs on (flags cut short).
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx f16c fma bmi1 bmi2 movbe avx2 sha_ni
processor\t: 1
model name\t: another
flags\t\t: sse2
"""
SAPPHIRE_RAPIDS = """model name\t: Intel(R) Xeon(R) Platinum 8481C
flags\t\t: sse2 avx f16c fma bmi1 bmi2 movbe avx2 avx512f avx512bw avx512cd avx512dq avx512vl avx512_bf16 amx_tile amx_bf16
"""
ICE_LAKE = """model name\t: Intel(R) Xeon(R) Gold 6338
flags\t\t: sse2 avx f16c fma bmi1 bmi2 movbe avx2 avx512f avx512bw avx512cd avx512dq avx512vl
"""


def test_the_flags_of_the_first_processor():
    cpu = isa.parse(ZEN3)
    assert cpu.model == "AMD EPYC 7B13" and "avx2" in cpu.flags and "sha_ni" in cpu.flags
    assert cpu.isa == "avx2" and cpu.named_flags == ["avx2", "fma"]
    assert isa.parse(SAPPHIRE_RAPIDS).isa == "avx512_bf16" and isa.parse(ICE_LAKE).isa == "avx512f"
    assert isa.parse("").isa == "none"


def test_the_levels_each_cpu_runs():
    runs = {name: [at for at in isa.LEVELS if isa.runs_level(isa.parse(text), at)]
            for name, text in (("zen3", ZEN3), ("spr", SAPPHIRE_RAPIDS), ("icl", ICE_LAKE))}
    assert runs == {"zen3": ["native", "x86-64-v3"], "spr": list(isa.LEVELS), "icl": list(isa.LEVELS)}
    assert not isa.runs_level(isa.parse("flags : sse2 avx"), "native")  # no AVX2: the PyTorch op
    assert not isa.runs_level(isa.parse(SAPPHIRE_RAPIDS, machine="aarch64"), "native")


def test_what_vllm_does_on_each_cpu():
    zen3, spr, icl = (isa.parse(t) for t in (ZEN3, SAPPHIRE_RAPIDS, ICE_LAKE))
    assert [vllm_cpu.default_dtype(c)[0] for c in (zen3, spr, icl)] == ["float32", "bfloat16", "float32"]
    assert "AVX512-BF16" in vllm_cpu.default_dtype(zen3)[1] and "slower" in vllm_cpu.default_dtype(zen3)[1]
    assert [vllm_cpu.vllm_kernel_build(c) for c in (zen3, spr, icl)] == ["avx2", "avx512_bf16", "avx512"]
    assert [vllm_cpu.vllm_writes_amx(c) for c in (zen3, spr, icl)] == [False, True, False]
    assert [vllm_cpu.fp8_kv_cache(c) for c in (zen3, spr, icl)] == [False, True, True]
    arm = isa.parse("flags : fp asimd", machine="aarch64")
    assert vllm_cpu.default_dtype(arm)[0] == "bfloat16" and not vllm_cpu.fp8_kv_cache(arm)
