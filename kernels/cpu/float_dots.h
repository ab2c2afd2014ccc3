// Dot products in the compute type (float FMA): a tile's scores q . key and its weighted
// values, over vLLM's vec layout and its amx layout.

#pragma once

#include "layouts.h"

#include <algorithm>

namespace hogwild_cpu {

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
                    int64_t lo, int64_t hi, int64_t q_per_kv, int64_t dims, float* out) {
  using L = Lanes<float>;
  for (int64_t g = 0; g < q_per_kv; ++g) {
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
                const Cache& c, int64_t lo, int64_t hi, int64_t q_per_kv, int64_t dim, T* __restrict__ out) {
  if constexpr (D > 0 && D % Lanes<T>::N == 0) {
    if (c.dim == 1) {
      for (int64_t g = 0; g < q_per_kv; g += HEADS) {
        const T* w = weights + g * weights_stride;
        T* o = out + g * D;
        switch (std::min(HEADS, q_per_kv - g)) {
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
  for (int64_t g = 0; g < q_per_kv; ++g) {
    const T* __restrict__ w = weights + g * weights_stride - lo;
    T* __restrict__ o = out + g * dims;
    for (int64_t j = lo; j < hi; ++j)
      for (int64_t d = 0; d < dims; ++d) o[d] += w[j] * static_cast<T>(values[j * c.slot + d * c.dim]);
  }
}

}  // namespace hogwild_cpu
