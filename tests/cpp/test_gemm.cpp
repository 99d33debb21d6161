// core/gemm: the one GEMM entry point, which splits a call made outside an OpenMP region over the
// threads: one band of C per thread (rows when M >= N, else columns), or slices of K with partial
// products for a small C over a long K. Every transpose combination, the three splits, band lengths
// that are and are not whole 16-row tiles, leading dimensions wider than the matrices (sub-matrix
// views) and beta 0 / 1 / other, against an fp64 triple loop.
//
// Tolerance: each element is an fp32 dot product of K terms (then alpha, beta); the classic bound
// |error| <= (K + 2) u sum_k |alpha a_ik b_kj| + 2 u |beta c_ij|, u = 2^-24, holds for any summation
// order, so it does not depend on how OpenBLAS or the band split blocks the sum.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/gemm.h"
#include "core/rng.h"
#include "test_util.h"

namespace {

using namespace dsmoe;

struct Case {
  bool ta, tb;
  int64_t M, N, K;
  float alpha, beta;
};

void check(const Case& c, Rng& rng) {
  const int64_t pad = 3;  // leading dimensions wider than the stored matrices
  const int64_t ar = c.ta ? c.K : c.M, ac = c.ta ? c.M : c.K;  // A as stored [ar, ac]
  const int64_t br = c.tb ? c.N : c.K, bc = c.tb ? c.K : c.N;
  const int64_t lda = ac + pad, ldb = bc + pad, ldc = c.N + pad;
  std::vector<float> A((size_t)(ar * lda)), B((size_t)(br * ldb)), C((size_t)(c.M * ldc));
  for (auto& x : A) x = (float)rng.normal();
  for (auto& x : B) x = (float)rng.normal();
  for (auto& x : C) x = (float)rng.normal();
  const std::vector<float> C0 = C;
  gemm(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data(), lda, B.data(), ldb, c.beta, C.data(), ldc);
  const double u = std::ldexp(1.0, -24);
  int64_t bad = 0;
  for (int64_t i = 0; i < c.M; ++i) {
    for (int64_t j = 0; j < c.N; ++j) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double a = c.ta ? A[k * lda + i] : A[i * lda + k];
        const double b = c.tb ? B[j * ldb + k] : B[k * ldb + j];
        ref += a * b;
        mag += std::fabs(a * b);
      }
      const double c0 = C0[i * ldc + j];
      ref = c.alpha * ref + (c.beta == 0 ? 0.0 : c.beta * c0);
      const double tol = (double)(c.K + 2) * u * std::fabs(c.alpha) * mag + 2 * u * std::fabs(c.beta * c0) + 1e-30;
      const double err = std::fabs((double)C[i * ldc + j] - ref);
      if (!(err <= tol) && bad++ < 5)
        ADD_FAILURE() << "ta=" << c.ta << " tb=" << c.tb << " [" << c.M << "x" << c.N << "x" << c.K << "] C[" << i
                      << "," << j << "] = " << C[i * ldc + j] << ", want " << ref << " (error " << err << " > " << tol
                      << ")";
    }
    // The padding between rows is never written.
    for (int64_t j = c.N; j < ldc; ++j)
      if (C[i * ldc + j] != C0[i * ldc + j] && bad++ < 5) ADD_FAILURE() << "padding C[" << i << "," << j << "] written";
  }
  EXPECT_EQ(bad, 0) << "ta=" << c.ta << " tb=" << c.tb << " [" << c.M << "x" << c.N << "x" << c.K << "]";
}

TEST(Gemm, ThreadedBandsMatchFp64) {
  // CTest runs this at 1, 2 and 3 threads: 1 checks the unsplit path, 2 and 3 the bands and K slices
  // (3 on a 2-core runner: uneven bands, oversubscribed).
  std::printf("[ threads  ] %d\n", omp_get_max_threads());
  Rng rng(test::test_seed() + 17);
  // Work above the split threshold (2^20 multiply-adds). Row bands: M >= N, with M a multiple of
  // 16 and not; column bands: N > M; a band length below 16 x threads (no tile alignment); K slices:
  // M * N <= 2^16 and K >= 8 max(M, N), K a multiple of 16 and not.
  const int64_t shapes[][3] = {{1000, 300, 40}, {130, 75, 300}, {75, 1000, 40}, {64, 130, 300}, {20, 9000, 8},
                               {128, 96, 4096}, {15, 128, 4001}, {200, 30, 2000}};
  for (const auto& s : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (float beta : {0.0f, 1.0f, -0.5f}) check(Case{ta == 1, tb == 1, s[0], s[1], s[2], 0.75f, beta}, rng);
}

TEST(Gemm, InsideAParallelRegionEachThreadComputesItsOwnProduct) {
  Rng rng(test::test_seed() + 18);
  const int64_t M = 300, N = 200, K = 64;
  std::vector<float> A((size_t)(M * K)), B((size_t)(K * N));
  for (auto& x : A) x = (float)rng.normal();
  for (auto& x : B) x = (float)rng.normal();
  const int T = omp_get_max_threads();
  std::vector<std::vector<float>> got(T, std::vector<float>((size_t)(M * N), NAN));
#pragma omp parallel num_threads(T)
  gemm(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, got[omp_get_thread_num()].data(), N);
  const double u = std::ldexp(1.0, -24);
  for (int t = 0; t < T; ++t) {
    int64_t bad = 0;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double ref = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
          ref += (double)A[i * K + k] * B[k * N + j];
          mag += std::fabs((double)A[i * K + k] * B[k * N + j]);
        }
        const double err = std::fabs((double)got[t][i * N + j] - ref);
        if (!(err <= (K + 2) * u * mag + 1e-30) && bad++ < 5)
          ADD_FAILURE() << "thread " << t << " C[" << i << "," << j << "] = " << got[t][i * N + j] << ", want " << ref;
      }
    EXPECT_EQ(bad, 0) << "thread " << t;
  }
}

}  // namespace
