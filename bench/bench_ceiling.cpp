// Hardware ceilings measured by the harness itself: SGEMM rate and memory read bandwidth.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <sys/mman.h>

#include <cblas.h>

#include <cstdlib>
#include <string>
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
    // OpenBLAS's own threading, not dsmoe::gemm's split: the ceiling is the library's best on a large
    // square product (the split measured within a few % of it there, slightly below; Gemm_Split).
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)n, (int)n, 1.0f, a.data(), (int)n, b.data(), (int)n,
                0.0f, c.data(), (int)n);
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

// The skinny GEMMs of a hidden-128 model, by dsmoe's gemm() (split over the threads by dsmoe, each
// part a single-threaded OpenBLAS call; core/gemm.h) against one cblas_sgemm call that OpenBLAS
// threads itself: why gemm() splits. Cases (M x N x K, transposes as the model calls them):
//   0: 4096x128x128 (q/k/v/o forward)   1: 4096x1024x128 (dense FFN up)   2: 2048x128x4096 (lm_head dW)
//   3: 128x128x4096 (projection dW)      4: 15x128x4096 (router dW)        5: 2048^3 (the ceiling)
static void Gemm_Split(benchmark::State& state) {
  struct Case {
    bool ta, tb;
    int64_t M, N, K;
    const char* name;
  };
  static const Case cases[] = {{false, true, 4096, 128, 128, "4096x128x128"},   {false, true, 4096, 1024, 128, "4096x1024x128"},
                               {true, false, 2048, 128, 4096, "dW 2048x128x4096"}, {true, false, 128, 128, 4096, "dW 128x128x4096"},
                               {true, false, 15, 128, 4096, "dW 15x128x4096"},    {false, true, 2048, 2048, 2048, "2048^3"}};
  const Case& c = cases[state.range(0)];
  const bool split = state.range(1) == 1;
  state.SetLabel(std::string(c.name) + (split ? " dsmoe gemm" : " cblas_sgemm (OpenBLAS threads)"));
  std::vector<float> a((size_t)(c.M * c.K), 0.01f), b((size_t)(c.K * c.N), 0.02f), out((size_t)(c.M * c.N));
  const int64_t lda = c.ta ? c.M : c.K, ldb = c.tb ? c.K : c.N;
  for (auto _ : state) {
    if (split)
      dsmoe::gemm(c.ta, c.tb, c.M, c.N, c.K, 1.0f, a.data(), lda, b.data(), ldb, 1.0f, out.data(), c.N);
    else
      cblas_sgemm(CblasRowMajor, c.ta ? CblasTrans : CblasNoTrans, c.tb ? CblasTrans : CblasNoTrans, (int)c.M, (int)c.N,
                  (int)c.K, 1.0f, a.data(), (int)lda, b.data(), (int)ldb, 1.0f, out.data(), (int)c.N);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * c.M * c.N * c.K, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
// Each case runs both ways back to back (the machines are shared: compare neighbours).
BENCHMARK(Gemm_Split)
    ->Args({0, 0})->Args({0, 1})->Args({1, 0})->Args({1, 1})->Args({2, 0})->Args({2, 1})
    ->Args({3, 0})->Args({3, 1})->Args({4, 0})->Args({4, 1})->Args({5, 0})->Args({5, 1})
    ->ArgNames({"case", "split"})->UseRealTime();

// The GEMMs of one training step of the issue-16 suite's small models (hidden 64, vocab 8192,
// 4096 tokens a step, experts of 44; bench/RESULTS.md "Small-model training"), as Model makes them,
// by dsmoe's gemm() (core/gemm_kernel where it reproduces OpenBLAS's rounding) against one
// cblas_sgemm call, at the thread count the run sets (the suite trains with one). Cases:
//   0: lm_head forward, one 32-row block against the transposed weight  NN 32x8192x64
//   1: lm_head dX  NN 4096x64x8192       2: lm_head dW  TN 8192x64x4096 (dlogits^T x)
//   3: expert gate/up  NT 455x88x64      4: expert dW_down  TN 64x44x455
//   5: attention projection forward  NT 4096x64x64   6: its dW  TN 64x64x4096
//   7-12: Dense x16's FFN (2816 wide): gate/up NT 4096x5632x64, down NT 4096x64x2816, d_act NN
//         4096x2816x64, dX NN 4096x64x5632, dW_gate_up TN 5632x64x4096, dW_down TN 64x2816x4096
static void Gemm_SmallModel(benchmark::State& state) {
  struct Case {
    bool ta, tb;
    int64_t M, N, K;
    const char* name;
  };
  static const Case cases[] = {{false, false, 32, 8192, 64, "lm_head fwd block"}, {false, false, 4096, 64, 8192, "lm_head dX"},
                               {true, false, 8192, 64, 4096, "lm_head dW"},       {false, true, 455, 88, 64, "expert gate/up"},
                               {true, false, 64, 44, 455, "expert dW_down"},       {false, true, 4096, 64, 64, "attn proj"},
                               {true, false, 64, 64, 4096, "attn proj dW"},
                               // Dense x16 (FFN 2816): the suite's costliest model.
                               {false, true, 4096, 5632, 64, "x16 gate/up"},     {false, true, 4096, 64, 2816, "x16 down"},
                               {false, false, 4096, 2816, 64, "x16 d_act"},      {false, false, 4096, 64, 5632, "x16 dX"},
                               {true, false, 5632, 64, 4096, "x16 dW_gate_up"},  {true, false, 64, 2816, 4096, "x16 dW_down"}};
  const Case& c = cases[state.range(0)];
  const bool ours = state.range(1) == 1;
  state.SetLabel(std::string(c.name) + (ours ? " dsmoe gemm" : " cblas_sgemm"));
  std::vector<float> a((size_t)(c.M * c.K)), b((size_t)(c.K * c.N)), out((size_t)(c.M * c.N), 0.0f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 0.001f * (float)(i % 997);
  for (size_t i = 0; i < b.size(); ++i) b[i] = 0.002f * (float)(i % 991);
  const int64_t lda = c.ta ? c.M : c.K, ldb = c.tb ? c.K : c.N;
  for (auto _ : state) {
    if (ours)
      dsmoe::gemm(c.ta, c.tb, c.M, c.N, c.K, 1.0f, a.data(), lda, b.data(), ldb, 1.0f, out.data(), c.N);
    else
      cblas_sgemm(CblasRowMajor, c.ta ? CblasTrans : CblasNoTrans, c.tb ? CblasTrans : CblasNoTrans, (int)c.M, (int)c.N,
                  (int)c.K, 1.0f, a.data(), (int)lda, b.data(), (int)ldb, 1.0f, out.data(), (int)c.N);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * c.M * c.N * c.K, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
  // gemm()'s measured choice for the shape (e: core/gemm_kernel, b: OpenBLAS, -: OpenBLAS only).
  if (ours) state.SetLabel(std::string(c.name) + " dsmoe gemm [" + dsmoe::gemm_leaf_choice(c.ta, c.tb, c.M, c.N, c.K) + "]");
}
BENCHMARK(Gemm_SmallModel)
    ->ArgsProduct({{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {0, 1}})
    ->ArgNames({"case", "dsmoe"})->UseRealTime();
