// The machine's ceiling for the CPU op's arithmetic: how many 64-byte fused multiply-adds
// (16 float lanes, the op's register width) one core retires per second, with 16
// independent sums in flight (more than latency x pipes on any x86 core).
//
//     g++ -O3 -march=native -o /tmp/cpu_fma_peak benchmarks/cpu_fma_peak.cpp && /tmp/cpu_fma_peak
//
// FLOP/s on C cores = rate x 32 (16 lanes, a multiply and an add) x C. The op's own rate is
// its FLOPs (rows x query heads x keys x head_dim x 4) over its time (cpu_op_bench.py).
#include <chrono>
#include <cstdio>

typedef float V __attribute__((vector_size(64)));

int main() {
  V acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = V{} + static_cast<float>(i) * 1e-3f;
  const V x = V{} + 0.999999f, y = V{} + 1e-7f;
  const long iters = 200000000;
  const auto start = std::chrono::steady_clock::now();
  for (long k = 0; k < iters; ++k) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = acc[i] * x + y;
    __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]), "+v"(acc[2]), "+v"(acc[3]));  // keep the loop
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  float sum = 0;
  for (int i = 0; i < 16; ++i)
    for (int l = 0; l < 16; ++l) sum += acc[i][l];
  const double rate = iters * 16 / seconds;
  std::printf("%.2f G 64-byte FMAs/s on one core = %.1f GFLOP/s (checksum %.3f)\n", rate / 1e9, rate * 32 / 1e9, sum);
}
