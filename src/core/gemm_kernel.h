// An AVX-512 SGEMM that rounds exactly as Debian 12's OpenBLAS (0.3.21, the SkylakeX / Cooperlake
// kernel sets) does, without its packing: for the small models' GEMMs OpenBLAS spends as long
// copying operands into its panels (and zeroing C for beta 0) as multiplying them (bench/RESULTS.md
// "Small-model training"), while a run's results must not change when the engine does (the issue-16
// suite continues across builds).
//
// What "exactly" means, measured against cblas_sgemm (tests/cpp/test_gemm_kernel.cpp): OpenBLAS
// first scales C by beta (0: C = 0), then walks K in chunks (level3.c: a chunk of GEMM_Q = 320 while
// at least 2 Q remain, else the rest split in two halves rounded up to 16, else the rest), and per
// chunk adds c = fma(alpha, acc, c), where acc is the chunk's products accumulated in order by fused
// multiply-adds from 0. The kernel here keeps that order for every element; only the loops around it
// (which elements are computed together, what is read from where) differ. Products of at most 100^3
// multiply-adds take OpenBLAS's small-matrix kernels instead (sgemm_small_kernel_permit), some of
// which sum K in vector lanes: those are left to OpenBLAS (gemm_exact_applies).
#pragma once
#include <cstdint>

namespace dsmoe {

// Whether gemm_exact reproduces this process's OpenBLAS: an AVX-512 CPU, and OpenBLAS running the
// kernel set the order above was established for (SkylakeX or Cooperlake; core/blas_env picks one
// of them on such CPUs). DSMOE_NO_EXACT_GEMM=1 turns it off (every product then goes to OpenBLAS).
bool gemm_exact_available();

// OpenBLAS's small-matrix threshold: M N K > 100^3 goes through its level-3 driver, which
// gemm_exact reproduces; anything smaller must be left to OpenBLAS.
constexpr double kSmallMatrixMNK = 100.0 * 100.0 * 100.0;
bool gemm_exact_applies(int64_t M, int64_t N, int64_t K);

// C[M,N] = alpha op(A)[M,K] B[K,N] + beta C, row-major with leading dimensions, on the calling
// thread, bit-identical to cblas_sgemm(RowMajor, trans_a, NoTrans or Trans on B's transpose, ...)
// when gemm_exact_available() and gemm_exact_applies(M, N, K) (required), and OpenBLAS runs the
// product single-threaded (inside an OpenMP parallel region, or with one OpenMP thread: its
// threaded driver cuts K in other chunks, (K + 1) / 2 for the last two).
// B is never transposed: a caller with B^T transposes it into a buffer first (once per training
// forward for the lm_head; core/gemm does it per call for small B).
void gemm_exact(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// gemm_exact with op(B) = B^T read where it lies, for products of at most kMaxRowsBtInPlace rows of
// A (not transposed): the same rounding (each element's K chunks, fused multiply-adds in k order),
// with 16 x 16 blocks of B^T transposed in registers on the way instead of all of B^T first. One pass
// over B^T and nothing written but C: the least memory traffic a product of a few rows can have, and
// a batch-1 decode is such products against every weight of the model (bench/RESULTS.md). Same
// preconditions as gemm_exact.
constexpr int64_t kMaxRowsBtInPlace = 8;
void gemm_exact_bt(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* Bt,
                   int64_t ldb, float beta, float* C, int64_t ldc);

// A B that many products share (the lm_head, multiplied by every row block of a training forward),
// laid out once as gemm_exact walks it: its column tiles one after another, each [K][tile width]
// contiguous (N K floats in all), from B^T [N, K] (leading dimension ldb). Read in place, a B with
// rows far apart (the transposed [64, 8192] lm_head) is a gather from L3 for every tile.
void pack_b_panels(float* out, const float* Bt, int64_t ldb, int64_t N, int64_t K);
// gemm_exact with op(A) = A and B given as pack_b_panels(N, K) wrote it: the same rounding. Also on
// a band of rows of a product that qualifies (core/gemm's gemm_panels splits one over threads):
// the size condition is the whole product's, checked by the caller.
void gemm_exact_panels(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* panels,
                       float beta, float* C, int64_t ldc);

// out [K, N] = the transpose of B^T [N, K] (leading dimension ldb): gemm_exact's B for a product
// with op(B) = B^T. In 16 x 16 blocks, so that both sides touch whole cache lines.
void transpose_for_gemm(float* out, const float* Bt, int64_t ldb, int64_t N, int64_t K);

}  // namespace dsmoe
