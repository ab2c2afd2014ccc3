"""Fetch a vLLM release's source distribution and patch it so that its CPU build needs only what the package
registries carry. Used by scripts/build_vllm.sh; run alone: `python scripts/vllm_cpu_source.py 0.34.0 DIR`.

Each patch below names what upstream's CPU build wants from outside the registries, and what stands in:

- oneDNN: CMake clones its source from GitHub (v3.13). PyPI's `onednn`/`onednn-devel` wheels carry the built
  library and public headers, but vLLM's `dnnl_helper.cpp` includes oneDNN's internal source headers
  (`common/memory.hpp`). Without a source tree (`FETCHCONTENT_SOURCE_DIR_ONEDNN`, vLLM's own variable), the
  oneDNN GEMM ops are left out: vLLM then runs unquantized linear layers through torch (`_supports_onednn`
  is False), which is vLLM's own fallback. (With a source tree, the oneDNN ops are built as upstream does;
  untried here, where there is none.)
- triton-cpu: on x86 the CPU worker runs the GPU Model Runner V2, whose input kernels are Triton, served by
  triton-cpu from a GitHub release. The patched build compiles the C++ kernels of vLLM's standalone CPU runner
  (upstream builds them for non-x86 CPUs) and lets x86 use that runner when no Triton backend is active.
- gcc >= 12.3 on x86: Debian 12 ships 12.2.0; the version floor is lowered to 12.2.
- DeepSeek-V4's sparse MLA kernel: gcc 12.2 stops on it with an internal compiler error; a stub that refuses.
- one `_C` for this CPU instead of three ISA variants (AMX, AVX-512, AVX2): a third of the compile. Which
  one follows the CPU that builds it (`isa_variant`), as upstream's loader picks among its three: the AMX
  `_C` (AVX512-BF16, VNNI and AMX flags, with sglang's kernels and the WNA16 GEMM) where the CPU has
  AVX512-BF16, upstream's AVX-512 sources and flags (the WNA16 GEMM, no sglang kernels) where it has AVX-512F
  only, its AVX2 sources and flags elsewhere; vLLM then imports that `_C` whatever the CPU (upstream's
  `import_kernels` looks for `_C_AVX2` on AVX2 CPUs and found nothing, so no engine started there:
  "'_OpNamespace' '_C' object has no attribute 'init_cpu_memory_env'"). The AMX `_C` on an AVX-512F CPU
  without AVX512-BF16 (an Intel Xeon of the Skylake-SP to Ice Lake kind) dies of an illegal instruction in
  its first bfloat16 rotary embedding (measured 2026-12-07: the suite stopped there, "Fatal Python error:
  Illegal instruction").
"""
import hashlib
import re
import sys
import tarfile
import urllib.request
from pathlib import Path


FLASH_MLA_STUB = """// vllm-hogwild stub: gcc 12.2 cannot compile the original (flash_mla.cpp.orig).
#include <torch/all.h>

void flash_mla_with_kvcache_cpu(at::Tensor& out, at::Tensor& q, at::Tensor& window_cache_2d,
                                at::Tensor& window_slots, int64_t window_block_size,
                                at::Tensor& compressed_cache_2d, at::Tensor& compressed_slots,
                                int64_t compressed_block_size, at::Tensor& attn_sink, double scale) {
  TORCH_CHECK(false, "DeepSeek-V4 sparse MLA is not in this build (gcc 12.2 cannot compile it)");
}
"""


def sdist_url(version: str) -> tuple[str, str]:
    """(url, sha256) of vLLM's source distribution on PyPI's simple index."""
    page = urllib.request.urlopen("https://pypi.org/simple/vllm/", timeout=60).read().decode()
    m = re.search(r'href="([^"]*/vllm-%s\.tar\.gz)#sha256=([0-9a-f]{64})"' % re.escape(version), page)
    if not m:
        sys.exit(f"vllm {version}: no source distribution on PyPI")
    return m.group(1), m.group(2)


def download(version: str, into: Path, variant: str) -> Path:
    """The release's source tree, fresh from its tarball, in a folder per variant (each is patched its own way)."""
    tarball = into / f"vllm-{version}.tar.gz"
    if not tarball.exists():
        url, sha = sdist_url(version)
        data = urllib.request.urlopen(url, timeout=600).read()
        if hashlib.sha256(data).hexdigest() != sha:
            sys.exit(f"vllm {version}: sha256 mismatch")
        tarball.write_bytes(data)
    folder = into / f"src-{variant}"  # (not a folder of an earlier layout, where "avx512" was the AMX one)
    src = folder / f"vllm-{version}"
    if not src.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as t:
            t.extractall(folder, filter="data")
    return src


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    # Applied before: an insertion (``new`` keeps ``old``) left ``new``; any other edit left ``new``
    # and no ``old`` (a removal: no ``old``).
    applied = new in text if old in new else old not in text and new in text
    if applied:
        return
    if old not in text:
        sys.exit(f"{path}: the text to patch is not there; this release needs its own patch:\n{old}")
    path.write_text(text.replace(old, new, 1))


def isa_variant(flags: set[str] | None = None) -> str:
    """Which of upstream's x86 `_C` variants this machine (its CPU ``flags``) builds, as upstream's
    loader would pick: "amx" (its AMX `_C`, built with AVX512-BF16 and VNNI) where the CPU has
    AVX512-BF16, "avx512" (its `_C_AVX512`) where it has AVX-512F only, else "avx2"."""
    if flags is None:
        try:
            flags = set(Path("/proc/cpuinfo").read_text().split())
        except OSError:
            flags = set()
    return "amx" if "avx512_bf16" in flags else "avx512" if "avx512f" in flags else "avx2"


def patch(src: Path, with_onednn: bool, variant: str) -> None:
    cmake = src / "cmake/cpu_extension.cmake"
    replace(cmake, "CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12.3))",
            "CMAKE_CXX_COMPILER_VERSION VERSION_GREATER_EQUAL 12.2))")
    if not with_onednn:
        replace(cmake, "if (ENABLE_X86_ISA OR (ASIMD_FOUND AND NOT APPLE_SILICON_FOUND) OR POWER9_FOUND",
                "if (FALSE AND (ENABLE_X86_ISA OR (ASIMD_FOUND AND NOT APPLE_SILICON_FOUND)) OR POWER9_FOUND")
    # One _C through the generic branch (it builds the standalone runner's kernels) with the variant's flags.
    flags = {"amx": "set(CXX_COMPILE_FLAGS ${CXX_COMPILE_FLAGS_AVX512_AMX})\n"
                    "add_compile_definitions(CPU_CAPABILITY_AMXBF16)\n",
             "avx512": "set(CXX_COMPILE_FLAGS ${CXX_COMPILE_FLAGS_AVX512})\n",
             "avx2": "set(CXX_COMPILE_FLAGS ${CXX_COMPILE_FLAGS_AVX2})\n"}[variant]
    replace(cmake, "# TODO: Refactor this\nif (ENABLE_X86_ISA)",
            flags + "if(USE_ONEDNN)\n    add_compile_definitions(VLLM_WITH_ONEDNN)\nendif()\n"
            "# TODO: Refactor this\nif (ENABLE_X86_ISA)")
    replace(cmake, "if (ENABLE_X86_ISA)\n    set(VLLM_EXT_SRC_SGL", "if (FALSE)\n    set(VLLM_EXT_SRC_SGL")
    # The shared-memory collectives (tensor parallel) are in the x86 AVX-512 lists only (the AVX2 bindings
    # leave them out: vLLM's CPU communicator then uses torch.distributed's).
    if variant in ("amx", "avx512"):
        replace(cmake, '    "csrc/cpu/cpu_isa.cpp"\n    "csrc/cpu/sampling_kernels.cpp"\n    "csrc/cpu/fp8_quant.cpp"\n'
                       '    "csrc/cpu/torch_bindings.cpp")\n\nif (CMAKE_SYSTEM_PROCESSOR MATCHES "riscv64" AND',
                '    "csrc/cpu/cpu_isa.cpp"\n    "csrc/cpu/sampling_kernels.cpp"\n    "csrc/cpu/fp8_quant.cpp"\n'
                '    "csrc/cpu/shm.cpp"\n'
                '    "csrc/cpu/torch_bindings.cpp")\n\nif (CMAKE_SYSTEM_PROCESSOR MATCHES "riscv64" AND')
    # The kernels the x86 AMX variant adds (sglang's, the WNA16 GEMM): its bindings register them. The
    # AVX-512 variant adds the WNA16 GEMM only (its bindings register sglang's under __AVX512BF16__).
    if variant == "avx512":
        replace(cmake, 'if(USE_ONEDNN)\n    set(VLLM_EXT_SRC\n        "csrc/cpu/dnnl_kernels.cpp"',
                'if (ENABLE_X86_ISA)\n    set(VLLM_EXT_SRC "csrc/cpu/cpu_wna16.cpp" ${VLLM_EXT_SRC})\nendif()\n\n'
                'if(USE_ONEDNN)\n    set(VLLM_EXT_SRC\n        "csrc/cpu/dnnl_kernels.cpp"')
    if variant == "amx":
        replace(cmake, 'if(USE_ONEDNN)\n    set(VLLM_EXT_SRC\n        "csrc/cpu/dnnl_kernels.cpp"',
                'if (ENABLE_X86_ISA)\n    file(GLOB VLLM_SGL_SRC "csrc/cpu/sgl-kernels/*.cpp")\n'
                '    list(REMOVE_ITEM VLLM_SGL_SRC "${CMAKE_CURRENT_SOURCE_DIR}/csrc/cpu/sgl-kernels/fla.cpp")\n'
                '    set(VLLM_EXT_SRC "csrc/cpu/cpu_wna16.cpp" ${VLLM_SGL_SRC} ${VLLM_EXT_SRC})\nendif()\n\n'
                'if(USE_ONEDNN)\n    set(VLLM_EXT_SRC\n        "csrc/cpu/dnnl_kernels.cpp"')
    # gcc 12.2 stops with an internal compiler error on DeepSeek-V4's sparse MLA kernel (why upstream asks
    # for 12.3): it is built as a stub that refuses, so no other model is affected.
    mla = src / "csrc/cpu/sgl-kernels/flash_mla.cpp"
    if "vllm-hogwild stub" not in mla.read_text():
        mla.rename(mla.with_suffix(".cpp.orig"))
        mla.write_text(FLASH_MLA_STUB)
    bindings = src / "csrc/cpu/torch_bindings.cpp"
    replace(bindings, "  // Quantization\n#if defined(__AVX512F__) || defined(__AVX2__) ||",
            "  // Quantization\n#if defined(VLLM_WITH_ONEDNN) && (defined(__AVX512F__) || defined(__AVX2__) ||")
    replace(bindings, "defined(__riscv_v) || defined(__s390x__)\n  // Helper function to release oneDNN handlers",
            "defined(__riscv_v) || defined(__s390x__))\n  // Helper function to release oneDNN handlers")
    setup = src / "setup.py"
    replace(setup, '        ext_modules.append(CMakeExtension(name="vllm._C_AVX512"))\n'
                   '        ext_modules.append(CMakeExtension(name="vllm._C_AVX2"))\n', "")
    platform = src / "vllm/platforms/cpu.py"
    # One _C, whatever the x86 CPU (upstream's loader picks among three by the CPU's flags).
    replace(platform, "    def import_kernels(cls) -> None:\n        if Platform.get_cpu_architecture() in (CpuArchEnum.X86,):",
            "    def import_kernels(cls) -> None:\n        if False:  # vllm-hogwild's build: one _C on x86 too")
    replace(platform, "return not HAS_TRITON and cls.get_cpu_architecture() != CpuArchEnum.X86",
            "return not HAS_TRITON")
    replace(platform, "if cls.get_cpu_architecture() == CpuArchEnum.X86 and not HAS_TRITON:\n"
                      "            raise RuntimeError(\"vLLM on x86 CPUs requires Triton (triton-cpu).\")",
            "pass  # (vllm-hogwild's build: x86 without triton-cpu runs the standalone CPU runner)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--variant"]:  # (scripts/build_vllm.sh: a build of another variant is rebuilt)
        print(isa_variant())
        sys.exit(0)
    version, into = sys.argv[1], Path(sys.argv[2])
    into.mkdir(parents=True, exist_ok=True)
    variant = isa_variant()
    src = download(version, into, variant)
    patch(src, with_onednn="--with-onednn" in sys.argv, variant=variant)
    print(src)
