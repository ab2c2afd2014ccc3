// Dot products in bfloat16 (AVX512-BF16's vdpbf16ps), where the build targets them;
// BF16_DOTS says whether it does.

#pragma once

#include "float_dots.h"

namespace hogwild_cpu {

// bfloat16 dot products (AVX512-BF16's vdpbf16ps), built where the target has them: each
// 32-bit lane takes a pair of bfloat16 products, exact in float32, and adds both to its float32
// sum, so a register does 32 multiply-adds where a float FMA does 16. In a bfloat16 engine the
// op then rounds its turned query (and each value's weight) to bfloat16 before the dots, as
// vLLM's own bfloat16 attention does on AMX machines; the keys and values are the cache's, so
// nothing else is rounded. The sums, the softmax and the output stay in float32. Held to the
// bfloat16 oracle's noise, not to float32 (tests/test_cpu_native.py says the rule).
#if defined(__AVX512BF16__)
constexpr bool BF16_DOTS = true;

// A pair of bfloat16 values (first in the low half) in every 32-bit lane.
inline __m512bh pairs_of(uint32_t pair) { return (__m512bh)_mm512_set1_epi32(static_cast<int>(pair)); }
inline __m512bh pairs_of(const uint16_t* p) {
  uint32_t pair;
  __builtin_memcpy(&pair, p, sizeof(pair));
  return pairs_of(pair);
}
// Two weights rounded to bfloat16 as one pair, made in a register: two 16-bit stores read
// back as one 32-bit load stall on store forwarding (38% of the op's time when it did).
inline uint32_t pair_of(float first, float second) {
  return uint32_t(c10::BFloat16(first).x) | (uint32_t(c10::BFloat16(second).x) << 16);
}

// x[0..n) rounded to bfloat16 (to nearest, ties to even, as PyTorch rounds), n a multiple of 16.
inline void round_to_bf16(const float* x, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
    __builtin_memcpy(out + i, &h, sizeof(h));
  }
}

// Rows a and b of 32 bfloat16 each, interleaved into pairs (a[i], b[i]): unpacking works within
// 128-bit lanes, so `low` holds the pairs of i = 8k + 0..3 and `high` those of i = 8k + 4..7
// (k = 0..3); `in_order` puts two registers of their float sums back in the order of i.
inline void interleave(const uint16_t* a, const uint16_t* b, __m512bh& low, __m512bh& high) {
  const __m512i x = _mm512_loadu_si512(a), y = _mm512_loadu_si512(b);
  low = (__m512bh)_mm512_unpacklo_epi16(x, y);
  high = (__m512bh)_mm512_unpackhi_epi16(x, y);
}
inline void in_order(__m512 low, __m512 high, __m512& first, __m512& second) {
  // lane k of low holds i = 8(k / 4) + k % 4, of high i + 4; permutex2var's index 16 + k picks high's k
  const __m512i a = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i b = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  first = _mm512_permutex2var_ps(low, a, high);
  second = _mm512_permutex2var_ps(low, b, high);
}

// scores[i][j] = q[i] . key[j]  for Q queries (bfloat16, head_dim values each) and the 32
// slots from j0 of one block of dimension-major keys (vLLM's CPU layout): a pair of
// dimensions' rows, interleaved, serves every query.
template <int Q>
void scores_bf16_block(const uint16_t* const* q, const uint16_t* keys, int64_t key_dim, int64_t j0, int64_t dims,
                       float* const* scores) {
  __m512 acc[Q][2];
  for (int i = 0; i < Q; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t d = 0; d < dims; d += 2) {
    __m512bh low, high;
    interleave(keys + d * key_dim + j0, keys + (d + 1) * key_dim + j0, low, high);
    for (int i = 0; i < Q; ++i) {
      const __m512bh x = pairs_of(q[i] + d);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], x, low);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], x, high);
    }
  }
  for (int i = 0; i < Q; ++i) {
    __m512 first, second;
    in_order(acc[i][0], acc[i][1], first, second);
    _mm512_storeu_ps(scores[i] + j0, first);
    _mm512_storeu_ps(scores[i] + j0 + 16, second);
  }
}

// The same for `queries` queries and the slots [lo, hi) (whole runs of 32 around them; block
// sizes a multiple of 32, an even head_dim).
inline void scores_bf16(const uint16_t* const* q, int64_t queries, const c10::BFloat16* keys, int64_t key_dim,
                        int64_t lo, int64_t hi, int64_t dims, float* const* scores) {
  const auto* k = reinterpret_cast<const uint16_t*>(keys);
  for (int64_t j0 = lo - lo % 32; j0 < hi; j0 += 32)
    for (int64_t i = 0; i < queries;) {
      const int64_t left = queries - i;
      if (left >= 8) { scores_bf16_block<8>(q + i, k, key_dim, j0, dims, scores + i); i += 8; }
      else if (left >= 4) { scores_bf16_block<4>(q + i, k, key_dim, j0, dims, scores + i); i += 4; }
      else if (left >= 2) { scores_bf16_block<2>(q + i, k, key_dim, j0, dims, scores + i); i += 2; }
      else { scores_bf16_block<1>(q + i, k, key_dim, j0, dims, scores + i); i += 1; }
    }
}

// out[g][d] += sum_j weights[g][j - lo] * value[j][d]  for G heads and D dimensions of
// slot-major values (vLLM's CPU layout), the weights rounded to bfloat16: two slots' rows,
// interleaved, serve every head. An odd last slot pairs with itself at weight 0.
template <int D, int G>
void add_values_bf16_heads(const float* weights, int64_t weights_stride, const c10::BFloat16* values,
                           int64_t value_slot, int64_t lo, int64_t hi, float* out) {
  constexpr int CHUNKS = D / 32;
  const auto* v = reinterpret_cast<const uint16_t*>(values);
  __m512 acc[G][CHUNKS][2];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < CHUNKS; ++c) acc[g][c][0] = acc[g][c][1] = _mm512_setzero_ps();
  for (int64_t j = lo; j < hi; j += 2) {
    const bool pair = j + 1 < hi;
    uint32_t w[G];
    for (int g = 0; g < G; ++g) {
      const float* wg = weights + g * weights_stride + (j - lo);
      w[g] = pair_of(wg[0], pair ? wg[1] : 0.0f);
    }
    const uint16_t* first = v + j * value_slot;
    const uint16_t* second = pair ? first + value_slot : first;
    for (int c = 0; c < CHUNKS; ++c) {
      __m512bh low, high;
      interleave(first + 32 * c, second + 32 * c, low, high);
      for (int g = 0; g < G; ++g) {
        const __m512bh x = pairs_of(w[g]);
        acc[g][c][0] = _mm512_dpbf16_ps(acc[g][c][0], x, low);
        acc[g][c][1] = _mm512_dpbf16_ps(acc[g][c][1], x, high);
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < CHUNKS; ++c) {
      __m512 a, b;
      in_order(acc[g][c][0], acc[g][c][1], a, b);
      float* o = out + g * D + 32 * c;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a));
      _mm512_storeu_ps(o + 16, _mm512_add_ps(_mm512_loadu_ps(o + 16), b));
    }
}

// Whether add_values_bf16 runs for head_dim D: whole chunks of 32, and at most 4 heads' x
// chunks' x 2 accumulators held in registers.
template <int D>
constexpr bool bf16_values_fit() { return D > 0 && D % 32 == 0 && D <= 128; }

template <int D>
void add_values_bf16(const float* weights, int64_t weights_stride, const c10::BFloat16* values, int64_t value_slot,
                     int64_t lo, int64_t hi, int64_t q_per_kv, float* out) {
  constexpr int HEADS_AT_ONCE = D <= 64 ? 4 : 2;  // 4 x 2 x 2 or 2 x 4 x 2 accumulators: 16
  for (int64_t g = 0; g < q_per_kv; g += HEADS_AT_ONCE) {
    const float* w = weights + g * weights_stride;
    float* o = out + g * D;
    switch (std::min<int64_t>(HEADS_AT_ONCE, q_per_kv - g)) {
      case 1: add_values_bf16_heads<D, 1>(w, weights_stride, values, value_slot, lo, hi, o); break;
      case 2: add_values_bf16_heads<D, 2>(w, weights_stride, values, value_slot, lo, hi, o); break;
      case 3: add_values_bf16_heads<D, 3>(w, weights_stride, values, value_slot, lo, hi, o); break;
      default: add_values_bf16_heads<D, 4>(w, weights_stride, values, value_slot, lo, hi, o);
    }
  }
}

// The amx layout (keys in dimension pairs, values in slot pairs): its 64-byte rows are the
// pairs vdpbf16ps takes, as they are.
template <int Q>
void scores_amx_bf16_tile(const uint16_t* const* q, const c10::BFloat16* keys, int64_t dims, int64_t s0,
                          float* const* scores) {
  __m512 acc[Q];
  for (int k = 0; k < Q; ++k) acc[k] = _mm512_setzero_ps();
  const c10::BFloat16* tile = keys + (s0 / 16) * dims * 16;
  for (int64_t i = 0; i < dims / 2; ++i) {
    const __m512bh key = (__m512bh)_mm512_loadu_si512(tile + i * 32);
    for (int k = 0; k < Q; ++k) acc[k] = _mm512_dpbf16_ps(acc[k], pairs_of(q[k] + 2 * i), key);
  }
  for (int k = 0; k < Q; ++k) _mm512_storeu_ps(scores[k] + s0, acc[k]);
}

inline void scores_amx_bf16(const uint16_t* const* q, int64_t queries, const c10::BFloat16* keys, int64_t lo,
                            int64_t hi, int64_t dims, float* const* scores) {
  for (int64_t s0 = lo - lo % 16; s0 < hi; s0 += 16)
    for (int64_t i = 0; i < queries;) {
      const int64_t left = queries - i;
      if (left >= 8) { scores_amx_bf16_tile<8>(q + i, keys, dims, s0, scores + i); i += 8; }
      else if (left >= 4) { scores_amx_bf16_tile<4>(q + i, keys, dims, s0, scores + i); i += 4; }
      else if (left >= 2) { scores_amx_bf16_tile<2>(q + i, keys, dims, s0, scores + i); i += 2; }
      else { scores_amx_bf16_tile<1>(q + i, keys, dims, s0, scores + i); i += 1; }
    }
}

inline void add_values_amx_bf16(const float* weights, int64_t weights_stride, const c10::BFloat16* values,
                                int64_t block_size, int64_t lo, int64_t hi, int64_t q_per_kv, int64_t dims,
                                float* out) {
  thread_local std::vector<uint32_t> pairs;  // slot pair p's weights at p - lo / 2, rounded
  const int64_t first = lo / 2, last = (hi - 1) / 2;
  pairs.resize(last - first + 1);
  for (int64_t g = 0; g < q_per_kv; ++g) {
    const float* w = weights + g * weights_stride - lo;  // w[j]: slot j's weight
    for (int64_t p = first; p <= last; ++p)  // a slot of the pair outside [lo, hi) weighs 0
      pairs[p - first] = pair_of(2 * p >= lo ? w[2 * p] : 0.0f, 2 * p + 1 < hi ? w[2 * p + 1] : 0.0f);
    float* o = out + g * dims;
    for (int64_t t = 0; t < dims / 16; ++t) {
      __m512 acc = _mm512_loadu_ps(o + t * 16);
      for (int64_t p = first; p <= last; ++p)
        acc = _mm512_dpbf16_ps(acc, pairs_of(pairs[p - first]),
                               (__m512bh)_mm512_loadu_si512(values + t * block_size * 16 + p * 32));
      _mm512_storeu_ps(o + t * 16, acc);
    }
  }
}
#else
constexpr bool BF16_DOTS = false;
#endif

}  // namespace hogwild_cpu
