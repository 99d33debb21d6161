// dsmoe_bench: hardware ceilings and dsmoe's kernels, side by side in one process.
//   ./build/dsmoe_bench --benchmark_filter=Ceiling       SGEMM GFLOP/s (1, 2 threads), read GB/s
//   ./build/dsmoe_bench --benchmark_filter=Moe           MoE layer forward+backward
//   ./build/dsmoe_bench --benchmark_filter=TrainStep     a whole training step
//   ./build/dsmoe_bench --benchmark_filter=Infer         bf16/q8/q4 decode + prefill, 16B expert shapes (bench/infer_bench.sh)
// Each kernel reports GFLOP/s; compare with the Ceiling rows of the same run (shared machines are noisy).
#include <benchmark/benchmark.h>

#include "core/blas_env.h"

int main(int argc, char** argv) {
  dsmoe::ensure_blas_kernels(argv);
  benchmark::AddCustomContext("openblas_kernels", dsmoe::blas_kernel_name());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
