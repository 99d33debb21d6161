// Hardware ceilings measured by the harness itself: SGEMM rate and memory read bandwidth.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <vector>

#include "core/gemm.h"

static void Ceiling_Sgemm(benchmark::State& state) {
  const int64_t n = state.range(0);
  const int threads = (int)state.range(1);
  omp_set_num_threads(threads);
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  for (auto _ : state) {
    dsmoe::gemm(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
  omp_set_num_threads(omp_get_num_procs());
}
BENCHMARK(Ceiling_Sgemm)->Args({2048, 1})->Args({2048, 2})->Unit(benchmark::kMillisecond)->UseRealTime();

// Sum of a 512 MiB array with all threads: the read bandwidth that bounds decoding.
static void Ceiling_ReadBandwidth(benchmark::State& state) {
  const int64_t n = (512ll << 20) / 4;
  std::vector<float> a(n, 1.0f);
  for (auto _ : state) {
    float total = 0;
#pragma omp parallel for simd reduction(+ : total) schedule(static)
    for (int64_t i = 0; i < n; ++i) total += a[i];
    benchmark::DoNotOptimize(total);
  }
  state.counters["GB/s"] = benchmark::Counter((double)n * 4, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(Ceiling_ReadBandwidth)->Unit(benchmark::kMillisecond)->UseRealTime();
