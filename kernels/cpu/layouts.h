// The caches as the op reads them: vLLM's vec layout (any strides) and its amx layout.

#pragma once

#include "vectors.h"

namespace hogwild_cpu {

struct Cache {
  const void* data;
  int64_t block, slot, head, dim;  // strides, in elements
  bool amx = false;  // vLLM's amx layout (bfloat16) inside each (block, head): slot and dim strides unused
};

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

}  // namespace hogwild_cpu
