"""What vLLM's CPU build does on this x86 CPU: one place for every choice its ISA makes here.

vLLM's CPU wheel ships three builds of its kernels and loads one by the CPU's flags
(``vllm/platforms/cpu.py``, ``import_kernels``): AVX-512 with AVX512-BF16, AVX-512 without,
and AVX2. What each lacks decides what a hogwild user gets on that CPU:

- bfloat16 matrix products: oneDNN has native bf16 GEMMs only with AVX512-BF16 or AMX tiles;
  elsewhere vLLM logs "Failed to create oneDNN linear, fallback to torch linear" and a bf16
  model runs slower than float32 (an AVX2 EPYC: median engine step 85 ms vs 51 ms). So the
  default dtype (``default_dtype``) is bfloat16 only where those exist.
- vLLM picks its amx cache layout only where AMX tiles exist, and its writer is only in the
  AVX512-BF16 build (``vllm_writes_amx``).
- fp8 KV caches: vLLM refuses them at start-up without AVX-512 or AMX (``fp8_kv_cache``).

Pure logic over ``hogwild_kernels.isa.Cpu`` (the flags), no torch, no vLLM.
"""

from __future__ import annotations

from hogwild_kernels.isa import Cpu, this_cpu

__all__ = ["Cpu", "this_cpu", "native_bf16_gemm", "default_dtype", "vllm_kernel_build", "vllm_writes_amx",
           "fp8_kv_cache"]


def native_bf16_gemm(cpu: Cpu) -> bool:
    """Whether oneDNN has native bfloat16 matrix products here (AVX512-BF16 or AMX)."""
    return cpu.x86 and (cpu.has("avx512_bf16") or cpu.has("amx_bf16"))


def default_dtype(cpu: Cpu) -> tuple[str, str]:
    """The model dtype a CPU server or demo takes when none is given, and why (for the log)."""
    if not cpu.x86:
        return "bfloat16", f"{cpu.machine}: vLLM's CPU docs recommend bfloat16"
    if native_bf16_gemm(cpu):
        which = "AVX512-BF16" if cpu.has("avx512_bf16") else "AMX"
        return "bfloat16", f"this CPU has {which}: oneDNN runs bfloat16 matrix products natively"
    return "float32", (f"this CPU ({cpu.isa}) has neither AVX512-BF16 nor AMX: oneDNN has no bfloat16 matrix "
                       "products here and bfloat16 runs slower than float32")


def vllm_kernel_build(cpu: Cpu) -> str:
    """Which of vLLM's x86 kernel builds loads here (``import_kernels``): avx512_bf16, avx512 or avx2."""
    if cpu.has("avx512f"):
        return "avx512_bf16" if cpu.has("avx512_bf16") else "avx512"
    return "avx2"


def vllm_writes_amx(cpu: Cpu) -> bool:
    """Whether vLLM's kernels here include its amx cache writer and packed weights: only the
    AVX512-BF16 build (``_C``) does. The plain AVX-512 build (``_C_AVX512``, an AVX-512F CPU
    without AVX512-BF16) has neither, as the AVX2 one: "Unsupported CPU attention configuration:
    ... isa=0" and no ``convert_weight_packed`` (measured on an Intel Xeon with AVX-512F and VNNI)."""
    return cpu.x86 and vllm_kernel_build(cpu) == "avx512_bf16"


def fp8_kv_cache(cpu: Cpu) -> bool:
    """Whether vLLM starts an engine with an fp8 KV cache here (AVX-512 or AMX)."""
    return cpu.x86 and (cpu.has("avx512f") or cpu.has("amx_tile"))
