// Fragment attention on the CPU: one pass over a group's visible keys per KV head.
//
// The work list (built once per step by cpu_native.prepare) gives every group its *tiles*
// (one cache block of one of its sources each) and every tile its *entries*: the rows of
// the group that see a slot of it, each with the run of slots [lo, hi) it sees and the
// *turn* (an index into a cos/sin table) that rotates the row's query from its home
// position to the place where that block's keys sit in the row's view.
//
// A task walks one group's tiles for one KV head (or a run of them, when there are fewer
// groups than threads: the runs' partial softmaxes are merged after). Each tile is read
// from memory once and serves every row of the group while it is in the core's cache: a
// group of W workers reads its keys once per step, not W times. Each register of keys
// serves up to QUERIES queries (rows x heads) at once, and a row's softmax is kept online
// (flash attention's running max and sum), so no score outlives its tile. A row's query is
// rotated once per fragment (when its turn changes), not per key.
//
// A tile's block is the cache's or the packed store's (tile_stored): a copy of a group's
// committed history, keys turned to their index in it, filled by `pack` as steps commit.
//
// Layout: caches [blocks, block_size, kv_heads, D] with any strides (the store likewise);
// vLLM's CPU cache keeps a block's keys dimension-major (stride 1 along the slots), which the
// score loop uses.
//
// Types: the caches, q and out are the model's dtype C (float32, bfloat16, float16; float64
// for the tests); every sum, the softmax and the packed store are in the compute type T
// (float, or double for float64). Half-width values are widened as they are loaded, and the
// output rounded once, at the end, to C.

#include <torch/extension.h>

#include <array>
#include <map>
#include <set>
#include <tuple>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

namespace {

struct Cache {
  const void* data;
  int64_t block, slot, head, dim;  // strides, in elements
  bool amx = false;  // vLLM's amx layout (bfloat16) inside each (block, head): slot and dim strides unused
};


// The inner loops: the math of one entry, for the `group` query heads of one KV head.

// q_turned[g] = q[g] * cos + q_partner[g] * sin  (q_partner[g][d] = q[g][perm[d]]; the sign
// of the rotation folded into sin)
template <typename T>
void turn(const T* __restrict__ q, const T* __restrict__ q_partner, const T* __restrict__ cos,
          const T* __restrict__ sin, int64_t group, int64_t dim, T* __restrict__ out) {
  for (int64_t g = 0; g < group; ++g)
    for (int64_t d = 0; d < dim; ++d) out[g * dim + d] = q[g * dim + d] * cos[d] + q_partner[g * dim + d] * sin[d];
}

// The machine's vector registers, as the build targets them (VLLM_HOGWILD_CPU_ISA, see
// cpu_native.py): 32 registers of 64 bytes with AVX-512, 16 of 32 bytes with AVX2. The loops
// below size their blocks of accumulators to these, so that every accumulator stays in a
// register: a GCC vector wider than the machine's registers is split, passed through memory
// and spilled (AVX2 ran this op ~12x slower than AVX-512 when its vectors were 64 bytes).
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

// vLLM's amx layout, where AMX tiles want them: a (block, head)'s keys in tiles of 16 slots,
// each [D/2][16][2] (the two dimensions of a pair side by side, slot by slot); its values in
// tiles of 16 dimensions, each [block_size/2][16][2] (two slots side by side, dimension by
// dimension). Checked against vLLM's writer in the tests.
inline int64_t amx_key_at(int64_t slot, int64_t d, int64_t dims) {
  return (slot / 16) * dims * 16 + (d / 2) * 32 + (slot % 16) * 2 + d % 2;
}
inline int64_t amx_value_at(int64_t slot, int64_t d, int64_t block_size) {
  return (d / 16) * block_size * 16 + (slot / 2) * 32 + (d % 16) * 2 + slot % 2;
}

// Lanes<float>::N pairs of bfloat16 (one register's bytes) as two registers of floats: the
// first and the second of each pair (a bfloat16 is the top half of a float).
inline void split_pairs(const c10::BFloat16* p, Lanes<float>::V& first, Lanes<float>::V& second) {
  typedef uint32_t W __attribute__((vector_size(VECTOR_BYTES)));
  W bits;
  __builtin_memcpy(&bits, p, sizeof(W));
  const W lo = bits << 16, hi = bits & 0xffff0000u;
  __builtin_memcpy(&first, &lo, sizeof(W));
  __builtin_memcpy(&second, &hi, sizeof(W));
}

// An amx tile is 16 slots (keys) or 16 dimensions (values) wide: this many registers of floats.
constexpr int64_t AMX_REGISTERS = 16 / Lanes<float>::N;

// Up to HEADS query heads of one KV head go through a block's values together: each register
// of values loaded once serves all of them.
constexpr int64_t HEADS = 4;

// Queries whose scores one register of keys serves at once: QUERIES x 2 sums in flight,
// enough to hide the latency of a fused multiply-add, and all of them in registers.
constexpr int QUERIES = REGISTERS == 32 ? 8 : 4;

// scores[i][j] = q[i] . key[j]  for Q queries and the R registers of slots from j0 of one
// block of dimension-major keys (vLLM's CPU layout).
template <typename T, typename K, int Q, int R>
void scores_block(const T* const* q, const K* __restrict__ keys, int64_t key_dim, int64_t j0, int64_t dims,
                  T* const* scores) {
  using L = Lanes<T>;
  typename L::V acc[Q][R] = {};
  for (int64_t d = 0; d < dims; ++d) {
    typename L::V k[R];
    for (int r = 0; r < R; ++r) k[r] = widen<T>(keys + d * key_dim + j0 + r * L::N);
    for (int i = 0; i < Q; ++i) {
      const T x = q[i][d];
      for (int r = 0; r < R; ++r) acc[i][r] += x * k[r];
    }
  }
  for (int i = 0; i < Q; ++i)
    for (int r = 0; r < R; ++r) L::store(scores[i] + j0 + r * L::N, acc[i][r]);
}

// The same for the slots [lo, hi), two registers at a time; a register may run past `hi`
// inside the block (those scores are stored but never read).
template <typename T, typename K, int Q>
void scores_run(const T* const* q, const K* keys, int64_t key_dim, int64_t block_size, int64_t lo, int64_t hi,
                int64_t dims, T* const* scores) {
  constexpr int64_t N = Lanes<T>::N;
  for (int64_t j0 = lo - lo % N; j0 < hi; j0 += 2 * N) {
    if (j0 + N < hi && j0 + 2 * N <= block_size)
      scores_block<T, K, Q, 2>(q, keys, key_dim, j0, dims, scores);
    else
      scores_block<T, K, Q, 1>(q, keys, key_dim, j0, dims, scores);
  }
}

// scores[i][j] = q[i] . key[j]  for `queries` queries (pointers to head_dim values each) and
// the slots j of [lo, hi) of one block, stored at slot j of each query's row of scores.
template <typename T, typename K>
void scores_of(const T* const* q, int64_t queries, const K* __restrict__ keys, const Cache& c, int64_t block_size,
               int64_t lo, int64_t hi, int64_t dims, T* const* scores) {
  if (c.slot == 1 && block_size % Lanes<T>::N == 0) {
    for (int64_t i = 0; i < queries;) {
      const int64_t left = queries - i;
      if (left >= QUERIES) {
        scores_run<T, K, QUERIES>(q + i, keys, c.dim, block_size, lo, hi, dims, scores + i);
        i += QUERIES;
      } else if (QUERIES > 4 && left >= 4) {
        scores_run<T, K, 4>(q + i, keys, c.dim, block_size, lo, hi, dims, scores + i);
        i += 4;
      } else if (left >= 2) {
        scores_run<T, K, 2>(q + i, keys, c.dim, block_size, lo, hi, dims, scores + i);
        i += 2;
      } else {
        scores_run<T, K, 1>(q + i, keys, c.dim, block_size, lo, hi, dims, scores + i);
        i += 1;
      }
    }
    return;
  }
  for (int64_t i = 0; i < queries; ++i)
    for (int64_t j = lo; j < hi; ++j) {
      T acc = 0;
      for (int64_t d = 0; d < dims; ++d) acc += q[i][d] * static_cast<T>(keys[j * c.slot + d * c.dim]);
      scores[i][j] = acc;
    }
}

// scores[i][j] = q[i] . key[j] over the amx layout: Q queries, the 16 slots of one key tile
// from s0; a dimension pair's keys of the 16 slots are 64 bytes, AMX_REGISTERS loads.
template <int Q>
void scores_amx_tile(const float* const* q, const c10::BFloat16* keys, int64_t dims, int64_t s0,
                     float* const* scores) {
  using L = Lanes<float>;
  typename L::V acc[Q][AMX_REGISTERS] = {};
  const c10::BFloat16* tile = keys + (s0 / 16) * dims * 16;
  for (int64_t i = 0; i < dims / 2; ++i)
    for (int64_t r = 0; r < AMX_REGISTERS; ++r) {
      typename L::V first, second;
      split_pairs(tile + i * 32 + r * 2 * L::N, first, second);
      for (int k = 0; k < Q; ++k) acc[k][r] += q[k][2 * i] * first + q[k][2 * i + 1] * second;
    }
  for (int k = 0; k < Q; ++k)
    for (int64_t r = 0; r < AMX_REGISTERS; ++r) L::store(scores[k] + s0 + r * L::N, acc[k][r]);
}

template <int Q>
void scores_amx_run(const float* const* q, const c10::BFloat16* keys, int64_t lo, int64_t hi, int64_t dims,
                    float* const* scores) {
  for (int64_t s0 = lo - lo % 16; s0 < hi; s0 += 16) scores_amx_tile<Q>(q, keys, dims, s0, scores);
}

void scores_amx(const float* const* q, int64_t queries, const c10::BFloat16* keys, int64_t lo, int64_t hi,
                int64_t dims, float* const* scores) {
  for (int64_t i = 0; i < queries;) {
    const int64_t left = queries - i;
    if (left >= 4) {
      scores_amx_run<4>(q + i, keys, lo, hi, dims, scores + i);
      i += 4;
    } else if (left >= 2) {
      scores_amx_run<2>(q + i, keys, lo, hi, dims, scores + i);
      i += 2;
    } else {
      scores_amx_run<1>(q + i, keys, lo, hi, dims, scores + i);
      i += 1;
    }
  }
}

// out[g] += sum_j weights[g][j - lo] * value[j]  over the amx layout: a pair of slots' values
// of 16 dimensions are 64 bytes, AMX_REGISTERS loads; a slot of the pair outside [lo, hi)
// weighs 0.
void add_values_amx(const float* weights, int64_t weights_stride, const c10::BFloat16* values, int64_t block_size,
                    int64_t lo, int64_t hi, int64_t group, int64_t dims, float* out) {
  using L = Lanes<float>;
  for (int64_t g = 0; g < group; ++g) {
    const float* w = weights + g * weights_stride - lo;  // w[j]: slot j's weight
    float* o = out + g * dims;
    for (int64_t t = 0; t < dims / 16; ++t) {
      typename L::V acc[AMX_REGISTERS];
      for (int64_t r = 0; r < AMX_REGISTERS; ++r) acc[r] = L::load(o + t * 16 + r * L::N);
      for (int64_t p = lo / 2; p <= (hi - 1) / 2; ++p) {
        const float w0 = 2 * p >= lo ? w[2 * p] : 0.0f, w1 = 2 * p + 1 < hi ? w[2 * p + 1] : 0.0f;
        for (int64_t r = 0; r < AMX_REGISTERS; ++r) {
          typename L::V first, second;
          split_pairs(values + t * block_size * 16 + p * 32 + r * 2 * L::N, first, second);
          acc[r] += w0 * first + w1 * second;
        }
      }
      for (int64_t r = 0; r < AMX_REGISTERS; ++r) L::store(o + t * 16 + r * L::N, acc[r]);
    }
  }
}

// out[g][d] += sum_j weights[g][j - lo] * value[j][d]  for G heads and the dimensions of the
// R registers from d0, out held in registers: each register of values loaded serves G heads.
template <typename T, typename K, int G, int R>
void add_values_block(const T* __restrict__ weights, int64_t weights_stride, const K* __restrict__ values,
                      int64_t value_slot, int64_t lo, int64_t hi, int64_t dims, int64_t d0, T* __restrict__ out) {
  using L = Lanes<T>;
  typename L::V acc[G][R];
  for (int g = 0; g < G; ++g)
    for (int r = 0; r < R; ++r) acc[g][r] = L::load(out + g * dims + d0 + r * L::N);
  for (int64_t j = lo; j < hi; ++j) {
    const K* __restrict__ v = values + j * value_slot + d0;
    for (int r = 0; r < R; ++r) {
      const typename L::V x = widen<T>(v + r * L::N);
      for (int g = 0; g < G; ++g) acc[g][r] += weights[g * weights_stride + (j - lo)] * x;
    }
  }
  for (int g = 0; g < G; ++g)
    for (int r = 0; r < R; ++r) L::store(out + g * dims + d0 + r * L::N, acc[g][r]);
}

// The largest power of two that divides n and is at most most (1 at least).
constexpr int64_t power_of_two_dividing(int64_t n, int64_t most) {
  int64_t p = 1;
  while (n % (2 * p) == 0 && 2 * p <= most) p *= 2;
  return p;
}

// The same for G heads and all D dimensions, in runs of registers that leave G x R
// accumulators in registers (D = 128 is 16 registers of floats a head on AVX2: a run of 4
// registers for 3 heads there, of 8 for 3 heads on AVX-512).
template <typename T, typename K, int D, int G>
void add_values_of_heads(const T* __restrict__ weights, int64_t weights_stride, const K* __restrict__ values,
                         int64_t value_slot, int64_t lo, int64_t hi, T* __restrict__ out) {
  constexpr int64_t registers = D / Lanes<T>::N;
  constexpr int R = power_of_two_dividing(registers, ACCUMULATORS / G);
  for (int64_t d0 = 0; d0 < D; d0 += R * Lanes<T>::N)
    add_values_block<T, K, G, R>(weights, weights_stride, values, value_slot, lo, hi, D, d0, out);
}

template <typename T, int D, typename K>
void add_values(const T* __restrict__ weights, int64_t weights_stride, const K* __restrict__ values,
                const Cache& c, int64_t lo, int64_t hi, int64_t group, int64_t dim, T* __restrict__ out) {
  if constexpr (D > 0 && D % Lanes<T>::N == 0) {
    if (c.dim == 1) {
      for (int64_t g = 0; g < group; g += HEADS) {
        const T* w = weights + g * weights_stride;
        T* o = out + g * D;
        switch (std::min(HEADS, group - g)) {
          case 1: add_values_of_heads<T, K, D, 1>(w, weights_stride, values, c.slot, lo, hi, o); break;
          case 2: add_values_of_heads<T, K, D, 2>(w, weights_stride, values, c.slot, lo, hi, o); break;
          case 3: add_values_of_heads<T, K, D, 3>(w, weights_stride, values, c.slot, lo, hi, o); break;
          default: add_values_of_heads<T, K, D, 4>(w, weights_stride, values, c.slot, lo, hi, o);
        }
      }
      return;
    }
  }
  const int64_t dims = D > 0 ? D : dim;
  for (int64_t g = 0; g < group; ++g) {
    const T* __restrict__ w = weights + g * weights_stride - lo;
    T* __restrict__ o = out + g * dims;
    for (int64_t j = lo; j < hi; ++j)
      for (int64_t d = 0; d < dims; ++d) o[d] += w[j] * static_cast<T>(values[j * c.slot + d * c.dim]);
  }
}

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
                     int64_t lo, int64_t hi, int64_t group, float* out) {
  constexpr int HEADS_AT_ONCE = D <= 64 ? 4 : 2;  // 4 x 2 x 2 or 2 x 4 x 2 accumulators: 16
  for (int64_t g = 0; g < group; g += HEADS_AT_ONCE) {
    const float* w = weights + g * weights_stride;
    float* o = out + g * D;
    switch (std::min<int64_t>(HEADS_AT_ONCE, group - g)) {
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
                                int64_t block_size, int64_t lo, int64_t hi, int64_t group, int64_t dims,
                                float* out) {
  thread_local std::vector<uint32_t> pairs;  // slot pair p's weights at p - lo / 2, rounded
  const int64_t first = lo / 2, last = (hi - 1) / 2;
  pairs.resize(last - first + 1);
  for (int64_t g = 0; g < group; ++g) {
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

// One query row's running softmax over the entries seen so far (flash attention's online
// form, per query head): out = o / l, with every weight taken relative to the running max m.
// `m` starts at a finite floor, not -inf: the build's -ffast-math assumes finite values.
template <typename T>
constexpr T floor_score() { return -std::numeric_limits<T>::max() / 4; }

// e^x for a register: x = k ln2 + r with |r| <= ln2/2, e^r by its Taylor series (to 2^-24
// for float, 2^-52 for double), 2^k put into the exponent bits. Inputs below the clamp
// (where e^x underflows) give 0.
template <typename T>
typename Lanes<T>::V exp_lanes(typename Lanes<T>::V x) {
  using L = Lanes<T>;
  using V = typename L::V;
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef I IV __attribute__((vector_size(VECTOR_BYTES)));
  constexpr int terms = sizeof(T) == 4 ? 7 : 13;
  constexpr int mantissa = sizeof(T) == 4 ? 23 : 52;
  constexpr I bias = sizeof(T) == 4 ? 127 : 1023;
  const T clamp = sizeof(T) == 4 ? T(-87) : T(-707);
  const auto under = x < clamp;
  x = x < clamp ? V{} + clamp : x;
  const V y = x * T(1.4426950408889634) + T(0.5);  // x / ln2, rounded down below
  IV k = __builtin_convertvector(y, IV);
  k += (__builtin_convertvector(k, V) > y);  // truncated toward zero -> floor (true is -1)
  const V r = x - __builtin_convertvector(k, V) * T(0.6931471805599453);
  V p = V{} + T(1);
  for (int i = terms; i >= 1; --i) p = p * r / T(i) + T(1);  // Horner: 1 + r(1 + r/2(1 + r/3 ...))
  V scale;
  const IV bits = (k + bias) << mantissa;
  __builtin_memcpy(&scale, &bits, sizeof(V));
  return under ? V{} : p * scale;
}

// Gemma 2's logit soft-capping, s = c tanh(s / c), on the scores [lo, hi) (already scaled),
// with tanh(x) = 1 - 2 / (e^(2x) + 1) a register at a time; |x| is clamped where tanh is 1
// to the type's precision, so that e^(2x) stays finite (the build assumes finite values).
template <typename T>
void cap_scores(T* __restrict__ s, int64_t lo, int64_t hi, T softcap) {
  using L = Lanes<T>;
  constexpr int64_t N = L::N;
  using V = typename L::V;
  const T edge = sizeof(T) == 4 ? T(10) : T(20), inverse = T(1) / softcap;
  int64_t j = lo;
  for (; j + N <= hi; j += N) {
    V x = L::load(s + j) * inverse;
    x = x > edge ? V{} + edge : x;
    x = x < -edge ? V{} - edge : x;
    L::store(s + j, softcap * (T(1) - T(2) / (exp_lanes<T>(x + x) + T(1))));
  }
  for (; j < hi; ++j) s[j] = softcap * std::tanh(s[j] * inverse);
}

// Fold one entry's scores into the running state and turn them into the weights of its
// values: G heads' rows of scores (stride `stride`), slot j of the block at index j, the
// slots [lo, hi) valid.
template <typename T>
void fold(T* __restrict__ scores, int64_t stride, int64_t lo, int64_t hi, int64_t block_size, int64_t group,
          int64_t dim, T softcap, T* __restrict__ m, T* __restrict__ l, T* __restrict__ o) {
  using L = Lanes<T>;
  constexpr int64_t N = L::N;
  const bool whole = block_size % N == 0;  // then the registers that hold [lo, hi) lie in the block
  const int64_t j0 = lo - lo % N, j1 = (hi + N - 1) / N * N;
  for (int64_t g = 0; g < group; ++g) {
    T* s = scores + g * stride;
    if (softcap > 0) cap_scores(s, lo, hi, softcap);
    T top = m[g];
    if (whole) {  // slots outside [lo, hi) of the registers get the floor: no weight, no max
      for (int64_t j = j0; j < lo; ++j) s[j] = floor_score<T>();
      for (int64_t j = hi; j < j1; ++j) s[j] = floor_score<T>();
      typename L::V most = L::load(s + j0);
      for (int64_t j = j0 + N; j < j1; j += N) {
        const typename L::V x = L::load(s + j);
        most = most > x ? most : x;
      }
      for (int64_t i = 0; i < N; ++i) top = std::max(top, most[i]);
    } else {
      for (int64_t j = lo; j < hi; ++j) top = std::max(top, s[j]);
    }
    if (top > m[g]) {  // a new max: what came before shrinks by exp(old - new)
      const T shrink = std::exp(m[g] - top);
      l[g] *= shrink;
      for (int64_t d = 0; d < dim; ++d) o[g * dim + d] *= shrink;
      m[g] = top;
    }
    T sum = 0;
    if (whole) {
      typename L::V total{};
      for (int64_t j = j0; j < j1; j += N) {
        const typename L::V e = exp_lanes<T>(L::load(s + j) - top);
        L::store(s + j, e);
        total += e;
      }
      for (int64_t i = 0; i < N; ++i) sum += total[i];
    } else {
      for (int64_t j = lo; j < hi; ++j) {
        s[j] = std::exp(s[j] - top);
        sum += s[j];
      }
    }
    l[g] += sum;
  }
}

// The inputs of the program, as the work list gives them (see cpu_native.py's Prepared):
// q, out and the caches of dtype C; the store and the turns of its compute type T.
template <typename C>
struct Work {
  using T = Compute<C>;
  const C* q;
  int64_t q_row, q_head;
  Cache keys, values;
  Cache stored_keys, stored_values;  // the packed store (vllm_hogwild/packing.py), of the caches' shape
  const int64_t *row_at, *group_rows, *group_row_ptr, *group_tile_ptr, *tile_entry_ptr, *tile_block, *perm;
  const int32_t *tile_stored, *entry_row, *entry_lo, *entry_hi, *entry_turn;
  const T *turn_cos, *turn_sin;
  T scale;
  T softcap;  // 0: none
  const T* sinks;  // one learned logit per query head in every row's softmax, or null
  C* out;
  int64_t out_row, out_head, kv_heads, group, dim, block_size;
};

// A thread's scratch arrays, reused from task to task.
template <typename T>
struct Scratch {
  std::vector<T> q_scaled, q_partner, q_turned, scores;
  std::vector<int32_t> turned_by;
  std::vector<const T*> query;
  std::vector<T*> score_row;
  std::vector<uint16_t> q_rounded;  // q_turned rounded to bfloat16 (bfloat16 dots only)
  std::vector<const uint16_t*> query_rounded;
};

// Whether the cache's tiles take bfloat16 dots (the packed store's never do: it is of the
// compute type): a bfloat16 cache on a build with them, in the amx layout or in vLLM's vec
// layout (dimension-major keys) of whole runs of 32 slots, an even head_dim.
bool takes_bf16_dots(bool bfloat16, const Cache& keys, int64_t block_size, int64_t dim) {
  return BF16_DOTS && bfloat16 && (keys.amx || (keys.slot == 1 && block_size % 32 == 0 && dim % 2 == 0));
}

template <typename C, int D>
bool bf16_dots(const Work<C>& w) {
  return takes_bf16_dots(std::is_same_v<C, c10::BFloat16>, w.keys, w.block_size, w.dim);
}

// One task: the rows of one group, one KV head, the tiles [tile_lo, tile_hi) of the group.
// Tiles come in turn and every row that sees a tile takes it while its keys and values are
// still in the core's cache, so a group's keys are read from memory once per step, not once
// per worker. Leaves each row's (m, l, o) for its query heads in the given arrays.
template <typename C, int D, typename T = Compute<C>>
void walk(const Work<C>& w, int64_t gi, int64_t h, int64_t tile_lo, int64_t tile_hi, T* m, T* l, T* o,
          Scratch<T>& x) {
  const int64_t rows = w.group_row_ptr[gi + 1] - w.group_row_ptr[gi], group = w.group, dim = w.dim;
  const int64_t width = group * dim;
  const bool dots = bf16_dots<C, D>(w);
  x.q_scaled.resize(rows * width);
  x.q_partner.resize(rows * width);
  x.q_turned.resize(rows * width);
  if (dots) x.q_rounded.resize(rows * width);
  x.turned_by.assign(rows, -1);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t at = w.row_at[w.group_rows[w.group_row_ptr[gi] + r]];
    T* qs = x.q_scaled.data() + r * width;
    for (int64_t g = 0; g < group; ++g)
      for (int64_t d = 0; d < dim; ++d)
        qs[g * dim + d] = static_cast<T>(w.q[at * w.q_row + (h * group + g) * w.q_head + d]) * w.scale;
    for (int64_t g = 0; g < group; ++g)
      for (int64_t d = 0; d < dim; ++d) x.q_partner[r * width + g * dim + d] = qs[g * dim + w.perm[d]];
  }
  std::fill(m, m + rows * group, floor_score<T>());
  std::fill(l, l + rows * group, T(0));
  std::fill(o, o + rows * width, T(0));
  for (int64_t t = tile_lo; t < tile_hi; ++t) {
    const int64_t first = w.tile_entry_ptr[t], entries = w.tile_entry_ptr[t + 1] - first;
    if (entries == 0) continue;
    const bool rounded = dots && !w.tile_stored[t];  // the packed store is of T: float dots
    // Every row that sees the tile: its queries, turned to where the tile sits in its view.
    int64_t lo = w.block_size, hi = 0;
    x.query.resize(entries * group);
    x.query_rounded.resize(entries * group);
    x.score_row.resize(entries * group);
    x.scores.resize(entries * group * w.block_size);
    for (int64_t i = 0; i < entries; ++i) {
      const int64_t e = first + i, r = w.entry_row[e];
      T* qt = x.q_turned.data() + r * width;
      uint16_t* qr = dots ? x.q_rounded.data() + r * width : nullptr;
      if (w.entry_turn[e] != x.turned_by[r]) {  // the row's next fragment: turn its queries once
        x.turned_by[r] = w.entry_turn[e];
        turn(x.q_scaled.data() + r * width, x.q_partner.data() + r * width, w.turn_cos + x.turned_by[r] * dim,
             w.turn_sin + x.turned_by[r] * dim, group, dim, qt);
        if constexpr (BF16_DOTS && std::is_same_v<T, float>)
          if (dots) {
            if (width % 16 == 0) round_to_bf16(qt, width, qr);
            else for (int64_t k = 0; k < width; ++k) qr[k] = c10::BFloat16(qt[k]).x;
          }
      }
      for (int64_t g = 0; g < group; ++g) {
        x.query[i * group + g] = qt + g * dim;
        if (dots) x.query_rounded[i * group + g] = qr + g * dim;
        x.score_row[i * group + g] = x.scores.data() + (i * group + g) * w.block_size;
      }
      lo = std::min<int64_t>(lo, w.entry_lo[e]);
      hi = std::max<int64_t>(hi, w.entry_hi[e]);
    }
    // Their scores against the tile's keys, all queries at once; then row by row, the
    // softmax's running state and the weighted values.
    auto each_entry = [&](auto&& add) {
      for (int64_t i = 0; i < entries; ++i) {
        const int64_t e = first + i, r = w.entry_row[e], at = w.entry_lo[e];
        T* s = x.scores.data() + i * group * w.block_size;
        fold(s, w.block_size, at, w.entry_hi[e], w.block_size, group, dim, w.softcap, m + r * group, l + r * group,
             o + r * width);
        add(s + at, at, w.entry_hi[e], o + r * width);
      }
    };
    // the tile's keys and values: the cache's (of dtype C) or the packed store's (of T)
    auto take = [&](const auto* keys, const auto* values, const Cache& kc, const Cache& vc) {
      keys += w.tile_block[t] * kc.block + h * kc.head;
      values += w.tile_block[t] * vc.block + h * vc.head;
      scores_of<T>(x.query.data(), entries * group, keys, kc, w.block_size, lo, hi, dim, x.score_row.data());
      each_entry([&](const T* weights, int64_t at, int64_t end, T* out) {
        add_values<T, D>(weights, w.block_size, values, vc, at, end, group, dim, out);
      });
    };
    if (w.tile_stored[t]) {
      take(static_cast<const T*>(w.stored_keys.data), static_cast<const T*>(w.stored_values.data), w.stored_keys,
           w.stored_values);
      continue;
    }
    if constexpr (std::is_same_v<C, c10::BFloat16>) {
      const C* keys = static_cast<const C*>(w.keys.data) + w.tile_block[t] * w.keys.block + h * w.keys.head;
      const C* values = static_cast<const C*>(w.values.data) + w.tile_block[t] * w.values.block + h * w.values.head;
#if defined(__AVX512BF16__)
      if (rounded) {
        if (w.keys.amx) {
          scores_amx_bf16(x.query_rounded.data(), entries * group, keys, lo, hi, dim, x.score_row.data());
          each_entry([&](const float* weights, int64_t at, int64_t end, float* out) {
            add_values_amx_bf16(weights, w.block_size, values, w.block_size, at, end, group, dim, out);
          });
        } else {
          scores_bf16(x.query_rounded.data(), entries * group, keys, w.keys.dim, lo, hi, dim, x.score_row.data());
          if constexpr (bf16_values_fit<D>()) {
            if (w.values.dim == 1) {
              each_entry([&](const float* weights, int64_t at, int64_t end, float* out) {
                add_values_bf16<D>(weights, w.block_size, values, w.values.slot, at, end, group, out);
              });
              continue;
            }
          }
          each_entry([&](const float* weights, int64_t at, int64_t end, float* out) {
            add_values<float, D>(weights, w.block_size, values, w.values, at, end, group, dim, out);
          });
        }
        continue;
      }
#endif
      if (w.keys.amx) {
        scores_amx(x.query.data(), entries * group, keys, lo, hi, dim, x.score_row.data());
        each_entry([&](const float* weights, int64_t at, int64_t end, float* out) {
          add_values_amx(weights, w.block_size, values, w.block_size, at, end, group, dim, out);
        });
        continue;
      }
    }
    take(static_cast<const C*>(w.keys.data), static_cast<const C*>(w.values.data), w.keys, w.values);
  }
}

// The program. Tasks are (group, KV head, split), a split being a run of the group's tiles;
// groups are split only as far as needed to keep every thread busy (one long group on many
// cores), and the splits' partial softmaxes are then merged per row.
template <typename C, int D, typename T = Compute<C>>
void attend(const Work<C>& w, int64_t groups, int64_t splits_asked) {
  const int64_t group = w.group, dim = w.dim, width = group * dim, kv_heads = w.kv_heads;
  if (groups == 0) return;  // a step without hogwild rows: nothing to write
  const int64_t threads = at::get_num_threads();
  // Splits per group: enough tasks for every thread (x2, to even out unequal groups), but
  // never a split of fewer than 4 tiles (128 keys at block size 32).
  std::vector<int64_t> splits(groups), part_at(groups + 1, 0);
  const int64_t want = splits_asked > 0 ? splits_asked : (2 * threads + groups * kv_heads - 1) / (groups * kv_heads);
  for (int64_t gi = 0; gi < groups; ++gi) {
    const int64_t tiles = w.group_tile_ptr[gi + 1] - w.group_tile_ptr[gi];
    splits[gi] = std::max<int64_t>(1, std::min(want, splits_asked > 0 ? tiles : tiles / 4));
    part_at[gi + 1] = part_at[gi] + splits[gi] * (w.group_row_ptr[gi + 1] - w.group_row_ptr[gi]);
  }
  std::vector<int64_t> task_ptr(groups + 1, 0);  // tasks of group gi: [task_ptr[gi], ...) x kv_heads
  for (int64_t gi = 0; gi < groups; ++gi) task_ptr[gi + 1] = task_ptr[gi] + splits[gi] * kv_heads;
  // Partial state of (split, row) of each KV head: m and l per query head, o per query head and dim.
  const int64_t parts = part_at[groups];
  std::vector<T> part_m(parts * kv_heads * group), part_l(parts * kv_heads * group), part_o(parts * kv_heads * width);
  at::parallel_for(0, task_ptr[groups], 1, [&](int64_t begin, int64_t end) {
    Scratch<T> scratch;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t gi = std::upper_bound(task_ptr.begin(), task_ptr.end(), task) - task_ptr.begin() - 1;
      const int64_t local = task - task_ptr[gi], s = local / kv_heads, h = local % kv_heads;
      const int64_t rows = w.group_row_ptr[gi + 1] - w.group_row_ptr[gi];
      const int64_t first = w.group_tile_ptr[gi], tiles = w.group_tile_ptr[gi + 1] - first;
      const int64_t at = (part_at[gi] + s * rows) * kv_heads + h * rows;  // (split, head, row) of the group
      walk<C, D>(w, gi, h, first + tiles * s / splits[gi], first + tiles * (s + 1) / splits[gi],
                 part_m.data() + at * group, part_l.data() + at * group, part_o.data() + at * width, scratch);
    }
  });
  // Merge: out = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M), M the largest m_s.
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> merged(dim);
    for (int64_t gi = begin; gi < end; ++gi) {
      const int64_t rows = w.group_row_ptr[gi + 1] - w.group_row_ptr[gi];
      for (int64_t h = 0; h < kv_heads; ++h)
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t at = w.row_at[w.group_rows[w.group_row_ptr[gi] + r]];
          for (int64_t g = 0; g < group; ++g) {
            auto part = [&](int64_t s) { return ((part_at[gi] + s * rows) * kv_heads + h * rows + r) * group + g; };
            T top = floor_score<T>();
            for (int64_t s = 0; s < splits[gi]; ++s) top = std::max(top, part_m[part(s)]);
            // A sink is one more logit in the denominator, with no value (gpt-oss).
            const T sink = w.sinks ? w.sinks[h * group + g] : T(0);
            if (w.sinks) top = std::max(top, sink);
            T total = w.sinks ? std::exp(sink - top) : T(0);
            std::fill(merged.begin(), merged.end(), T(0));
            for (int64_t s = 0; s < splits[gi]; ++s) {
              const T weight = std::exp(part_m[part(s)] - top);
              total += part_l[part(s)] * weight;
              const T* os = part_o.data() + part(s) * dim;
              for (int64_t d = 0; d < dim; ++d) merged[d] += os[d] * weight;
            }
            C* o = w.out + at * w.out_row + (h * group + g) * w.out_head;
            for (int64_t d = 0; d < dim; ++d) o[d] = static_cast<C>(merged[d] / total);  // rounded once, to C
          }
        }
    }
  });
}

Cache cache_of(const torch::Tensor& c, bool amx = false) {
  return {c.data_ptr(), c.stride(0), c.stride(1), c.stride(2), c.stride(3), amx};
}

// The amx layout: bfloat16 only (vLLM picks it for no other dtype), whole tiles of 16.
void check_amx(const torch::Tensor& keys, bool amx) {
  TORCH_CHECK(!amx || (keys.scalar_type() == torch::kBFloat16 && keys.size(1) % 16 == 0 && keys.size(3) % 16 == 0),
              "the amx layout holds bfloat16 blocks of a multiple of 16 slots and head dimensions");
}

void check_caches(const torch::Tensor& keys, const torch::Tensor& values, torch::ScalarType type,
                  const char* what) {
  TORCH_CHECK(keys.dim() == 4 && values.sizes() == keys.sizes(), what, " must be [blocks, block_size, kv_heads, head_dim]");
  TORCH_CHECK(keys.scalar_type() == type && values.scalar_type() == type, what, " must be of dtype ",
              c10::toString(type));
}

// The compute type of a cache dtype (Compute<C>): float64 for float64, float32 for the rest.
torch::ScalarType compute_type(torch::ScalarType type) {
  return type == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

void check_indices(std::initializer_list<const torch::Tensor*> tensors, torch::ScalarType type) {
  for (const auto* t : tensors)
    TORCH_CHECK(t->scalar_type() == type && t->is_contiguous(), "index arrays must be contiguous ",
                type == torch::kInt64 ? "int64" : "int32");
}

// A step's work list (cpu_native.Prepared says what each array means): a group's tiles, each
// tile's entries. The distinct turns come ascending; entry_turn indexes them.
struct WorkList {
  std::vector<int64_t> group_rows, group_row_ptr, group_tile_ptr, tile_entry_ptr, tile_block;
  std::vector<int32_t> tile_stored, entry_row, entry_lo, entry_hi, entry_turn;
  std::vector<int64_t> turns;
};

// A step's work for one kind of layer (cpu_native.Prepared holds one): its work list, where
// each query row sits in q and out, the turns' cos and sin (rounded to the op's dtype, held in
// its compute type) and each dimension's rotation partner. Made once per step (step_work,
// work_list), read by every layer of the kind, never changed: the arrays stay here, so a
// layer's call hands over one object, not a dozen tensors.
// The rotations of a step's turns, [turns, head_dim] each, rounded to the op's dtype and held
// at both widths (the op reads the one of its compute type): plain arrays, not tensors, since
// making a tensor costs more than the loop that fills it once the forward pass has left the
// caches cold.
struct Turns {
  std::vector<double> cos64, sin64;
  std::vector<float> cos32, sin32;
  torch::ScalarType compute = torch::kFloat32;  // the compute type of the dtype they were rounded to

  template <typename T>
  const T* cos() const {
    if constexpr (std::is_same_v<T, double>) return cos64.data(); else return cos32.data();
  }
  template <typename T>
  const T* sin() const {
    if constexpr (std::is_same_v<T, double>) return sin64.data(); else return sin32.data();
  }
};

struct StepWork {
  WorkList list;
  std::vector<int64_t> row_at, perm;
  Turns rotation;
};

void fragment_attention(const torch::Tensor& q, const torch::Tensor& key_cache, const torch::Tensor& value_cache,
                        const torch::Tensor& stored_keys, const torch::Tensor& stored_values, torch::Tensor& out,
                        const StepWork& work, double scale, int64_t splits, bool amx, double softcap,
                        const c10::optional<torch::Tensor>& sinks) {
  TORCH_CHECK(q.dim() == 3 && out.sizes() == q.sizes() && q.stride(2) == 1 && out.stride(2) == 1,
              "q and out must be [tokens, heads, head_dim] with unit stride along head_dim");
  const torch::ScalarType compute = compute_type(q.scalar_type());
  check_caches(key_cache, value_cache, q.scalar_type(), "the caches");
  check_caches(stored_keys, stored_values, compute, "the packed store");
  TORCH_CHECK(out.scalar_type() == q.scalar_type(), "q and out must share one dtype");
  const int64_t kv_heads = key_cache.size(2), dim = q.size(2);
  TORCH_CHECK(key_cache.size(3) == dim && q.size(1) % kv_heads == 0, "head shapes of q and the caches differ");
  TORCH_CHECK(stored_keys.size(0) == 0 || stored_keys.sizes().slice(1) == key_cache.sizes().slice(1),
              "the packed store's blocks must be shaped like the cache's");
  const WorkList& list = work.list;
  TORCH_CHECK(static_cast<int64_t>(work.perm.size()) == dim &&
                  work.rotation.cos64.size() == list.turns.size() * static_cast<size_t>(dim),
              "the step's work was prepared for another head size");
  TORCH_CHECK(list.group_row_ptr.size() == list.group_tile_ptr.size() && !list.group_row_ptr.empty(),
              "one row range and one tile range per group");
  TORCH_CHECK(work.row_at.size() == list.group_rows.size(), "one batch row per query row");
  for (int64_t r : work.row_at) TORCH_CHECK(r >= 0 && r < q.size(0), "a query row outside q");
  const int64_t groups = static_cast<int64_t>(list.group_row_ptr.size()) - 1;
  check_amx(key_cache, amx);
  TORCH_CHECK(!sinks || (sinks->scalar_type() == compute && sinks->is_contiguous() && sinks->numel() == q.size(1)),
              "sinks must be one value per query head, contiguous, of the compute dtype");
  TORCH_CHECK(softcap >= 0, "softcap must be 0 (none) or positive");
  // The head sizes of common models get loops of known length (their accumulators in registers).
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kBFloat16, torch::kHalf, q.scalar_type(), "fragment_attention", [&] {
    using T = Compute<scalar_t>;
    const Work<scalar_t> w{q.data_ptr<scalar_t>(), q.stride(0), q.stride(1), cache_of(key_cache, amx),
                           cache_of(value_cache, amx), cache_of(stored_keys), cache_of(stored_values),
                           work.row_at.data(), list.group_rows.data(), list.group_row_ptr.data(),
                           list.group_tile_ptr.data(), list.tile_entry_ptr.data(), list.tile_block.data(),
                           work.perm.data(), list.tile_stored.data(), list.entry_row.data(), list.entry_lo.data(),
                           list.entry_hi.data(), list.entry_turn.data(), work.rotation.cos<T>(),
                           work.rotation.sin<T>(),
                           static_cast<T>(scale), static_cast<T>(softcap), sinks ? sinks->data_ptr<T>() : nullptr,
                           out.data_ptr<scalar_t>(), out.stride(0), out.stride(1),
                           kv_heads, q.size(1) / kv_heads, dim, key_cache.size(1)};
    switch (dim) {
      case 32: attend<scalar_t, 32>(w, groups, splits); break;
      case 64: attend<scalar_t, 64>(w, groups, splits); break;
      case 128: attend<scalar_t, 128>(w, groups, splits); break;
      case 80: attend<scalar_t, 80>(w, groups, splits); break;
      case 96: attend<scalar_t, 96>(w, groups, splits); break;
      default: attend<scalar_t, 0>(w, groups, splits);
    }
  });
}

// The packed store's copies (vllm_hogwild/packing.py): token n's key, at (src_block, src_slot) of
// the cache, turned by turn row n (from its home position to its index in the packed history),
// and its value, to (dst_block, dst_slot) of the store; every KV head. The store is of the
// compute type: a turned key is kept as exact as the query turned the other way would be.
void pack(const torch::Tensor& key_cache, const torch::Tensor& value_cache, torch::Tensor& stored_keys,
          torch::Tensor& stored_values, const torch::Tensor& src_block, const torch::Tensor& src_slot,
          const torch::Tensor& dst_block, const torch::Tensor& dst_slot, const torch::Tensor& turn,
          const torch::Tensor& turn_cos, const torch::Tensor& turn_sin, const torch::Tensor& perm, bool amx) {
  const torch::ScalarType compute = compute_type(key_cache.scalar_type());
  check_amx(key_cache, amx);
  check_caches(key_cache, value_cache, key_cache.scalar_type(), "the caches");
  check_caches(stored_keys, stored_values, compute, "the packed store");
  TORCH_CHECK(stored_keys.sizes().slice(1) == key_cache.sizes().slice(1),
              "the packed store's blocks must be shaped like the cache's");
  check_indices({&src_block, &dst_block, &perm}, torch::kInt64);
  check_indices({&src_slot, &dst_slot, &turn}, torch::kInt32);
  TORCH_CHECK(turn_cos.scalar_type() == compute && turn_cos.is_contiguous() &&
                  turn_sin.is_contiguous() && turn_cos.size(-1) == key_cache.size(3),
              "turns must be contiguous [turns, head_dim] of the store's dtype");
  const int64_t tokens = src_block.numel(), heads = key_cache.size(2), dim = key_cache.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kBFloat16, torch::kHalf, key_cache.scalar_type(), "pack", [&] {
    using C = scalar_t;
    using T = Compute<C>;
    const Cache k = cache_of(key_cache), v = cache_of(value_cache), sk = cache_of(stored_keys),
                sv = cache_of(stored_values);
    const int64_t block_size = key_cache.size(1);
    // where dimension d of slot `slot` of a (block, head) sits, in the cache's layout
    auto key_at = [&](int64_t slot, int64_t d) { return amx ? amx_key_at(slot, d, dim) : slot * k.slot + d * k.dim; };
    auto value_at = [&](int64_t slot, int64_t d) {
      return amx ? amx_value_at(slot, d, block_size) : slot * v.slot + d * v.dim;
    };
    const int64_t* sb = src_block.data_ptr<int64_t>();
    const int64_t* db = dst_block.data_ptr<int64_t>();
    const int64_t* pm = perm.data_ptr<int64_t>();
    const int32_t *ss = src_slot.data_ptr<int32_t>(), *ds = dst_slot.data_ptr<int32_t>(), *tn = turn.data_ptr<int32_t>();
    const T *cos = turn_cos.data_ptr<T>(), *sin = turn_sin.data_ptr<T>();
    at::parallel_for(0, tokens * heads, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / heads, h = i % heads;
        const C* key = static_cast<const C*>(k.data) + sb[n] * k.block + h * k.head;
        const C* value = static_cast<const C*>(v.data) + sb[n] * v.block + h * v.head;
        T* to_key = static_cast<T*>(const_cast<void*>(sk.data)) + db[n] * sk.block + ds[n] * sk.slot + h * sk.head;
        T* to_value = static_cast<T*>(const_cast<void*>(sv.data)) + db[n] * sv.block + ds[n] * sv.slot + h * sv.head;
        const T *c = cos + tn[n] * dim, *s = sin + tn[n] * dim;
        for (int64_t d = 0; d < dim; ++d) {
          to_key[d * sk.dim] = static_cast<T>(key[key_at(ss[n], d)]) * c[d] + static_cast<T>(key[key_at(ss[n], pm[d])]) * s[d];
          to_value[d * sv.dim] = static_cast<T>(value[value_at(ss[n], d)]);
        }
      }
    });
  });
}

// ---- Host work, once per step: the fragment table, the work list, the turns ----
//
// Each is made by a function over plain arrays (make_table, make_work, make_turns), wrapped
// for Python twice: one function each (fragment_table, work_list, turn_table: the tests hold
// them to their Python and NumPy references), and step_work, which runs all three for a
// step in one call (the CPU backend's): the tensors between them never cross into Python,
// where each costs more than the loops that make it once the forward pass has left the
// interpreter and the caches cold.

template <typename I>
torch::Tensor tensor_of(const std::vector<I>& v) {
  auto t = torch::empty({static_cast<int64_t>(v.size())}, std::is_same<I, int64_t>::value ? torch::kInt64 : torch::kInt32);
  if (!v.empty()) std::memcpy(t.data_ptr(), v.data(), v.size() * sizeof(I));
  return t;
}

torch::Tensor int32s_of(const std::vector<int64_t>& v) {
  auto t = torch::empty({static_cast<int64_t>(v.size())}, torch::kInt32);
  std::copy(v.begin(), v.end(), t.data_ptr<int32_t>());
  return t;
}

// The fragment table of a batch (table.build, which the tests hold this to array by array):
// the same cut of each group's fragments at every boundary any of its workers uses, identical
// pieces merged into one source, the pieces every worker sees at one offset first. Sequences
// come as `seq` [S, 4] (group, worker, rows, first home position), their fragments as `frags`
// [F, 4] (block-table row, home start, home end, view offset; sequence s's are
// [frag_ptr[s], frag_ptr[s+1])), their rows' view positions flat; each group's shared history
// (SeqView.shared, ascending group ids) as `shared` [4, K] with `shared_ptr` [G+1]. The arrays
// are those of FragmentTable, in its order; src_offset is [sources, workers], row-major.
struct Table {
  std::vector<int64_t> qsl, seq_group, seq_worker, q_pos, q_view, group_ptr, group_shared, src_row, src_start,
      src_end, src_offset;
  int64_t workers = 1, max_rows = 0;
};

Table make_table(const std::vector<int64_t>& seq, const std::vector<int64_t>& frag_ptr,
                 const std::vector<int64_t>& frags, const std::vector<int64_t>& view_pos, const int64_t* sh,
                 int64_t shared_len, const std::vector<int64_t>& shared_ptr) {
  const int64_t seqs = static_cast<int64_t>(seq.size()) / 4;
  TORCH_CHECK(seq.size() % 4 == 0 && static_cast<int64_t>(frag_ptr.size()) == seqs + 1 && frags.size() % 4 == 0 &&
                  frag_ptr.back() * 4 == static_cast<int64_t>(frags.size()),
              "fragment_table: seq [S, 4], frag_ptr [S+1], frags [F, 4]");
  const int64_t *sq = seq.data(), *fp = frag_ptr.data(), *fr = frags.data(), *shp = shared_ptr.data();
  using Frag = std::array<int64_t, 4>;
  auto frag = [&](int64_t i) { return Frag{fr[4 * i], fr[4 * i + 1], fr[4 * i + 2], fr[4 * i + 3]}; };
  // Groups in ascending id; the sequences of each, in batch order.
  std::vector<int64_t> ids;
  for (int64_t s = 0; s < seqs; ++s) ids.push_back(sq[4 * s]);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  const int64_t groups = static_cast<int64_t>(ids.size());
  TORCH_CHECK(static_cast<int64_t>(shared_ptr.size()) == groups + 1 && shp[groups] == shared_len,
              "fragment_table: one shared run per group (shared_ptr [G+1])");
  auto index_of = [&](int64_t id) { return std::lower_bound(ids.begin(), ids.end(), id) - ids.begin(); };
  Table t;
  int64_t rows = 0;
  std::vector<std::vector<int64_t>> members(groups);
  for (int64_t s = 0; s < seqs; ++s) {
    members[index_of(sq[4 * s])].push_back(s);
    t.workers = std::max(t.workers, sq[4 * s + 1] + 1);
    t.max_rows = std::max(t.max_rows, sq[4 * s + 2]);
    rows += sq[4 * s + 2];
  }
  TORCH_CHECK(static_cast<int64_t>(view_pos.size()) == rows, "one view position per query row");
  const int64_t workers = t.workers;
  t.group_ptr.push_back(0);
  auto add = [&](int64_t row, int64_t start, int64_t end, const std::vector<int64_t>& seen_at) {
    t.src_row.push_back(row), t.src_start.push_back(start), t.src_end.push_back(end);
    t.src_offset.insert(t.src_offset.end(), seen_at.begin(), seen_at.end());
  };
  for (int64_t g = 0; g < groups; ++g) {
    const auto& m = members[g];
    std::vector<int64_t> group_workers;
    for (int64_t s : m) group_workers.push_back(sq[4 * s + 1]);
    // Fragments every view holds (at the same offset): one source each, as they are.
    std::map<Frag, int64_t> count;
    for (int64_t s : m) {
      std::set<Frag> once;
      for (int64_t i = fp[s]; i < fp[s + 1]; ++i) once.insert(frag(i));
      for (const auto& f : once) ++count[f];
    }
    std::vector<Frag> everywhere;
    for (const auto& [f, n] : count)
      if (n == static_cast<int64_t>(m.size())) everywhere.push_back(f);
    std::stable_sort(everywhere.begin(), everywhere.end(), [](const Frag& a, const Frag& b) { return a[3] < b[3]; });
    const std::set<Frag> is_everywhere(everywhere.begin(), everywhere.end());
    std::vector<std::tuple<int64_t, int64_t, int64_t, std::vector<int64_t>>> sources;
    for (const auto& f : everywhere) {
      if (f[2] <= f[1]) continue;
      std::vector<int64_t> seen_at(workers, -1);
      for (int64_t w : group_workers) seen_at[w] = f[3];
      sources.emplace_back(f[0], f[1], f[2], seen_at);
    }
    // The others: cut at every boundary of the group's other fragments on the same row.
    std::map<int64_t, std::set<int64_t>> cut_sets;
    for (int64_t s : m)
      for (int64_t i = fp[s]; i < fp[s + 1]; ++i) {
        const Frag f = frag(i);
        if (!is_everywhere.count(f)) cut_sets[f[0]].insert(f[1]), cut_sets[f[0]].insert(f[2]);
      }
    std::map<std::array<int64_t, 4>, size_t> index;  // (row, a, b, occurrence) -> source
    for (int64_t s : m) {
      std::map<std::array<int64_t, 3>, int64_t> seen;
      for (int64_t i = fp[s]; i < fp[s + 1]; ++i) {
        const Frag f = frag(i);
        if (is_everywhere.count(f)) continue;
        const auto& cuts = cut_sets[f[0]];
        std::vector<int64_t> points(cuts.lower_bound(f[1]), cuts.upper_bound(f[2]));
        for (size_t k = 0; k + 1 < points.size(); ++k) {
          const int64_t a = points[k], b = points[k + 1];
          const int64_t occurrence = seen[{f[0], a, b}]++;
          const std::array<int64_t, 4> key{f[0], a, b, occurrence};
          auto it = index.find(key);
          if (it == index.end()) {
            it = index.emplace(key, sources.size()).first;
            sources.emplace_back(f[0], a, b, std::vector<int64_t>(workers, -1));
          }
          std::get<3>(sources[it->second])[sq[4 * s + 1]] = f[3] + (a - f[1]);
        }
      }
    }
    // Pieces every view holds at one offset are shared too: those first.
    std::vector<char> alike(sources.size());
    int64_t found = 0;
    for (size_t k = 0; k < sources.size(); ++k) {
      const auto& seen_at = std::get<3>(sources[k]);
      const int64_t first = seen_at[group_workers[0]];
      bool same = first >= 0;
      for (int64_t w : group_workers) same = same && seen_at[w] == first;
      alike[k] = same, found += same;
    }
    for (size_t k = 0; k < sources.size(); ++k)
      if (alike[k]) add(std::get<0>(sources[k]), std::get<1>(sources[k]), std::get<2>(sources[k]), std::get<3>(sources[k]));
    for (int64_t k = shp[g]; k < shp[g + 1]; ++k) {  // the shared history, seen by every member at its offset
      std::vector<int64_t> seen_at(workers, -1);
      for (int64_t w : group_workers) seen_at[w] = sh[3 * shared_len + k];
      add(sh[k], sh[shared_len + k], sh[2 * shared_len + k], seen_at);
    }
    for (size_t k = 0; k < sources.size(); ++k)
      if (!alike[k]) add(std::get<0>(sources[k]), std::get<1>(sources[k]), std::get<2>(sources[k]), std::get<3>(sources[k]));
    t.group_shared.push_back(found + shp[g + 1] - shp[g]);
    t.group_ptr.push_back(static_cast<int64_t>(t.src_row.size()));
  }
  t.qsl.push_back(0);
  t.q_view = view_pos;
  for (int64_t s = 0; s < seqs; ++s) {
    t.qsl.push_back(t.qsl.back() + sq[4 * s + 2]);
    t.seq_group.push_back(index_of(sq[4 * s]));
    t.seq_worker.push_back(sq[4 * s + 1]);
    for (int64_t r = 0; r < sq[4 * s + 2]; ++r) t.q_pos.push_back(sq[4 * s + 3] + r);
  }
  return t;
}

// The work list of a step from its fragment table (cpu_native.prepare says what each array
// means): the same arrays, in the same order, as the vectorised NumPy reference in the tests
// (tests/work_list.py), made in one pass instead of some sixty array operations, which cost
// more than a small batch's attention (WorkList, above fragment_attention).

// The table's arrays as make_work reads them (int32 from Python's FragmentTable, int64 from make_table).
template <typename I>
struct TableArrays {
  const I *qsl, *seq_group, *seq_worker, *q_pos, *q_view, *group_src_ptr, *src_row, *src_start, *src_end, *src_offset;
  int64_t seqs, groups, workers;
};

template <typename I>
WorkList make_work(const TableArrays<I>& a, const int32_t* table, int64_t table_rows, int64_t width,
                   int64_t block_size, int64_t stored_from, int64_t window) {
  TORCH_CHECK(block_size > 0 && window >= 0, "work_list: a positive block size, a window of 0 or more");
  const I *qsl = a.qsl, *sgroup = a.seq_group, *sworker = a.seq_worker, *pos = a.q_pos, *view = a.q_view,
          *gsrc = a.group_src_ptr, *srow = a.src_row, *sstart = a.src_start, *send = a.src_end, *soff = a.src_offset;
  const int64_t seqs = a.seqs, groups = a.groups, workers = a.workers, rows = qsl[seqs];
  WorkList out;
  // Each query row's group and worker; rows by group, in row order within a group.
  std::vector<int64_t> row_group(rows), row_worker(rows);
  out.group_row_ptr.assign(groups + 1, 0);
  out.group_rows.resize(rows);
  for (int64_t s = 0; s < seqs; ++s)
    for (int64_t r = qsl[s]; r < qsl[s + 1]; ++r) row_group[r] = sgroup[s], row_worker[r] = sworker[s];
  for (int64_t r = 0; r < rows; ++r) ++out.group_row_ptr[row_group[r] + 1];
  for (int64_t g = 0; g < groups; ++g) out.group_row_ptr[g + 1] += out.group_row_ptr[g];
  {
    std::vector<int64_t> at(out.group_row_ptr.begin(), out.group_row_ptr.end() - 1);
    for (int64_t r = 0; r < rows; ++r) out.group_rows[at[row_group[r]]++] = r;
  }
  // Tiles (a cache block of a source, sources in group order) and their entries (rows that see a slot).
  out.group_tile_ptr.assign(groups + 1, 0);
  out.tile_entry_ptr.assign(1, 0);
  std::vector<int64_t> angle;
  const int64_t stored = stored_from < 0 ? table_rows : stored_from;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t row_lo = out.group_row_ptr[g], row_hi = out.group_row_ptr[g + 1];
    for (int64_t src = gsrc[g]; src < gsrc[g + 1]; ++src) {
      const int64_t start = sstart[src], end = send[src], first = start / block_size;
      const int64_t tiles = end > start ? (end - 1) / block_size - first + 1 : 0;
      for (int64_t k = 0; k < tiles; ++k) {
        const int64_t block = first + k, base = block * block_size;
        const size_t before = out.entry_row.size();
        for (int64_t l = 0; l < row_hi - row_lo; ++l) {
          const int64_t r = out.group_rows[row_lo + l];
          const int64_t offset = soff[src * workers + row_worker[r]];
          const int64_t shift = offset - start;  // the source's place in the row's view, less its home
          int64_t lo = std::max<int64_t>(start - base, 0);
          if (window > 0) lo = std::max<int64_t>(lo, view[r] - window + 1 - shift - base);
          const int64_t hi = std::min<int64_t>({end - base, block_size, view[r] - shift - base + 1});
          if (offset < 0 || hi <= lo) continue;
          out.entry_row.push_back(static_cast<int32_t>(l));
          out.entry_lo.push_back(static_cast<int32_t>(lo));
          out.entry_hi.push_back(static_cast<int32_t>(hi));
          angle.push_back(view[r] - pos[r] - shift);
        }
        if (window > 0 && out.entry_row.size() == before) continue;  // a tile no row sees (past every window)
        TORCH_CHECK(srow[src] >= 0 && srow[src] < table_rows && block >= 0 && block < width,
                    "work_list: a source's tile is outside the block table");
        out.tile_block.push_back(table[srow[src] * width + block]);
        out.tile_stored.push_back(srow[src] >= stored ? 1 : 0);
        out.tile_entry_ptr.push_back(static_cast<int64_t>(out.entry_row.size()));
        ++out.group_tile_ptr[g + 1];
      }
    }
    out.group_tile_ptr[g + 1] += out.group_tile_ptr[g];
  }
  // The distinct turns, ascending, and each entry's.
  out.turns = angle;
  std::sort(out.turns.begin(), out.turns.end());
  out.turns.erase(std::unique(out.turns.begin(), out.turns.end()), out.turns.end());
  out.entry_turn.resize(angle.size());
  for (size_t e = 0; e < angle.size(); ++e)
    out.entry_turn[e] =
        static_cast<int32_t>(std::lower_bound(out.turns.begin(), out.turns.end(), angle[e]) - out.turns.begin());
  return out;
}

void check_block_table(const torch::Tensor& block_table) {
  TORCH_CHECK(block_table.dim() == 2 && block_table.scalar_type() == torch::kInt32 && block_table.is_contiguous(),
              "the block table must be a contiguous 2-D int32 tensor");
}

// x rounded to `dtype` (as PyTorch's conversion from float64 does: to float, then to the
// 16-bit type, each to nearest even), held in a double.
double rounded_to(double x, torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kBFloat16: return static_cast<float>(c10::BFloat16(static_cast<float>(x)));
    case torch::kHalf: return static_cast<float>(c10::Half(static_cast<float>(x)));
    case torch::kFloat32: return static_cast<float>(x);
    default: return x;
  }
}

// The rotations of a step's turns (rotary.turn_table, which the tests hold this to value for
// value): cos, sin [turns, head_dim] such that R(theta) x = x * cos + x[perm] * sin, the sign
// folded into sin. Angles in float64, cos and sin rounded to `dtype` (the op's) and held in its
// compute type, which is what fragment_attention reads. One loop, no tensor operations: made
// by PyTorch from Python or by ATen from here, the dozen small operations cost a small group's
// step more than its work list (76 us, cold after the forward pass, for 10 turns).
std::vector<double> frequencies_of(const torch::Tensor& inv_freq, int64_t head_dim) {
  TORCH_CHECK(inv_freq.dim() == 1 && 2 * inv_freq.numel() <= head_dim,
              "turn_table: 1-D inverse frequencies, a rotary part within the head");
  TORCH_CHECK(inv_freq.scalar_type() == torch::kFloat32 || inv_freq.scalar_type() == torch::kFloat64,
              "turn_table: float32 or float64 inverse frequencies");
  const auto contiguous = inv_freq.contiguous();
  std::vector<double> freq(contiguous.numel());
  for (size_t i = 0; i < freq.size(); ++i)
    freq[i] = contiguous.scalar_type() == torch::kFloat32 ? contiguous.data_ptr<float>()[i]
                                                          : contiguous.data_ptr<double>()[i];
  return freq;
}

Turns make_turns(const int64_t* angle_of, int64_t turns, const std::vector<double>& freq, int64_t head_dim,
                 bool is_neox, torch::ScalarType dtype) {
  const int64_t half = static_cast<int64_t>(freq.size());
  const size_t size = static_cast<size_t>(turns * head_dim);
  Turns t;
  t.compute = compute_type(dtype);
  t.cos64.assign(size, 1.0), t.sin64.assign(size, 0.0);
  for (int64_t n = 0; n < turns; ++n)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(angle_of[n]) * freq[i];
      const double c = rounded_to(std::cos(angle), dtype), s = rounded_to(std::sin(angle), dtype);
      // neox pairs i with i + half; GPT-J pairs 2i with 2i + 1
      const int64_t a = is_neox ? i : 2 * i, b = is_neox ? i + half : 2 * i + 1;
      t.cos64[n * head_dim + a] = c, t.cos64[n * head_dim + b] = c;
      t.sin64[n * head_dim + a] = -s, t.sin64[n * head_dim + b] = s;
    }
  t.cos32.assign(t.cos64.begin(), t.cos64.end()), t.sin32.assign(t.sin64.begin(), t.sin64.end());
  return t;
}

// cos or sin [turns, head_dim] as a tensor of their compute type (turn_table, the tests).
torch::Tensor tensor_of_turns(const Turns& t, bool sin, int64_t head_dim) {
  const auto& wide = sin ? t.sin64 : t.cos64;
  auto out = torch::empty({static_cast<int64_t>(wide.size()) / head_dim, head_dim}, torch::TensorOptions().dtype(t.compute));
  if (t.compute == torch::kFloat64)
    std::copy(wide.begin(), wide.end(), out.data_ptr<double>());
  else
    std::copy((sin ? t.sin32 : t.cos32).begin(), (sin ? t.sin32 : t.cos32).end(), out.data_ptr<float>());
  return out;
}

// Each dimension's rotation partner (rotary.partners): neox pairs i with i + half, GPT-J 2i
// with 2i + 1; dimensions past the rotary part are their own.
std::vector<int64_t> partners_of(int64_t head_dim, int64_t half, bool is_neox) {
  std::vector<int64_t> perm(head_dim);
  for (int64_t d = 0; d < head_dim; ++d) perm[d] = d;
  for (int64_t i = 0; i < half; ++i) {
    const int64_t a = is_neox ? i : 2 * i, b = is_neox ? i + half : 2 * i + 1;
    perm[a] = b, perm[b] = a;
  }
  return perm;
}

// A kind's StepWork from its work list: the rows' places in q, the turns, the partners.
std::shared_ptr<StepWork> step_work_of(WorkList list, const torch::Tensor& row_at, const torch::Tensor& inv_freq,
                                       bool is_neox, int64_t head_dim, torch::ScalarType dtype) {
  auto work = std::make_shared<StepWork>();
  const std::vector<double> freq = frequencies_of(inv_freq, head_dim);
  work->rotation = make_turns(list.turns.data(), static_cast<int64_t>(list.turns.size()), freq, head_dim, is_neox,
                              dtype);
  work->perm = partners_of(head_dim, static_cast<int64_t>(freq.size()), is_neox);
  const int64_t rows = static_cast<int64_t>(list.group_rows.size());
  if (row_at.numel() == 0) {  // none given: query row i is row i of q
    for (int64_t r = 0; r < rows; ++r) work->row_at.push_back(r);
  } else {
    TORCH_CHECK(row_at.dim() == 1 && row_at.numel() == rows && row_at.scalar_type() == torch::kInt64 &&
                    row_at.is_contiguous(),
                "row_index: one contiguous int64 batch row per query row");
    work->row_at.assign(row_at.data_ptr<int64_t>(), row_at.data_ptr<int64_t>() + rows);
  }
  work->list = std::move(list);
  return work;
}

// ---- The Python entry points ----

std::vector<torch::Tensor> fragment_table(const std::vector<int64_t>& seq, const std::vector<int64_t>& frag_ptr,
                                          const std::vector<int64_t>& frags, const std::vector<int64_t>& view_pos,
                                          const torch::Tensor& shared, const std::vector<int64_t>& shared_ptr) {
  check_indices({&shared}, torch::kInt64);
  TORCH_CHECK(shared.dim() == 2 && shared.size(0) == 4, "fragment_table: shared [4, K]");
  const Table t = make_table(seq, frag_ptr, frags, view_pos, shared.data_ptr<int64_t>(), shared.size(1), shared_ptr);
  const int64_t sources = static_cast<int64_t>(t.src_row.size());
  return {int32s_of(t.qsl), int32s_of(t.seq_group), int32s_of(t.seq_worker), int32s_of(t.q_pos), int32s_of(t.q_view),
          int32s_of(t.group_ptr), int32s_of(t.group_shared), int32s_of(t.src_row), int32s_of(t.src_start),
          int32s_of(t.src_end), int32s_of(t.src_offset).view({sources, t.workers}),
          torch::tensor(std::vector<int64_t>{t.workers, t.max_rows})};
}

// A kind's StepWork from a FragmentTable's tensors (cpu_native.prepare). row_at: the query
// rows' places in q (empty: row i at i).
std::shared_ptr<StepWork> work_list(const torch::Tensor& query_start_loc, const torch::Tensor& seq_group,
                                    const torch::Tensor& seq_worker, const torch::Tensor& q_pos,
                                    const torch::Tensor& q_view, const torch::Tensor& group_src_ptr,
                                    const torch::Tensor& src_row, const torch::Tensor& src_start,
                                    const torch::Tensor& src_end, const torch::Tensor& src_offset,
                                    const torch::Tensor& block_table, int64_t block_size, int64_t stored_from,
                                    int64_t window, const torch::Tensor& row_at, const torch::Tensor& inv_freq,
                                    bool is_neox, int64_t head_dim, torch::ScalarType dtype) {
  check_indices({&query_start_loc, &seq_group, &seq_worker, &q_pos, &q_view, &group_src_ptr, &src_row, &src_start,
                 &src_end, &src_offset}, torch::kInt32);
  check_block_table(block_table);
  TORCH_CHECK(src_offset.dim() == 2, "work_list: 2-D offsets");
  const TableArrays<int32_t> a{query_start_loc.data_ptr<int32_t>(), seq_group.data_ptr<int32_t>(),
                               seq_worker.data_ptr<int32_t>(), q_pos.data_ptr<int32_t>(), q_view.data_ptr<int32_t>(),
                               group_src_ptr.data_ptr<int32_t>(), src_row.data_ptr<int32_t>(),
                               src_start.data_ptr<int32_t>(), src_end.data_ptr<int32_t>(),
                               src_offset.data_ptr<int32_t>(), seq_group.numel(), group_src_ptr.numel() - 1,
                               src_offset.size(1)};
  return step_work_of(make_work(a, block_table.data_ptr<int32_t>(), block_table.size(0), block_table.size(1),
                                block_size, stored_from, window),
                      row_at, inv_freq, is_neox, head_dim, dtype);
}

std::vector<torch::Tensor> turn_table(const torch::Tensor& theta, const torch::Tensor& inv_freq, int64_t head_dim,
                                      bool is_neox, torch::ScalarType dtype) {
  TORCH_CHECK(theta.dim() == 1 && theta.scalar_type() == torch::kInt64 && theta.is_contiguous(),
              "turn_table: contiguous int64 turns");
  const Turns t = make_turns(theta.data_ptr<int64_t>(), theta.numel(), frequencies_of(inv_freq, head_dim), head_dim,
                             is_neox, dtype);
  return {tensor_of_turns(t, false, head_dim), tensor_of_turns(t, true, head_dim)};
}

// A step's work for each kind of layer k (its RoPE: inv_freqs[k], neox[k]; its window:
// windows[k]) from its sequences' views as fragment_table takes them (cpu_native.prepare_step).
std::vector<std::shared_ptr<StepWork>> step_work(
    const std::vector<int64_t>& seq, const std::vector<int64_t>& frag_ptr, const std::vector<int64_t>& frags,
    const std::vector<int64_t>& view_pos, const torch::Tensor& shared, const std::vector<int64_t>& shared_ptr,
    const torch::Tensor& block_table, int64_t block_size, int64_t stored_from, const std::vector<int64_t>& windows,
    const std::vector<torch::Tensor>& inv_freqs, const std::vector<bool>& neox, int64_t head_dim,
    torch::ScalarType dtype, const torch::Tensor& row_at) {
  check_indices({&shared}, torch::kInt64);
  check_block_table(block_table);
  TORCH_CHECK(shared.dim() == 2 && shared.size(0) == 4, "step_work: shared [4, K]");
  TORCH_CHECK(inv_freqs.size() == windows.size() && neox.size() == windows.size(),
              "step_work: one RoPE and window per kind");
  const Table t = make_table(seq, frag_ptr, frags, view_pos, shared.data_ptr<int64_t>(), shared.size(1), shared_ptr);
  const TableArrays<int64_t> a{t.qsl.data(), t.seq_group.data(), t.seq_worker.data(), t.q_pos.data(), t.q_view.data(),
                               t.group_ptr.data(), t.src_row.data(), t.src_start.data(), t.src_end.data(),
                               t.src_offset.data(), static_cast<int64_t>(t.seq_group.size()),
                               static_cast<int64_t>(t.group_ptr.size()) - 1, t.workers};
  std::vector<std::shared_ptr<StepWork>> kinds;
  for (size_t k = 0; k < windows.size(); ++k)
    kinds.push_back(step_work_of(make_work(a, block_table.data_ptr<int32_t>(), block_table.size(0),
                                           block_table.size(1), block_size, stored_from, windows[k]),
                                 row_at, inv_freqs[k], neox[k], head_dim, dtype));
  return kinds;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // A step's work, read from Python only by the tests (each array a tensor copy).
  pybind11::class_<StepWork, std::shared_ptr<StepWork>>(m, "StepWork")
      .def_property_readonly("row_at", [](const StepWork& w) { return tensor_of(w.row_at); })
      .def_property_readonly("group_rows", [](const StepWork& w) { return tensor_of(w.list.group_rows); })
      .def_property_readonly("group_row_ptr", [](const StepWork& w) { return tensor_of(w.list.group_row_ptr); })
      .def_property_readonly("group_tile_ptr", [](const StepWork& w) { return tensor_of(w.list.group_tile_ptr); })
      .def_property_readonly("tile_entry_ptr", [](const StepWork& w) { return tensor_of(w.list.tile_entry_ptr); })
      .def_property_readonly("tile_block", [](const StepWork& w) { return tensor_of(w.list.tile_block); })
      .def_property_readonly("tile_stored", [](const StepWork& w) { return tensor_of(w.list.tile_stored); })
      .def_property_readonly("entry_row", [](const StepWork& w) { return tensor_of(w.list.entry_row); })
      .def_property_readonly("entry_lo", [](const StepWork& w) { return tensor_of(w.list.entry_lo); })
      .def_property_readonly("entry_hi", [](const StepWork& w) { return tensor_of(w.list.entry_hi); })
      .def_property_readonly("entry_turn", [](const StepWork& w) { return tensor_of(w.list.entry_turn); })
      .def_property_readonly("turns", [](const StepWork& w) { return tensor_of(w.list.turns); })
      .def_property_readonly("turn_cos", [](const StepWork& w) { return tensor_of_turns(w.rotation, false, w.perm.size()); })
      .def_property_readonly("turn_sin", [](const StepWork& w) { return tensor_of_turns(w.rotation, true, w.perm.size()); })
      .def_property_readonly("perm", [](const StepWork& w) { return tensor_of(w.perm); });
  m.def("bf16_dots", [](const torch::Tensor& key_cache, bool amx) {
          return takes_bf16_dots(key_cache.scalar_type() == torch::kBFloat16, cache_of(key_cache, amx),
                                 key_cache.size(1), key_cache.size(3));
        }, "Whether the op takes bfloat16 dot products (AVX512-BF16) over this key cache");
  m.def("fragment_attention", &fragment_attention, "Fragment attention over a prepared work list (CPU)");
  m.def("work_list", &work_list, "A step's work list from its fragment table (CPU)");
  m.def("fragment_table", &fragment_table, "A batch's fragment table from its sequences' views (CPU)");
  m.def("turn_table", &turn_table, "The rotations of a step's turns, in the op's compute dtype (CPU)");
  m.def("step_work", &step_work, "A step's work lists and turns, per kind of layer, from its views (CPU)");
  m.def("pack", &pack, "Copy committed tokens into the packed store, keys turned to their history index (CPU)");
}
