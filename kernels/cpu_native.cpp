// Fragment attention on the CPU: one pass over a query row's visible keys per KV head.
//
// The work list (built once per step by cpu_native.prepare) gives every query row its
// visible *entries*: a cache block, the run of slots [lo, hi) the row sees in it, and the
// *turn* (an index into a cos/sin table) that rotates the query from its home position to
// the place where that block's keys sit in the row's view. A row's cost is then what plain
// attention over its keys costs, plus one rotation of its queries each time the turn
// changes (once per fragment, not per key).
//
// Layout: caches [blocks, block_size, kv_heads, D] with any strides; vLLM's CPU cache keeps
// a block's keys dimension-major (stride 1 along the slots), which the score loop uses.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

struct Cache {
  const void* data;
  int64_t block, slot, head, dim;  // strides, in elements
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

// A register of LANES values (GCC/Clang vector extension: 64 bytes, one AVX-512 register or
// two AVX2 ones), so that the loops below keep their accumulators in registers.
template <typename T>
struct Lanes {
  typedef T V __attribute__((vector_size(64)));
  static constexpr int64_t N = 64 / sizeof(T);
  static V load(const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(T* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }
};

// Up to HEADS query heads of one KV head go through a block's keys together: each register
// of keys (or values) loaded once serves all of them.
constexpr int64_t HEADS = 4;

// scores[g][j - lo] = q_turned[g] . key[j]  for G heads and the slots j of [lo, hi) of one
// block. Dimension-major keys (vLLM's CPU layout) are read a register of slots at a time; a
// register may run past `hi` inside the block (those scores are dropped, never stored).
template <typename T, int G>
void scores_of_heads(const T* __restrict__ q_turned, const T* __restrict__ keys, int64_t key_dim, int64_t lo,
                     int64_t hi, int64_t dims, T* __restrict__ scores, int64_t scores_stride) {
  using L = Lanes<T>;
  for (int64_t j0 = lo - lo % L::N; j0 < hi; j0 += L::N) {
    typename L::V acc[G] = {};
    for (int64_t d = 0; d < dims; ++d) {
      const typename L::V k = L::load(keys + d * key_dim + j0);
      for (int g = 0; g < G; ++g) acc[g] += q_turned[g * dims + d] * k;
    }
    for (int g = 0; g < G; ++g) {
      T part[L::N];
      L::store(part, acc[g]);
      T* __restrict__ s = scores + g * scores_stride - lo;
      for (int64_t i = std::max<int64_t>(0, lo - j0); i < L::N && j0 + i < hi; ++i) s[j0 + i] = part[i];
    }
  }
}

template <typename T>
void scores_of(const T* __restrict__ q_turned, const T* __restrict__ keys, const Cache& c, int64_t block_size,
               int64_t lo, int64_t hi, int64_t group, int64_t dims, T* __restrict__ scores, int64_t scores_stride) {
  if (c.slot == 1 && block_size % Lanes<T>::N == 0) {
    for (int64_t g = 0; g < group; g += HEADS) {
      const T* q = q_turned + g * dims;
      T* s = scores + g * scores_stride;
      switch (std::min(HEADS, group - g)) {
        case 1: scores_of_heads<T, 1>(q, keys, c.dim, lo, hi, dims, s, scores_stride); break;
        case 2: scores_of_heads<T, 2>(q, keys, c.dim, lo, hi, dims, s, scores_stride); break;
        case 3: scores_of_heads<T, 3>(q, keys, c.dim, lo, hi, dims, s, scores_stride); break;
        default: scores_of_heads<T, 4>(q, keys, c.dim, lo, hi, dims, s, scores_stride);
      }
    }
    return;
  }
  for (int64_t g = 0; g < group; ++g) {
    T* __restrict__ s = scores + g * scores_stride - lo;
    const T* __restrict__ qg = q_turned + g * dims;
    for (int64_t j = lo; j < hi; ++j) {
      const T* __restrict__ k = keys + j * c.slot;
      T acc = 0;
      for (int64_t d = 0; d < dims; ++d) acc += qg[d] * k[d * c.dim];
      s[j] = acc;
    }
  }
}

// out[g] += sum_j weights[g][j - lo] * value[j]  for G heads, out held in registers (D known)
template <typename T, int D, int G>
void add_values_of_heads(const T* __restrict__ weights, int64_t weights_stride, const T* __restrict__ values,
                         int64_t value_slot, int64_t lo, int64_t hi, T* __restrict__ out) {
  using L = Lanes<T>;
  constexpr int64_t R = D / L::N;  // registers per head
  typename L::V acc[G][R];
  for (int g = 0; g < G; ++g)
    for (int64_t r = 0; r < R; ++r) acc[g][r] = L::load(out + g * D + r * L::N);
  for (int64_t j = lo; j < hi; ++j) {
    const T* __restrict__ v = values + j * value_slot;
    for (int64_t r = 0; r < R; ++r) {
      const typename L::V x = L::load(v + r * L::N);
      for (int g = 0; g < G; ++g) acc[g][r] += weights[g * weights_stride + (j - lo)] * x;
    }
  }
  for (int g = 0; g < G; ++g)
    for (int64_t r = 0; r < R; ++r) L::store(out + g * D + r * L::N, acc[g][r]);
}

template <typename T, int D>
void add_values(const T* __restrict__ weights, int64_t weights_stride, const T* __restrict__ values,
                const Cache& c, int64_t lo, int64_t hi, int64_t group, int64_t dim, T* __restrict__ out) {
  if constexpr (D > 0 && D % Lanes<T>::N == 0) {
    if (c.dim == 1) {
      for (int64_t g = 0; g < group; g += HEADS) {
        const T* w = weights + g * weights_stride;
        T* o = out + g * D;
        switch (std::min(HEADS, group - g)) {
          case 1: add_values_of_heads<T, D, 1>(w, weights_stride, values, c.slot, lo, hi, o); break;
          case 2: add_values_of_heads<T, D, 2>(w, weights_stride, values, c.slot, lo, hi, o); break;
          case 3: add_values_of_heads<T, D, 3>(w, weights_stride, values, c.slot, lo, hi, o); break;
          default: add_values_of_heads<T, D, 4>(w, weights_stride, values, c.slot, lo, hi, o);
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
      for (int64_t d = 0; d < dims; ++d) o[d] += w[j] * values[j * c.slot + d * c.dim];
  }
}

// The program: one task per (query row, KV head); softmax over all the row's entries.
template <typename T, int D>
void attend(const T* q, int64_t q_row, int64_t q_head, const Cache& keys, const Cache& values,
            const int64_t* row_at, const int64_t* row_ptr, const int64_t* entry_block,
            const int32_t* entry_lo, const int32_t* entry_hi, const int32_t* entry_turn,
            const T* turn_cos, const T* turn_sin, const int64_t* perm, T scale, T* out,
            int64_t out_row, int64_t out_head, int64_t rows, int64_t kv_heads, int64_t group,
            int64_t dim, int64_t block_size) {
  at::parallel_for(0, rows * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> q_scaled(group * dim), q_partner(group * dim), q_turned(group * dim), o(group * dim), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / kv_heads, h = task % kv_heads;
      const int64_t first = row_ptr[r], last = row_ptr[r + 1];
      int64_t n = 0;
      for (int64_t e = first; e < last; ++e) n += entry_hi[e] - entry_lo[e];
      const int64_t at = row_at[r];
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < dim; ++d) q_scaled[g * dim + d] = q[at * q_row + (h * group + g) * q_head + d] * scale;
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < dim; ++d) q_partner[g * dim + d] = q_scaled[g * dim + perm[d]];
      scores.assign(group * std::max<int64_t>(n, 1), 0);
      // Scores of every visible key, entry by entry, the queries turned when the turn changes.
      int32_t turned_by = -1;
      int64_t at_key = 0;
      for (int64_t e = first; e < last; ++e) {
        if (entry_turn[e] != turned_by) {
          turned_by = entry_turn[e];
          turn(q_scaled.data(), q_partner.data(), turn_cos + turned_by * dim, turn_sin + turned_by * dim, group, dim,
               q_turned.data());
        }
        const T* block = static_cast<const T*>(keys.data) + entry_block[e] * keys.block + h * keys.head;
        scores_of<T>(q_turned.data(), block, keys, block_size, entry_lo[e], entry_hi[e], group, dim,
                     scores.data() + at_key, n);
        at_key += entry_hi[e] - entry_lo[e];
      }
      // Softmax per query head, then the weighted values.
      std::vector<T> total(group, 0);
      for (int64_t g = 0; g < group; ++g) {
        T* s = scores.data() + g * n;
        T top = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < n; ++j) top = std::max(top, s[j]);
        T sum = 0;
        for (int64_t j = 0; j < n; ++j) {
          s[j] = std::exp(s[j] - top);
          sum += s[j];
        }
        total[g] = sum;
      }
      std::fill(o.begin(), o.end(), T(0));
      at_key = 0;
      for (int64_t e = first; e < last; ++e) {
        const T* block = static_cast<const T*>(values.data) + entry_block[e] * values.block + h * values.head;
        add_values<T, D>(scores.data() + at_key, n, block, values, entry_lo[e], entry_hi[e], group, dim,
                   o.data());
        at_key += entry_hi[e] - entry_lo[e];
      }
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < dim; ++d)
          out[at * out_row + (h * group + g) * out_head + d] = o[g * dim + d] / total[g];
    }
  });
}

Cache cache_of(const torch::Tensor& c) {
  return {c.data_ptr(), c.stride(0), c.stride(1), c.stride(2), c.stride(3)};
}

void fragment_attention(const torch::Tensor& q, const torch::Tensor& key_cache, const torch::Tensor& value_cache,
                        torch::Tensor& out, const torch::Tensor& row_at, const torch::Tensor& row_ptr,
                        const torch::Tensor& entry_block, const torch::Tensor& entry_lo,
                        const torch::Tensor& entry_hi, const torch::Tensor& entry_turn,
                        const torch::Tensor& turn_cos, const torch::Tensor& turn_sin, const torch::Tensor& perm,
                        double scale) {
  TORCH_CHECK(q.dim() == 3 && out.sizes() == q.sizes() && q.stride(2) == 1 && out.stride(2) == 1,
              "q and out must be [tokens, heads, head_dim] with unit stride along head_dim");
  TORCH_CHECK(key_cache.dim() == 4 && value_cache.sizes() == key_cache.sizes(),
              "caches must be [blocks, block_size, kv_heads, head_dim]");
  TORCH_CHECK(key_cache.scalar_type() == q.scalar_type() && value_cache.scalar_type() == q.scalar_type() &&
                  out.scalar_type() == q.scalar_type() && turn_cos.scalar_type() == q.scalar_type() &&
                  turn_sin.scalar_type() == q.scalar_type(),
              "q, out, the caches and the turns must share one dtype");
  const int64_t kv_heads = key_cache.size(2), dim = q.size(2);
  TORCH_CHECK(key_cache.size(3) == dim && q.size(1) % kv_heads == 0, "head shapes of q and the caches differ");
  for (const auto* t : {&row_at, &row_ptr, &entry_block, &perm})
    TORCH_CHECK(t->scalar_type() == torch::kInt64 && t->is_contiguous(), "index arrays must be contiguous int64");
  for (const auto* t : {&entry_lo, &entry_hi, &entry_turn})
    TORCH_CHECK(t->scalar_type() == torch::kInt32 && t->is_contiguous(), "slot arrays must be contiguous int32");
  TORCH_CHECK(turn_cos.is_contiguous() && turn_sin.is_contiguous() && turn_cos.size(-1) == dim,
              "turns must be contiguous [turns, head_dim]");
  const int64_t rows = row_at.numel();
  // The head sizes of common models get loops of known length (their accumulators in registers).
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "fragment_attention", [&] {
    auto run = [&](auto head_dim) {
      attend<scalar_t, decltype(head_dim)::value>(q.data_ptr<scalar_t>(), q.stride(0), q.stride(1), cache_of(key_cache), cache_of(value_cache),
                     row_at.data_ptr<int64_t>(), row_ptr.data_ptr<int64_t>(), entry_block.data_ptr<int64_t>(),
                     entry_lo.data_ptr<int32_t>(), entry_hi.data_ptr<int32_t>(), entry_turn.data_ptr<int32_t>(),
                     turn_cos.data_ptr<scalar_t>(), turn_sin.data_ptr<scalar_t>(), perm.data_ptr<int64_t>(),
                     static_cast<scalar_t>(scale), out.data_ptr<scalar_t>(), out.stride(0), out.stride(1), rows,
                     kv_heads, q.size(1) / kv_heads, dim, key_cache.size(1));
    };
    switch (dim) {
      case 64: run(std::integral_constant<int, 64>()); break;
      case 128: run(std::integral_constant<int, 128>()); break;
      case 80: run(std::integral_constant<int, 80>()); break;
      case 96: run(std::integral_constant<int, 96>()); break;
      default: run(std::integral_constant<int, 0>());
    }
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fragment_attention", &fragment_attention, "Fragment attention over a prepared work list (CPU)");
}
