// core/gemm_kernel: bit for bit the same as cblas_sgemm, the reference it replaces (a run trained
// before the kernel existed must continue with the same numbers). Every shape class the models
// use (expert, projection, lm_head, weight-gradient products), K on both sides of OpenBLAS's chunk
// lengths (320, 640, the halved remainders), products just above the small-matrix threshold,
// leading dimensions wider than the matrices (and a page or more wide, where the kernel copies
// operands into panels), alpha 1 / other, beta 0 / 1 / other, A transposed or
// not, and B given as B or (as core/gemm does for op(B) = B^T) transposed into a copy.
// On a CPU or OpenBLAS kernel set the order was not established for, the kernel is off and
// core/gemm never calls it; the test then checks only that.
#include <gtest/gtest.h>
#include <cblas.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/gemm.h"
#include "core/gemm_kernel.h"
#include "core/rng.h"

namespace {

using namespace dsmoe;

struct Shape {
  int64_t M, N, K;
};

// A value in [-1, 1) with 23 random bits: cheap (these tests fill millions), and every product and
// sum still rounds.
float uniform(Rng& rng) { return (float)((int64_t)(rng.next_u64() >> 40) - (int64_t(1) << 23)) / (float)(1 << 23); }

// Elements of C whose bits differ between OpenBLAS and gemm_exact (trans_b: the reference gets B^T
// stored [N, K], gemm_exact the same values as B [K, N]; with bt_in_place, gemm_exact_bt gets the
// reference's B^T itself); prints the first.
int64_t mismatches(Rng& rng, bool ta, bool tb, const Shape& s, float alpha, float beta, bool bt_in_place = false) {
  const int64_t M = s.M, N = s.N, K = s.K, pad = (int64_t)rng.below(3);
  const int64_t lda = (ta ? M : K) + pad, ldb = N + pad, ldbt = K + pad, ldc = N + pad;
  std::vector<float> A((size_t)((ta ? K : M) * lda)), B((size_t)(K * ldb)), Bt((size_t)(N * ldbt)),
      C((size_t)(M * ldc));
  for (auto& x : A) x = uniform(rng);
  for (auto& x : B) x = uniform(rng);
  for (auto& x : C) x = uniform(rng);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < N; ++j) Bt[(size_t)(j * ldbt + k)] = B[(size_t)(k * ldb + j)];
  std::vector<float> want = C, got = C;
  // The reference single-threaded, as core/gemm calls OpenBLAS where it uses the kernel (with several
  // OpenMP threads OpenBLAS would thread the call itself and chunk K differently).
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
              alpha, A.data(), (int)lda, tb ? Bt.data() : B.data(), (int)(tb ? ldbt : ldb), beta, want.data(), (int)ldc);
  omp_set_num_threads(threads);
  if (bt_in_place)
    gemm_exact_bt(M, N, K, alpha, A.data(), lda, Bt.data(), ldbt, beta, got.data(), ldc);
  else
    gemm_exact(ta, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, got.data(), ldc);
  const char* kernel = bt_in_place ? "gemm_exact_bt" : "gemm_exact";
  int64_t bad = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      const float w = want[(size_t)(i * ldc + j)], g = got[(size_t)(i * ldc + j)];
      if (std::memcmp(&w, &g, sizeof w) == 0) continue;
      if (bad++ == 0)
        ADD_FAILURE() << (ta ? "T" : "N") << (tb ? "T" : "N") << " M " << M << " N " << N << " K " << K << " alpha "
                      << alpha << " beta " << beta << ": C[" << i << "][" << j << "] OpenBLAS " << w << " ("
                      << std::hexfloat << w << "), " << kernel << " " << g << " (" << g << ")" << std::defaultfloat;
    }
  return bad;
}

TEST(GemmKernel, OffWhereNotEstablished) {
  if (gemm_exact_available()) {
    __builtin_cpu_init();
    EXPECT_TRUE(__builtin_cpu_supports("avx512f"));
    const std::string core = openblas_get_corename();
    EXPECT_TRUE(core == "Cooperlake" || core == "SkylakeX") << core;
  }
  EXPECT_FALSE(gemm_exact_applies(100, 100, 100));  // OpenBLAS's small-matrix kernels: never replaced
  EXPECT_TRUE(gemm_exact_applies(100, 100, 101));
}

TEST(GemmKernel, BitIdenticalToOpenBlasOnModelShapes) {
  if (!gemm_exact_available()) GTEST_SKIP() << "no AVX-512 or another OpenBLAS kernel set: core/gemm uses OpenBLAS";
  // Issue 16's small models (hidden 64, experts of 44 and 176, vocab 8192, 4096 tokens), the
  // default config's (hidden 128), and K around the chunk boundaries.
  const Shape shapes[] = {{455, 88, 64},   {455, 64, 44},  {455, 44, 64},  {455, 64, 88},   {64, 44, 455},
                          {88, 64, 455},   {32, 8192, 64}, {4096, 64, 64}, {4096, 63, 64},  {4096, 64, 63},
                          {4096, 352, 64}, {64, 64, 4096}, {176, 64, 700}, {64, 176, 641}, {40, 40, 639},
                          {30, 30, 1290},  {70, 72, 960},  {1, 1000, 1001}, {1001, 1, 1000}, {33, 47, 655},
                          // Operands whose rows are a page or more apart, copied into panels first:
                          // A^T in row blocks (a partial last block, several chunks), and B panels
                          // shared by several row tiles (one or many column tiles).
                          {3000, 64, 700}, {1100, 100, 650}, {40, 1030, 330}, {200, 1500, 64}, {1030, 1030, 20}};
  Rng rng(7);
  int64_t bad = 0;
  for (const Shape& s : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (float alpha : {1.0f, 0.37f})
          for (float beta : {0.0f, 1.0f, 0.5f}) bad += mismatches(rng, ta, tb, s, alpha, beta);
  EXPECT_EQ(bad, 0);
}

TEST(GemmKernel, BitIdenticalToOpenBlasOnRandomShapes) {
  if (!gemm_exact_available()) GTEST_SKIP() << "no AVX-512 or another OpenBLAS kernel set: core/gemm uses OpenBLAS";
  Rng rng(11);
  int64_t bad = 0, tried = 0;
  while (tried < 400) {
    Shape s{1 + (int64_t)rng.below(200), 1 + (int64_t)rng.below(200), 1 + (int64_t)rng.below(tried % 2 ? 1400 : 330)};
    if (tried % 4 == 3) s.K = (int64_t)(kSmallMatrixMNK / (double)(s.M * s.N)) + 1 + (int64_t)rng.below(3);
    if (!gemm_exact_applies(s.M, s.N, s.K) || s.K > 5000) continue;
    ++tried;
    bad += mismatches(rng, rng.below(2), rng.below(2), s, rng.below(2) ? 1.0f : 0.123f, 0.5f * (float)rng.below(3));
  }
  EXPECT_EQ(bad, 0);
}

// B^T read in place for a few rows (decode): 1 to kMaxRowsBtInPlace rows, N not a multiple of the
// 16-column blocks, K across the chunk lengths and not a multiple of the 16-k blocks, the decode
// shapes of the 16B model's projections and experts (K 2048 and 1408, cut to bands of N).
TEST(GemmKernel, BtInPlaceIsBitIdenticalForFewRows) {
  if (!gemm_exact_available()) GTEST_SKIP() << "no AVX-512 or another OpenBLAS kernel set: core/gemm uses OpenBLAS";
  Rng rng(13);
  int64_t bad = 0, tried = 0;
  for (int64_t M = 1; M <= kMaxRowsBtInPlace; ++M)
    for (const Shape s : {Shape{M, 700, 2048}, Shape{M, 333, 1408}, Shape{M, 1000, 1001}, Shape{M, 17, 65536},
                          Shape{M, 250, 641}, Shape{M, 1500, 700}, Shape{M, 130, 9999}})
      for (float beta : {0.0f, 1.0f, 0.5f}) {
        if (!gemm_exact_applies(s.M, s.N, s.K)) continue;
        ++tried;
        bad += mismatches(rng, false, true, s, M % 2 ? 1.0f : 0.37f, beta, true);
      }
  EXPECT_GT(tried, 100);
  EXPECT_EQ(bad, 0);
}

// core/gemm at this process's thread count (the test runs at 1, 2 and 3) gives the bits core/gemm
// gave before the kernel existed: a product too small for dsmoe's own split but above the
// small-matrix threshold went to OpenBLAS unsplit, which threads it itself with several threads (its
// threaded driver chunks K differently: the kernel must not be used there); a product dsmoe splits
// went to single-threaded OpenBLAS calls per band or K slice, now the kernel's.
TEST(GemmKernel, CoreGemmKeepsItsNumbersAtThisThreadCount) {
  Rng rng(5);
  const struct {
    bool ta, tb;
    int64_t M, N, K;
  } cases[] = {{false, false, 100, 100, 102}, {true, false, 64, 44, 360}, {false, true, 44, 64, 370},
               {false, false, 4096, 64, 64}, {true, false, 64, 64, 4096}, {false, true, 4096, 88, 64}};
  for (const auto& c : cases) {
    const int64_t lda = c.ta ? c.M : c.K, ldb = c.tb ? c.K : c.N;
    std::vector<float> A((size_t)(c.M * c.K)), B((size_t)(c.K * c.N)), C((size_t)(c.M * c.N));
    for (auto& x : A) x = uniform(rng);
    for (auto& x : B) x = uniform(rng);
    for (auto& x : C) x = uniform(rng);
    std::vector<float> want = C, got = C;
    const int T = omp_get_max_threads();
    const bool dsmoe_splits = T > 1 && c.M * c.N * c.K >= (int64_t(1) << 20);  // core/gemm's kMinSplitWork
    // A product dsmoe splits runs its pieces on single threads: the split is test_gemm's, each
    // piece's bits are the tests above (the kernel, or OpenBLAS below the threshold).
    if (dsmoe_splits) continue;
    cblas_sgemm(CblasRowMajor, c.ta ? CblasTrans : CblasNoTrans, c.tb ? CblasTrans : CblasNoTrans, (int)c.M, (int)c.N,
                (int)c.K, 0.75f, A.data(), (int)lda, B.data(), (int)ldb, 1.0f, want.data(), (int)c.N);
    gemm(c.ta, c.tb, c.M, c.N, c.K, 0.75f, A.data(), lda, B.data(), ldb, 1.0f, got.data(), c.N);
    int64_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) bad += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
    EXPECT_EQ(bad, 0) << (c.ta ? "T" : "N") << (c.tb ? "T" : "N") << " " << c.M << "x" << c.N << "x" << c.K << " at "
                      << T << " threads: " << bad << " elements differ from OpenBLAS called as core/gemm called it";
  }
}

// B laid out once in column panels (the training forward's lm_head) and multiplied by gemm_panels
// gives gemm()'s bits on the plain B at this thread count, wherever gemm_is_exact says gemm() runs
// the kernel: one tile of all N (N <= 96), many tiles with a narrower last one, K over several
// chunks, rows split over the threads or not, beta 0 / 1 / other.
TEST(GemmKernel, PanelsGiveGemmsBits) {
  if (!gemm_exact_available()) GTEST_SKIP() << "no AVX-512 or another OpenBLAS kernel set: core/gemm uses OpenBLAS";
  Rng rng(17);
  EXPECT_TRUE(gemm_is_exact(false, false, 32, 8192, 64)) << "the small models' lm_head block at "
                                                         << omp_get_max_threads() << " threads";
  int tried = 0;
  for (const Shape s : {Shape{32, 8192, 64}, Shape{33, 1000, 330}, Shape{40, 90, 700}, Shape{7, 2000, 641},
                        Shape{300, 200, 64}, Shape{3, 8192, 64}})
    for (float beta : {0.0f, 1.0f, 0.5f}) {
      if (!gemm_is_exact(false, false, s.M, s.N, s.K)) continue;
      ++tried;
      const int64_t M = s.M, N = s.N, K = s.K, lda = K + 3;
      std::vector<float> A((size_t)(M * lda)), Bt((size_t)(N * K)), C((size_t)(M * N));
      for (auto& x : A) x = uniform(rng);
      for (auto& x : Bt) x = uniform(rng);
      for (auto& x : C) x = uniform(rng);
      std::vector<float> B((size_t)(K * N)), panels((size_t)(K * N));
      transpose_for_gemm(B.data(), Bt.data(), K, N, K);
      pack_b_panels(panels.data(), Bt.data(), K, N, K);
      std::vector<float> want = C, got = C;
      gemm(false, false, M, N, K, 0.75f, A.data(), lda, B.data(), N, beta, want.data(), N);
      gemm_panels(M, N, K, 0.75f, A.data(), lda, panels.data(), beta, got.data(), N);
      int64_t bad = 0, first = -1;
      for (size_t i = 0; i < got.size(); ++i)
        if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0 && bad++ == 0) first = (int64_t)i;
      EXPECT_EQ(bad, 0) << M << "x" << N << "x" << K << " beta " << beta << " at " << omp_get_max_threads()
                        << " threads: first at C[" << first / N << "][" << first % N << "]";
    }
  EXPECT_GE(tried, 12);
}

// gemm()'s single-threaded leaf runs core/gemm_kernel or OpenBLAS, whichever its first calls of a
// shape class measured faster (core/gemm.cpp): every call, while measuring and after, has
// OpenBLAS's bits, and the choice is made after the trials (not left measuring). Shapes from the
// small models and Dense x16 (both orientations of B, A transposed for weight gradients).
TEST(GemmKernel, MeasuredLeafChoiceKeepsOpenBlasBits) {
  if (!gemm_exact_available()) GTEST_SKIP() << "no AVX-512 or another OpenBLAS kernel set: core/gemm uses OpenBLAS";
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);  // a leaf product: one thread (or inside a parallel region)
  Rng rng(23);
  struct Case {
    bool ta, tb;
    Shape s;
  };
  for (const Case c : {Case{false, true, {455, 88, 64}}, Case{true, false, {64, 44, 455}}, Case{false, true, {512, 64, 64}},
                       Case{false, false, {512, 704, 64}}, Case{true, false, {704, 64, 512}}}) {
    const int64_t M = c.s.M, N = c.s.N, K = c.s.K;
    ASSERT_NE(gemm_leaf_choice(c.ta, c.tb, M, N, K), '-') << M << "x" << N << "x" << K << " is a kernel shape";
    std::vector<float> A((size_t)(M * K)), B((size_t)(K * N)), C0((size_t)(M * N));
    for (auto& x : A) x = uniform(rng);
    for (auto& x : B) x = uniform(rng);
    for (auto& x : C0) x = uniform(rng);
    const int64_t lda = c.ta ? M : K, ldb = c.tb ? K : N;
    std::vector<float> want = C0;
    cblas_sgemm(CblasRowMajor, c.ta ? CblasTrans : CblasNoTrans, c.tb ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                (int)K, 0.5f, A.data(), (int)lda, B.data(), (int)ldb, 1.0f, want.data(), (int)N);
    for (int call = 0; call < 12; ++call) {
      const char before = gemm_leaf_choice(c.ta, c.tb, M, N, K);
      std::vector<float> got = C0;
      gemm(c.ta, c.tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 1.0f, got.data(), N);
      int64_t bad = 0, first = -1;
      for (size_t i = 0; i < got.size(); ++i)
        if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0 && bad++ == 0) first = (int64_t)i;
      ASSERT_EQ(bad, 0) << (c.ta ? "T" : "N") << (c.tb ? "T" : "N") << " " << M << "x" << N << "x" << K << " call "
                        << call << " (choice '" << before << "'): first at C[" << first / N << "][" << first % N << "]";
    }
    const char chosen = gemm_leaf_choice(c.ta, c.tb, M, N, K);
    EXPECT_TRUE(chosen == 'e' || chosen == 'b') << M << "x" << N << "x" << K << " still '" << chosen << "' after 12 calls";
  }
  omp_set_num_threads(threads);
}

TEST(GemmKernel, NaNInCIsIgnoredForBetaZero) {
  if (!gemm_exact_available()) GTEST_SKIP() << "no AVX-512 or another OpenBLAS kernel set";
  const int64_t M = 64, N = 64, K = 300;
  std::vector<float> A((size_t)(M * K), 0.5f), B((size_t)(K * N), 0.25f), C((size_t)(M * N), NAN);
  gemm_exact(false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
  for (float c : C) ASSERT_EQ(c, 0.125f * K);
}

}  // namespace
