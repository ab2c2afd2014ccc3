// The machine's vector registers and the types the op computes in: one register of lanes,
// widened loads of the caches' dtypes, and the blocking constants sized to the registers.

#pragma once

#include <torch/extension.h>
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace hogwild_cpu {

// The machine's vector registers, as the build targets them (VLLM_HOGWILD_CPU_ISA, see
// cpu_native.py): 32 registers of 64 bytes with AVX-512, 16 of 32 bytes with AVX2. The dot
// loops (float_dots.h, bf16_dots.h) size their blocks of accumulators to these, so that every
// accumulator stays in a register: a GCC vector wider than the machine's registers is split,
// passed through memory and spilled (AVX2 ran this op ~12x slower than AVX-512 when its vectors
// were 64 bytes).
#ifdef __AVX512F__
constexpr int VECTOR_BYTES = 64;
constexpr int REGISTERS = 32;
#else
constexpr int VECTOR_BYTES = 32;
constexpr int REGISTERS = 16;
#endif
// Registers a block of accumulators may take: the rest hold the operands (a register or two
// of keys or values, a broadcast query or weight).
constexpr int ACCUMULATORS = REGISTERS - 4;

// One register of LANES values of T (GCC/Clang vector extension, the machine's width).
template <typename T>
struct Lanes {
  typedef T V __attribute__((vector_size(VECTOR_BYTES)));
  static constexpr int64_t N = VECTOR_BYTES / sizeof(T);
  static V load(const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(T* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }
};

// The compute type of a cache dtype C: double for double, float for the rest.
template <typename C>
using Compute = std::conditional_t<std::is_same_v<C, double>, double, float>;

// Lanes<T>::N values of type C from p, widened to a register of T.
template <typename T, typename C>
typename Lanes<T>::V widen(const C* p) {
  using V = typename Lanes<T>::V;
  if constexpr (std::is_same_v<C, T>) {
    return Lanes<T>::load(p);
  } else if constexpr (std::is_same_v<C, c10::BFloat16>) {  // bf16 is the top half of a float
    typedef uint16_t H __attribute__((vector_size(VECTOR_BYTES / 2)));
    typedef uint32_t W __attribute__((vector_size(VECTOR_BYTES)));
    H h;
    __builtin_memcpy(&h, p, sizeof(H));
    const W bits = __builtin_convertvector(h, W) << 16;
    V v;
    __builtin_memcpy(&v, &bits, sizeof(V));
    return v;
  } else {
    static_assert(std::is_same_v<C, c10::Half> && std::is_same_v<T, float>);
    V v;
#if defined(__AVX512F__)
    const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(__F16C__)
    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
    typedef _Float16 H __attribute__((vector_size(VECTOR_BYTES / 2)));
    H h;
    __builtin_memcpy(&h, p, sizeof(H));
    const V x = __builtin_convertvector(h, V);
#endif
    __builtin_memcpy(&v, &x, sizeof(V));
    return v;
  }
}

// Up to HEADS query heads of one KV head go through a block's values together: each register
// of values loaded once serves all of them.
constexpr int64_t HEADS = 4;

// Queries whose scores one register of keys serves at once: QUERIES x 2 sums in flight,
// enough to hide the latency of a fused multiply-add, and all of them in registers.
constexpr int QUERIES = REGISTERS == 32 ? 8 : 4;

}  // namespace hogwild_cpu
