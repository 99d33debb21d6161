// The one GEMM entry point of the CPU backend (OpenBLAS). Row-major, like everything in dsmoe.
#pragma once
#include <cstdint>

namespace dsmoe {

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major with leading dimensions.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Threading: the OpenMP build of OpenBLAS runs a call single-threaded when made from inside an
// OpenMP parallel region (e.g. per-expert GEMMs run in parallel across experts) and with all OpenMP
// threads outside one. Nothing needs to be set. Note openblas_set_num_threads would ALSO change
// omp_set_num_threads for every later region, so dsmoe does not call it.
int blas_threads();

}  // namespace dsmoe
