// The machine's ceiling for bfloat16 dot products, beside cpu_fma_peak.cpp's float32 one:
// how many 64-byte bfloat16 pair dot products (vdpbf16ps: 32 bfloat16 products summed in
// pairs into 16 float lanes, AVX512-BF16) one core retires per second, with 16 independent
// sums in flight; and, for the CPU op's own way (a bfloat16 register widened to float32 in
// two halves, then float32 FMAs), how many 64-byte bfloat16 loads' worth of products.
//
//     g++ -O3 -march=native -o /tmp/cpu_bf16_dot_peak benchmarks/cpu_bf16_dot_peak.cpp && /tmp/cpu_bf16_dot_peak
//
// FLOP/s on C cores = rate x 64 (32 products and their sums) x C.
#include <immintrin.h>

#include <chrono>
#include <cstdio>

int main() {
#ifdef __AVX512BF16__
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.25f));
  const __m512bh y = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
  const long iters = 200000000;
  auto start = std::chrono::steady_clock::now();
  for (long k = 0; k < iters; ++k) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], x, y);
    __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]), "+v"(acc[2]), "+v"(acc[3]));
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  float sum = 0;
  for (int i = 0; i < 16; ++i) sum += _mm512_reduce_add_ps(acc[i]);
  double rate = iters * 16 / seconds;
  std::printf("vdpbf16ps: %.2f G/s on one core = %.1f GFLOP/s (checksum %.3f)\n", rate / 1e9, rate * 64 / 1e9, sum);
#else
  std::printf("vdpbf16ps: this CPU (or compiler) has no AVX512-BF16\n");
#endif
}
