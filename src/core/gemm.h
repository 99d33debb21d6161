// The one GEMM entry point of the CPU backend (OpenBLAS). Row-major, like everything in dsmoe.
#pragma once
#include <cstdint>

namespace dsmoe {

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major with leading dimensions.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// C[M,N] = alpha A[M,K] B[K,N] + beta C with B laid out by pack_b_panels (core/gemm_kernel.h), for a
// B that many products share (the lm_head in the training forward's row blocks). Only where
// gemm_is_exact(false, false, M, N, K): with every element then summed as gemm() would, the bits
// are gemm()'s on the unpacked B. Split over the threads by rows.
void gemm_panels(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* panels,
                 float beta, float* C, int64_t ldc);
// Whether gemm() at this thread count computes every element of this product as one
// single-threaded OpenBLAS call does, which core/gemm_kernel reproduces bit for bit (and then runs
// either, whichever was measured faster for the shape: gemm_leaf_choice).
bool gemm_is_exact(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K);
// Which implementation this thread's single-threaded gemm() leaf runs for a product of this shape
// class (tests, benchmarks): 'e' core/gemm_kernel, 'b' OpenBLAS, 'm' still measuring (the first
// calls of a shape class time both), '-' only OpenBLAS reproduces the bits here. Same bits either
// way; DSMOE_GEMM_LEAF=exact|openblas|measure (default) fixes or measures the choice.
char gemm_leaf_choice(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K);

// Threading: dsmoe threads its GEMMs itself. A call made inside an OpenMP parallel region (per-expert
// GEMMs run in parallel across experts, attention blocks, prefill tiles) runs on its thread: the
// OpenMP build of OpenBLAS is single-threaded there. A call made outside one is split over the
// OpenMP threads, each part a single-threaded OpenBLAS call: one band of C per thread along its
// longer side, or, for a small C over a long K (weight gradients of small matrices), one slice of K
// per thread with the partial products added afterwards. For the skinny GEMMs of small models this
// beats OpenBLAS's own threading (2 threads, e.g. 4096x128x128 268 vs 180 GFLOP/s, dW 128x128 over
// 4096 tokens 248 vs 156; at 2048^3 both give 307; bench/RESULTS.md). Note openblas_set_num_threads
// would ALSO change omp_set_num_threads for every later region, so dsmoe does not call it.
int blas_threads();

}  // namespace dsmoe
