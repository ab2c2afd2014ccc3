// The work list of a step from its fragment table, and the rotations of its turns.

#pragma once

#include "step_work.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

namespace hogwild_cpu {

// The work list of a step from its fragment table (cpu_native.prepare says what each array
// means): the same arrays, in the same order, as the vectorised NumPy reference in the tests
// (tests/work_list.py), made in one pass instead of some sixty array operations, which cost
// more than a small batch's attention (WorkList, step_work.h).

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

}  // namespace hogwild_cpu
