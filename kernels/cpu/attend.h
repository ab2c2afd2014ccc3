// The attention walk: a task takes one group's tiles for one KV head, every row that sees a
// tile taking it in turn; the program splits and merges tasks over the threads.

#pragma once

#include "bf16_dots.h"
#include "softmax.h"

#include <ATen/Parallel.h>
#include <vector>

namespace hogwild_cpu {

// The inner loops: the math of one entry, for the `q_per_kv` query heads of one KV head.

// q_turned[g] = q[g] * cos + q_partner[g] * sin  (q_partner[g][d] = q[g][perm[d]]; the sign
// of the rotation folded into sin)
template <typename T>
void turn(const T* __restrict__ q, const T* __restrict__ q_partner, const T* __restrict__ cos,
          const T* __restrict__ sin, int64_t q_per_kv, int64_t dim, T* __restrict__ out) {
  for (int64_t g = 0; g < q_per_kv; ++g)
    for (int64_t d = 0; d < dim; ++d) out[g * dim + d] = q[g * dim + d] * cos[d] + q_partner[g * dim + d] * sin[d];
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
  int64_t out_row, out_head, kv_heads, q_per_kv, dim, block_size;
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

template <typename C>
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
  const int64_t rows = w.group_row_ptr[gi + 1] - w.group_row_ptr[gi], q_per_kv = w.q_per_kv, dim = w.dim;
  const int64_t width = q_per_kv * dim;
  const bool dots = bf16_dots(w);
  x.q_scaled.resize(rows * width);
  x.q_partner.resize(rows * width);
  x.q_turned.resize(rows * width);
  if (dots) x.q_rounded.resize(rows * width);
  x.turned_by.assign(rows, -1);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t at = w.row_at[w.group_rows[w.group_row_ptr[gi] + r]];
    T* qs = x.q_scaled.data() + r * width;
    for (int64_t g = 0; g < q_per_kv; ++g)
      for (int64_t d = 0; d < dim; ++d)
        qs[g * dim + d] = static_cast<T>(w.q[at * w.q_row + (h * q_per_kv + g) * w.q_head + d]) * w.scale;
    for (int64_t g = 0; g < q_per_kv; ++g)
      for (int64_t d = 0; d < dim; ++d) x.q_partner[r * width + g * dim + d] = qs[g * dim + w.perm[d]];
  }
  std::fill(m, m + rows * q_per_kv, floor_score<T>());
  std::fill(l, l + rows * q_per_kv, T(0));
  std::fill(o, o + rows * width, T(0));
  for (int64_t t = tile_lo; t < tile_hi; ++t) {
    const int64_t first = w.tile_entry_ptr[t], entries = w.tile_entry_ptr[t + 1] - first;
    if (entries == 0) continue;
    const bool rounded = dots && !w.tile_stored[t];  // the packed store is of T: float dots
    // Every row that sees the tile: its queries, turned to where the tile sits in its view.
    int64_t lo = w.block_size, hi = 0;
    x.query.resize(entries * q_per_kv);
    if (dots) x.query_rounded.resize(entries * q_per_kv);
    x.score_row.resize(entries * q_per_kv);
    x.scores.resize(entries * q_per_kv * w.block_size);
    for (int64_t i = 0; i < entries; ++i) {
      const int64_t e = first + i, r = w.entry_row[e];
      T* qt = x.q_turned.data() + r * width;
      uint16_t* qr = dots ? x.q_rounded.data() + r * width : nullptr;
      if (w.entry_turn[e] != x.turned_by[r]) {  // the row's next fragment: turn its queries once
        x.turned_by[r] = w.entry_turn[e];
        turn(x.q_scaled.data() + r * width, x.q_partner.data() + r * width, w.turn_cos + x.turned_by[r] * dim,
             w.turn_sin + x.turned_by[r] * dim, q_per_kv, dim, qt);
        if constexpr (BF16_DOTS && std::is_same_v<T, float>)
          if (dots) {
            if (width % 16 == 0) round_to_bf16(qt, width, qr);
            else for (int64_t k = 0; k < width; ++k) qr[k] = c10::BFloat16(qt[k]).x;
          }
      }
      for (int64_t g = 0; g < q_per_kv; ++g) {
        x.query[i * q_per_kv + g] = qt + g * dim;
        if (dots) x.query_rounded[i * q_per_kv + g] = qr + g * dim;
        x.score_row[i * q_per_kv + g] = x.scores.data() + (i * q_per_kv + g) * w.block_size;
      }
      lo = std::min<int64_t>(lo, w.entry_lo[e]);
      hi = std::max<int64_t>(hi, w.entry_hi[e]);
    }
    // Their scores against the tile's keys, all queries at once; then row by row, the
    // softmax's running state and the weighted values.
    auto each_entry = [&](auto&& add) {
      for (int64_t i = 0; i < entries; ++i) {
        const int64_t e = first + i, r = w.entry_row[e], at = w.entry_lo[e];
        T* s = x.scores.data() + i * q_per_kv * w.block_size;
        fold(s, w.block_size, at, w.entry_hi[e], w.block_size, q_per_kv, dim, w.softcap, m + r * q_per_kv, l + r * q_per_kv,
             o + r * width);
        add(s + at, at, w.entry_hi[e], o + r * width);
      }
    };
    // the tile's keys and values: the cache's (of dtype C) or the packed store's (of T)
    auto take = [&](const auto* keys, const auto* values, const Cache& kc, const Cache& vc) {
      keys += w.tile_block[t] * kc.block + h * kc.head;
      values += w.tile_block[t] * vc.block + h * vc.head;
      scores_of<T>(x.query.data(), entries * q_per_kv, keys, kc, w.block_size, lo, hi, dim, x.score_row.data());
      each_entry([&](const T* weights, int64_t at, int64_t end, T* out) {
        add_values<T, D>(weights, w.block_size, values, vc, at, end, q_per_kv, dim, out);
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
          scores_amx_bf16(x.query_rounded.data(), entries * q_per_kv, keys, lo, hi, dim, x.score_row.data());
          each_entry([&](const float* weights, int64_t at, int64_t end, float* out) {
            add_values_amx_bf16(weights, w.block_size, values, w.block_size, at, end, q_per_kv, dim, out);
          });
        } else {
          scores_bf16(x.query_rounded.data(), entries * q_per_kv, keys, w.keys.dim, lo, hi, dim, x.score_row.data());
          if constexpr (bf16_values_fit<D>()) {
            if (w.values.dim == 1) {
              each_entry([&](const float* weights, int64_t at, int64_t end, float* out) {
                add_values_bf16<D>(weights, w.block_size, values, w.values.slot, at, end, q_per_kv, out);
              });
              continue;
            }
          }
          each_entry([&](const float* weights, int64_t at, int64_t end, float* out) {
            add_values<float, D>(weights, w.block_size, values, w.values, at, end, q_per_kv, dim, out);
          });
        }
        continue;
      }
#endif
      if (w.keys.amx) {
        scores_amx(x.query.data(), entries * q_per_kv, keys, lo, hi, dim, x.score_row.data());
        each_entry([&](const float* weights, int64_t at, int64_t end, float* out) {
          add_values_amx(weights, w.block_size, values, w.block_size, at, end, q_per_kv, dim, out);
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
  const int64_t q_per_kv = w.q_per_kv, dim = w.dim, width = q_per_kv * dim, kv_heads = w.kv_heads;
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
  std::vector<T> part_m(parts * kv_heads * q_per_kv), part_l(parts * kv_heads * q_per_kv), part_o(parts * kv_heads * width);
  at::parallel_for(0, task_ptr[groups], 1, [&](int64_t begin, int64_t end) {
    Scratch<T> scratch;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t gi = std::upper_bound(task_ptr.begin(), task_ptr.end(), task) - task_ptr.begin() - 1;
      const int64_t local = task - task_ptr[gi], s = local / kv_heads, h = local % kv_heads;
      const int64_t rows = w.group_row_ptr[gi + 1] - w.group_row_ptr[gi];
      const int64_t first = w.group_tile_ptr[gi], tiles = w.group_tile_ptr[gi + 1] - first;
      const int64_t at = (part_at[gi] + s * rows) * kv_heads + h * rows;  // (split, head, row) of the group
      walk<C, D>(w, gi, h, first + tiles * s / splits[gi], first + tiles * (s + 1) / splits[gi],
                 part_m.data() + at * q_per_kv, part_l.data() + at * q_per_kv, part_o.data() + at * width, scratch);
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
          for (int64_t g = 0; g < q_per_kv; ++g) {
            auto part = [&](int64_t s) { return ((part_at[gi] + s * rows) * kv_heads + h * rows + r) * q_per_kv + g; };
            T top = floor_score<T>();
            for (int64_t s = 0; s < splits[gi]; ++s) top = std::max(top, part_m[part(s)]);
            // A sink is one more logit in the denominator, with no value (gpt-oss).
            const T sink = w.sinks ? w.sinks[h * q_per_kv + g] : T(0);
            if (w.sinks) top = std::max(top, sink);
            T total = w.sinks ? std::exp(sink - top) : T(0);
            std::fill(merged.begin(), merged.end(), T(0));
            for (int64_t s = 0; s < splits[gi]; ++s) {
              const T weight = std::exp(part_m[part(s)] - top);
              total += part_l[part(s)] * weight;
              const T* os = part_o.data() + part(s) * dim;
              for (int64_t d = 0; d < dim; ++d) merged[d] += os[d] * weight;
            }
            C* o = w.out + at * w.out_row + (h * q_per_kv + g) * w.out_head;
            for (int64_t d = 0; d < dim; ++d) o[d] = static_cast<C>(merged[d] / total);  // rounded once, to C
          }
        }
    }
  });
}

}  // namespace hogwild_cpu
