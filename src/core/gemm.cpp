#include "core/gemm.h"

#include "core/error.h"
#include "core/gemm_kernel.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <vector>

namespace dsmoe {

namespace {

// The largest B^T (floats) that sgemm transposes per call for gemm_exact: 4 MB, the size of L2 + a
// share of L3; every weight of the issue-16 models is smaller (hidden 64 x vocab 8192 = 0.5M floats).
constexpr int64_t kMaxTransposedFloats = int64_t(1) << 20;

// Whether core/gemm_kernel may run a single-threaded leaf product (with OpenBLAS's bits; sgemm
// then runs whichever of the two was measured faster).
bool exact_leaf(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K) {
  if (!gemm_exact_available() || !gemm_exact_applies(M, N, K)) return false;
  // A B^T is transposed per call, so only a small one (the small models' weights): the transpose of
  // a large weight costs more than packing saves, and with few rows (f32 decode of a 16B-shaped
  // model: one row times a [10944, 2048] weight) it is the whole cost (bench/RESULTS.md
  // "Small-model training"). Either path gives the same bits. A few rows read B^T in place.
  return !trans_b || N * K <= kMaxTransposedFloats || (!trans_a && M <= kMaxRowsBtInPlace);
}

void blas_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N,
              (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

// A single-threaded product on core/gemm_kernel (no packing of A or B, no separate zeroing of C for
// beta 0: bench/RESULTS.md "Small-model training"); B^T is transposed into a per-thread scratch
// first, a small copy for the weights of the small models (the lm_head, which every row block of
// the training forward multiplies, is laid out once per forward by Model instead), or read in
// place for a few rows (decode, the small models' per-expert products).
void exact_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (trans_b && !trans_a && M <= kMaxRowsBtInPlace) return gemm_exact_bt(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  if (!trans_b) return gemm_exact(trans_a, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  thread_local std::vector<float> bt;
  if (bt.size() < (size_t)(K * N)) bt.resize((size_t)(K * N));
  transpose_for_gemm(bt.data(), B, ldb, N, K);
  gemm_exact(trans_a, M, N, K, alpha, A, lda, bt.data(), N, beta, C, ldc);
}

// Which of the two runs a leaf product that both compute with the same bits. Neither is faster
// everywhere: on a Zen 5 CPU OpenBLAS (which packs both operands) won by 20-50% on the Dense x16
// FFN's products and the experts' gate/up, the kernel by 20-35% on the attention projections and the
// experts' dW_down; on the Intel machine of bench/RESULTS.md the kernel won almost everywhere. So it
// is measured: per thread and shape class, the first kTrialsEach calls of each run in turn, timed,
// and the one with the lower best time per multiply-add runs from then on. The bits are the same
// whichever runs, so a run's numbers do not depend on the timings. DSMOE_GEMM_LEAF=exact|openblas
// fixes the choice (benchmarks that compare the two).
constexpr int kTrialsEach = 4;

struct LeafTrials {
  double best[2] = {1e300, 1e300};  // seconds per multiply-add: [0] the kernel, [1] OpenBLAS
  int calls = 0;
};

// Shape classes: each dimension to a quarter of an octave (the experts' row counts change every
// step; their neighbours behave alike), with the transposes.
uint64_t quarter_octave(int64_t x) {
  const int lg = 63 - __builtin_clzll((uint64_t)x);
  const int frac = lg >= 2 ? (int)((x >> (lg - 2)) & 3) : (int)((x << (2 - lg)) & 3);
  return (uint64_t)(lg * 4 + frac);
}
uint64_t shape_class(bool ta, bool tb, int64_t M, int64_t N, int64_t K) {
  return (uint64_t)ta | (uint64_t)tb << 1 | quarter_octave(M) << 2 | quarter_octave(N) << 10 | quarter_octave(K) << 18;
}

// -1: measure; 0: always the kernel; 1: always OpenBLAS.
int forced_leaf() {
  static const int forced = [] {
    const char* v = std::getenv("DSMOE_GEMM_LEAF");
    if (!v || !*v || std::strcmp(v, "measure") == 0) return -1;
    if (std::strcmp(v, "exact") == 0) return 0;
    if (std::strcmp(v, "openblas") == 0) return 1;
    // Read on the first product, possibly inside a parallel region, where an exception cannot
    // reach the caller: said on stderr, once, instead.
    std::fprintf(stderr, "dsmoe: warning: DSMOE_GEMM_LEAF='%.40s' is none of exact, openblas, measure: measuring\n", v);
    return -1;
  }();
  return forced;
}

std::unordered_map<uint64_t, LeafTrials>& leaf_trials() {
  thread_local std::unordered_map<uint64_t, LeafTrials> trials;
  return trials;
}

// One single-threaded product. Only where OpenBLAS would run it on this thread (called outside a
// parallel region with several OpenMP threads it threads the call itself, and its threaded driver
// cuts K differently) may core/gemm_kernel run it instead: see exact_leaf.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const bool single_threaded = omp_in_parallel() || omp_get_max_threads() == 1;
  if (!single_threaded || !exact_leaf(trans_a, trans_b, M, N, K))
    return blas_sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  const auto run = [&](int which) {  // 0: the kernel, 1: OpenBLAS
    (which == 0 ? exact_sgemm : blas_sgemm)(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  };
  const int forced = forced_leaf();
  if (forced >= 0) return run(forced);
  LeafTrials& t = leaf_trials()[shape_class(trans_a, trans_b, M, N, K)];
  if (t.calls >= 2 * kTrialsEach) return run(t.best[0] <= t.best[1] ? 0 : 1);
  const int which = t.calls++ % 2;
  const auto t0 = std::chrono::steady_clock::now();
  run(which);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  t.best[which] = std::min(t.best[which], s / ((double)M * (double)N * (double)K));
}

// Below this many multiply-adds a second thread costs more than it saves.
constexpr int64_t kMinSplitWork = int64_t(1) << 20;

// [b0, b1) of `len` for thread t of nt, in whole units of `align`.
void band(int64_t len, int64_t align, int t, int nt, int64_t& b0, int64_t& b1) {
  const int64_t units = (len + align - 1) / align;
  b0 = std::min(len, units * t / nt * align);
  b1 = std::min(len, units * (t + 1) / nt * align);
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const int T = omp_get_max_threads();
  if (omp_in_parallel() || T == 1 || M * N * K < kMinSplitWork)
    return sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  if (M * N <= (int64_t(1) << 16) && K >= 8 * std::max(M, N)) {
    // Small C, long K (weight gradients of small matrices: dW = dY^T X over all tokens): split K.
    // Thread 0 accumulates into C with the caller's beta, the others into private partials, which
    // are then added in thread order (deterministic for a given thread count).
    // Reused across calls (weight gradients come here every layer of every step); every partial is
    // fully written below, so it needs no zeroing.
    thread_local std::vector<float> part;
    if (part.size() < (size_t)((T - 1) * M * N)) part.resize((size_t)((T - 1) * M * N));
    float* const partial = part.data();  // the calling thread's buffer (thread_local: not named in the region)
#pragma omp parallel num_threads(T)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      int64_t k0, k1;
      band(K, 16, t, nt, k0, k1);
      const float* a = trans_a ? A + k0 * lda : A + k0;
      const float* b = trans_b ? B + k0 : B + k0 * ldb;
      if (t == 0) {
        sgemm(trans_a, trans_b, M, N, k1 - k0, alpha, a, lda, b, ldb, beta, C, ldc);
      } else {
        float* p = partial + (t - 1) * M * N;
        if (k1 > k0) sgemm(trans_a, trans_b, M, N, k1 - k0, alpha, a, lda, b, ldb, 0.0f, p, N);
        else std::fill(p, p + M * N, 0.0f);
      }
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t i = 0; i < M; ++i)
        for (int u = 0; u < nt - 1; ++u) {
          const float* p = partial + (u * M + i) * N;
          float* c = C + i * ldc;
#pragma omp simd
          for (int64_t j = 0; j < N; ++j) c[j] += p[j];
        }
    }
    return;
  }
  // Otherwise one band of C per thread along its longer side, each a single-threaded OpenBLAS call
  // (OpenBLAS's OpenMP build runs single-threaded inside a parallel region) on the band's part of
  // A or B and the whole of the other.
  const bool by_rows = M >= N;
  const int64_t len = by_rows ? M : N;
  const int64_t align = len >= 16 * T ? 16 : 1;  // whole micro-kernel tiles per band
#pragma omp parallel num_threads(T)
  {
    int64_t b0, b1;
    band(len, align, omp_get_thread_num(), omp_get_num_threads(), b0, b1);
    if (b1 > b0) {
      if (by_rows)  // rows b0..b1 of op(A) and C
        sgemm(trans_a, trans_b, b1 - b0, N, K, alpha, trans_a ? A + b0 : A + b0 * lda, lda, B, ldb, beta, C + b0 * ldc,
              ldc);
      else  // columns b0..b1 of op(B) and C
        sgemm(trans_a, trans_b, M, b1 - b0, K, alpha, A, lda, trans_b ? B + b0 * ldb : B + b0, ldb, beta, C + b0, ldc);
    }
  }
}

bool gemm_is_exact(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K) {
  if (M == 0 || N == 0) return true;
  const int T = omp_get_max_threads();
  // The same dispatch as gemm() above.
  if (omp_in_parallel() || T == 1) return exact_leaf(trans_a, trans_b, M, N, K);
  if (M * N * K < kMinSplitWork) return false;  // OpenBLAS threads the call itself
  if (M * N <= (int64_t(1) << 16) && K >= 8 * std::max(M, N)) return false;  // K split: partial sums added
  const bool by_rows = M >= N;
  const int64_t len = by_rows ? M : N;
  const int64_t align = len >= 16 * T ? 16 : 1;
  for (int t = 0; t < T; ++t) {
    int64_t b0, b1;
    band(len, align, t, T, b0, b1);
    if (b1 > b0 && !exact_leaf(trans_a, trans_b, by_rows ? b1 - b0 : M, by_rows ? N : b1 - b0, K)) return false;
  }
  return true;
}

void gemm_panels(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* panels,
                 float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  DSMOE_ASSERT(gemm_is_exact(false, false, M, N, K), "gemm_panels on a {}x{}x{} product gemm() would not run exactly",
               M, N, K);
  const int T = omp_get_max_threads();
  if (omp_in_parallel() || T == 1 || M * N * K < kMinSplitWork)
    return gemm_exact_panels(M, N, K, alpha, A, lda, panels, beta, C, ldc);
  // By rows, whatever gemm() would have split: each element's sums are the same in any band.
#pragma omp parallel num_threads(T)
  {
    int64_t b0, b1;
    band(M, M >= 16 * T ? 16 : 1, omp_get_thread_num(), omp_get_num_threads(), b0, b1);
    if (b1 > b0) gemm_exact_panels(b1 - b0, N, K, alpha, A + b0 * lda, lda, panels, beta, C + b0 * ldc, ldc);
  }
}

char gemm_leaf_choice(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K) {
  if (!exact_leaf(trans_a, trans_b, M, N, K)) return '-';
  const int forced = forced_leaf();
  if (forced >= 0) return forced == 0 ? 'e' : 'b';
  const auto it = leaf_trials().find(shape_class(trans_a, trans_b, M, N, K));
  if (it == leaf_trials().end() || it->second.calls < 2 * kTrialsEach) return 'm';
  return it->second.best[0] <= it->second.best[1] ? 'e' : 'b';
}

int blas_threads() { return openblas_get_num_threads(); }

}  // namespace dsmoe
