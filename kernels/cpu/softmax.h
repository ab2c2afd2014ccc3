// A row's running softmax over the tiles it sees (flash attention's online form), the
// exponential a register at a time, soft caps.

#pragma once

#include "vectors.h"

#include <cmath>
#include <limits>

namespace hogwild_cpu {

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
void fold(T* __restrict__ scores, int64_t stride, int64_t lo, int64_t hi, int64_t block_size, int64_t q_per_kv,
          int64_t dim, T softcap, T* __restrict__ m, T* __restrict__ l, T* __restrict__ o) {
  using L = Lanes<T>;
  constexpr int64_t N = L::N;
  const bool whole = block_size % N == 0;  // then the registers that hold [lo, hi) lie in the block
  const int64_t j0 = lo - lo % N, j1 = (hi + N - 1) / N * N;
  for (int64_t g = 0; g < q_per_kv; ++g) {
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

}  // namespace hogwild_cpu
