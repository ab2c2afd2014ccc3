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
//
// Files (kernels/cpu/, each included once, in this order of dependence): vectors.h (the
// machine's registers, widened loads), layouts.h (vLLM's vec and amx cache layouts),
// float_dots.h and bf16_dots.h (a tile's scores and weighted values), softmax.h (the running
// softmax), attend.h (the walk and the program), step_work.h, fragment_table.h and
// work_list.h (the host work, once per step). This file: the checks, the packed store's
// copies and the Python entry points.

#include <torch/extension.h>

#include "cpu/attend.h"
#include "cpu/fragment_table.h"
#include "cpu/work_list.h"

#include <cstring>
#include <memory>
#include <vector>

namespace hogwild_cpu {


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

void check_indices(std::initializer_list<const torch::Tensor*> tensors, torch::ScalarType type) {
  for (const auto* t : tensors)
    TORCH_CHECK(t->scalar_type() == type && t->is_contiguous(), "index arrays must be contiguous ",
                type == torch::kInt64 ? "int64" : "int32");
}



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


void check_block_table(const torch::Tensor& block_table) {
  TORCH_CHECK(block_table.dim() == 2 && block_table.scalar_type() == torch::kInt32 && block_table.is_contiguous(),
              "the block table must be a contiguous 2-D int32 tensor");
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

}  // namespace hogwild_cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace hogwild_cpu;
  // A step's work, read from Python only by the tests (each array a tensor copy).
  // module_local: each ISA build is its own module, and one process may load several (the tests).
  pybind11::class_<StepWork, std::shared_ptr<StepWork>>(m, "StepWork", pybind11::module_local())
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
