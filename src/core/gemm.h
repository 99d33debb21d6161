// The one GEMM entry point of the CPU backend (OpenBLAS). Row-major, like everything in dsmoe.
#pragma once
#include <cstdint>

namespace dsmoe {

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major with leading dimensions.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Threads OpenBLAS may use for one call. Inside our own OpenMP regions call gemm with 1 thread
// (per-expert GEMMs run in parallel across experts); outside them, all threads.
int blas_threads();
void set_blas_threads(int n);

}  // namespace dsmoe
