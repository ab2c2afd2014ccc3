// The machine's ceiling for the CPU op's arithmetic: how many fused multiply-adds of the op's
// register width (64 bytes, 16 float lanes, with AVX-512; 32 bytes, 8 lanes, without) one core
// retires per second, with 12 independent sums in flight (more than latency x pipes on any x86
// core, and within the 16 registers of AVX2).
//
//     g++ -O3 -march=native -o /tmp/cpu_fma_peak benchmarks/cpu_fma_peak.cpp && /tmp/cpu_fma_peak
//
// FLOP/s on C cores = rate x 2 x lanes (a multiply and an add per lane) x C. The op's own rate is
// its FLOPs (rows x query heads x keys x head_dim x 4) over its time (cpu_op_bench.py).
#include <chrono>
#include <cstdio>

#ifdef __AVX512F__
constexpr int BYTES = 64;
#else
constexpr int BYTES = 32;
#endif
constexpr int LANES = BYTES / 4, SUMS = 12;
typedef float V __attribute__((vector_size(BYTES)));

int main() {
  V acc[SUMS];
  for (int i = 0; i < SUMS; ++i) acc[i] = V{} + static_cast<float>(i) * 1e-3f;
  const V x = V{} + 0.999999f, y = V{} + 1e-7f;
  const long iters = 200000000;
  const auto start = std::chrono::steady_clock::now();
  for (long k = 0; k < iters; ++k) {
#pragma GCC unroll 12
    for (int i = 0; i < SUMS; ++i) acc[i] = acc[i] * x + y;
    __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]), "+v"(acc[2]), "+v"(acc[3]));  // keep the loop
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  float sum = 0;
  for (int i = 0; i < SUMS; ++i)
    for (int l = 0; l < LANES; ++l) sum += acc[i][l];
  const double rate = iters * SUMS / seconds;
  std::printf("%.2f G %d-byte FMAs/s on one core = %.1f GFLOP/s (checksum %.3f)\n", rate / 1e9, BYTES,
              rate * 2 * LANES / 1e9, sum);
}
