// A step's work as the walk reads it: the work list, the turns' rotations, the rows' places.

#pragma once

#include <torch/extension.h>

#include <vector>

namespace hogwild_cpu {

// The compute type of a cache dtype (Compute<C>): float64 for float64, float32 for the rest.
torch::ScalarType compute_type(torch::ScalarType type) {
  return type == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

// A step's work list (cpu_native.Prepared says what each array means): a group's tiles, each
// tile's entries. The distinct turns come ascending; entry_turn indexes them.
struct WorkList {
  std::vector<int64_t> group_rows, group_row_ptr, group_tile_ptr, tile_entry_ptr, tile_block;
  std::vector<int32_t> tile_stored, entry_row, entry_lo, entry_hi, entry_turn;
  std::vector<int64_t> turns;
};

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

// A step's work for one kind of layer (cpu_native.Prepared holds one): its work list, where
// each query row sits in q and out, the turns' cos and sin (rounded to the op's dtype, held in
// its compute type) and each dimension's rotation partner. Made once per step (step_work,
// work_list), read by every layer of the kind, never changed: the arrays stay here, so a
// layer's call hands over one object, not a dozen tensors.
struct StepWork {
  WorkList list;
  std::vector<int64_t> row_at, perm;
  Turns rotation;
};

}  // namespace hogwild_cpu
