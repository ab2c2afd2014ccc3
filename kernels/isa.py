"""This CPU's instruction sets, read from its flags, and the x86 levels the compiled op is built for.

The compiled fragment op (``cpu_native``) is built for one level (``LEVELS``, chosen with
``VLLM_HOGWILD_CPU_ISA``); ``runs_level`` says whether this CPU runs a level's instructions,
so that a build for a wider machine is never loaded here (it would die of SIGILL).

Pure logic: the flags come from ``/proc/cpuinfo`` (Linux), no torch.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

# The x86 levels the compiled op can be built for: the flags each needs (as /proc/cpuinfo
# names them) and the compiler's target. "native" is this machine's own (-march=native), which
# the op needs to have AVX2 and FMA at least; x86-64-v3 is AVX2 + FMA (Haswell, Zen 1-3),
# x86-64-v4 adds AVX-512 (Skylake-SP, Zen 4).
LEVELS = {
    "native": (("avx2", "fma"), "-march=native"),
    "x86-64-v3": (("avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe"), "-march=x86-64-v3"),
    "x86-64-v4": (("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
                  "-march=x86-64-v4"),
}

# The flags a machine record names (benchmarks), in this order.
NAMED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


@dataclass(frozen=True)
class Cpu:
    """This CPU as its flags show it."""

    model: str
    flags: frozenset[str]
    machine: str  # platform.machine(): x86_64, aarch64, ...

    @property
    def x86(self) -> bool:
        return self.machine in ("x86_64", "AMD64", "i686", "i386")

    def has(self, *names: str) -> bool:
        return all(n in self.flags for n in names)

    @property
    def isa(self) -> str:
        """The widest vector ISA, as the figures name it: avx512_bf16, avx512f, avx2 or none."""
        for name in ("avx512_bf16", "avx512f", "avx2"):
            if name in self.flags:
                return name
        return "none"

    @property
    def named_flags(self) -> list[str]:
        return [f for f in NAMED_FLAGS if f in self.flags]


def parse(cpuinfo: str, machine: str = "x86_64") -> Cpu:
    """A ``Cpu`` from the text of ``/proc/cpuinfo`` (its first processor's lines)."""
    model, flags = "", frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return Cpu(model or platform.processor() or machine, flags, machine)


@functools.cache
def this_cpu() -> Cpu:
    """This machine's CPU (no flags where ``/proc/cpuinfo`` cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        text = ""
    return parse(text, platform.machine())


def runs_level(cpu: Cpu, level: str) -> bool:
    """Whether this CPU runs code built for ``level`` (a key of ``LEVELS``)."""
    return cpu.x86 and cpu.has(*LEVELS[level][0])
