// Hardware ceilings measured by the harness itself: SGEMM rate and memory read bandwidth.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <sys/mman.h>

#include <cstdlib>
#include <memory>
#include <vector>

#include "core/gemm.h"

static void Ceiling_Sgemm(benchmark::State& state) {
  const int64_t n = state.range(0);
  const int threads = (int)state.range(1);
  const int prev = omp_get_max_threads();  // restore what the user asked for (OMP_NUM_THREADS), not all cores
  omp_set_num_threads(threads);
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  for (auto _ : state) {
    dsmoe::gemm(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
  omp_set_num_threads(prev);
}
BENCHMARK(Ceiling_Sgemm)->Args({2048, 1})->Args({2048, 2})->Unit(benchmark::kMillisecond)->UseRealTime();

// Sum of a 1 GiB array (far beyond the last-level cache) with `threads` threads: the read
// bandwidth that bounds decoding. The first version (one `omp simd` reduction variable) was bound
// by the latency of a single chain of vector adds, not by memory (~8.5 GB/s). Now each thread
// keeps 64 independent float lanes (4 AVX-512 / 8 AVX2 accumulators, vectorised by -O3 without
// reassociation), the pages are touched before timing by the same threads and static schedule
// that read them, and the buffer is 2 MiB aligned so transparent huge pages can back it.
static void Ceiling_ReadBandwidth(benchmark::State& state) {
  const int threads = (int)state.range(0);
  const int prev = omp_get_max_threads();
  omp_set_num_threads(threads);
  constexpr int64_t kLanes = 64;
  const int64_t n = (1ll << 30) / 4;  // floats, a multiple of kLanes
  const int64_t blocks = n / kLanes;
  std::unique_ptr<float, decltype(&std::free)> buf((float*)std::aligned_alloc(2 << 20, n * sizeof(float)),
                                                   &std::free);
  float* a = buf.get();
  madvise(a, n * sizeof(float), MADV_HUGEPAGE);  // THP is "madvise" on Debian
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t j = 0; j < kLanes; ++j) a[b * kLanes + j] = 1.0f;
  for (auto _ : state) {
    float total = 0;
#pragma omp parallel reduction(+ : total)
    {
      alignas(64) float acc[kLanes] = {};
#pragma omp for schedule(static) nowait
      for (int64_t b = 0; b < blocks; ++b) {
        const float* p = a + b * kLanes;
        for (int64_t j = 0; j < kLanes; ++j) acc[j] += p[j];
      }
      for (int64_t j = 0; j < kLanes; ++j) total += acc[j];
    }
    benchmark::DoNotOptimize(total);
  }
  state.counters["GB/s"] = benchmark::Counter((double)n * 4, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
  omp_set_num_threads(prev);
}
BENCHMARK(Ceiling_ReadBandwidth)->Arg(1)->Arg(2)->ArgName("threads")->Unit(benchmark::kMillisecond)->UseRealTime();
