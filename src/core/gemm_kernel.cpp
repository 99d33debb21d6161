#include "core/gemm_kernel.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace dsmoe {

namespace {

// OpenBLAS 0.3.21's SGEMM_DEFAULT_Q and GEMM_UNROLL_M for the SkylakeX / Cooperlake kernels (the
// chunking of K in driver/level3/level3.c), as measured (tests/cpp/test_gemm_kernel.cpp).
constexpr int64_t kChunkQ = 320;
constexpr int64_t kUnrollM = 16;

// Operand rows at least this many floats apart (4 KB: a page) are copied into panels first.
constexpr int64_t kPageFloats = 1024;
// Rows of A^T per copied block: a multiple of every tile height (8, 6, 4), 120 KB a chunk (L2).
constexpr int64_t kRowBlock = 96;

// Length of the K chunk starting with `left` elements still to do (level3.c's min_l).
int64_t chunk_len(int64_t left) {
  if (left >= 2 * kChunkQ) return kChunkQ;
  if (left > kChunkQ) return (left / 2 + kUnrollM - 1) / kUnrollM * kUnrollM;
  return left;
}

#ifdef __AVX512F__
// One tile of R rows x NV vectors of 16 columns over one K chunk: acc = sum_k a_ik b_kj in k order
// (fma from 0), then c = fma(alpha, acc, c) (c = 0 when load_c is false: beta 0, first chunk).
// `last` masks the columns of the last vector. A points at op(A)[i0][k0], B at B[k0][j0].
// The accumulators are named variables, not an array: GCC 12 kept an array of __m512 in memory and
// stored all of it at every k (half the speed).
#define DSMOE_RV(X) X(0, 0) X(0, 1) X(0, 2) X(0, 3) X(0, 4) X(0, 5) X(1, 0) X(1, 1) X(1, 2) X(1, 3) X(1, 4) X(1, 5) \
  X(2, 0) X(2, 1) X(2, 2) X(2, 3) X(2, 4) X(2, 5) X(3, 0) X(3, 1) X(3, 2) X(3, 3) X(3, 4) X(3, 5)                  \
  X(4, 0) X(4, 1) X(4, 2) X(4, 3) X(4, 4) X(4, 5) X(5, 0) X(5, 1) X(5, 2) X(5, 3) X(5, 4) X(5, 5)                  \
  X(6, 0) X(6, 1) X(6, 2) X(6, 3) X(6, 4) X(6, 5) X(7, 0) X(7, 1) X(7, 2) X(7, 3) X(7, 4) X(7, 5)
#define DSMOE_R(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define DSMOE_V(X) X(0) X(1) X(2) X(3) X(4) X(5)
template <int R, int NV, bool TA>
void tile(int64_t kc, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
          __mmask16 last, bool load_c) {
  static_assert(R >= 1 && R <= 8 && NV >= 1 && NV <= 6, "tile shape");
#define DSMOE_DECL(r, v) __m512 c##r##v = _mm512_setzero_ps();
  DSMOE_RV(DSMOE_DECL)
  for (int64_t k = 0; k < kc; ++k) {
    const float* bk = B + k * ldb;
#define DSMOE_LOADB(v)                                                                                   \
  __m512 b##v = _mm512_setzero_ps();                                                                      \
  if constexpr (NV > v) b##v = v + 1 < NV ? _mm512_loadu_ps(bk + 16 * v) : _mm512_maskz_loadu_ps(last, bk + 16 * v);
    DSMOE_V(DSMOE_LOADB)
#define DSMOE_BCAST(r) \
  __m512 a##r = _mm512_setzero_ps(); \
  if constexpr (R > r) a##r = _mm512_set1_ps(TA ? A[k * lda + r] : A[r * lda + k]);
    DSMOE_R(DSMOE_BCAST)
#define DSMOE_FMA(r, v) \
  if constexpr (R > r && NV > v) c##r##v = _mm512_fmadd_ps(a##r, b##v, c##r##v);
    DSMOE_RV(DSMOE_FMA)
  }
  const __m512 al = _mm512_set1_ps(alpha);
#define DSMOE_STORE(r, v)                                                                    \
  if constexpr (R > r && NV > v) {                                                           \
    float* c = C + r * ldc + 16 * v;                                                          \
    const __mmask16 m = v + 1 < NV ? (__mmask16)0xFFFF : last;                                \
    const __m512 cv = load_c ? _mm512_maskz_loadu_ps(m, c) : _mm512_setzero_ps();             \
    _mm512_mask_storeu_ps(c, m, _mm512_fmadd_ps(al, c##r##v, cv));                            \
  }
  DSMOE_RV(DSMOE_STORE)
#undef DSMOE_DECL
#undef DSMOE_LOADB
#undef DSMOE_BCAST
#undef DSMOE_FMA
#undef DSMOE_STORE
}
#undef DSMOE_RV
#undef DSMOE_R
#undef DSMOE_V

using TileFn = void (*)(int64_t, float, const float*, int64_t, const float*, int64_t, float*, int64_t, __mmask16, bool);

// GCC 12's unpack intrinsics start from _mm512_undefined_ps(), which it then reports as maybe
// uninitialized wherever they are inlined (a false positive, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// r[j] = row j of a 16 x 16 block (16 consecutive k of one row of B^T) -> r[k] = column k (the 16
// rows' values at that k). Four rounds of in-lane unpacks and 128-bit lane shuffles, 64 in all.
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int g = 0; g < 4; ++g) {
    t[4 * g + 0] = _mm512_unpacklo_ps(r[4 * g], r[4 * g + 1]);  // per 128-bit lane L: r0[4L] r1[4L] r0[4L+1] r1[4L+1]
    t[4 * g + 1] = _mm512_unpackhi_ps(r[4 * g], r[4 * g + 1]);  // r0[4L+2] r1[4L+2] r0[4L+3] r1[4L+3]
    t[4 * g + 2] = _mm512_unpacklo_ps(r[4 * g + 2], r[4 * g + 3]);
    t[4 * g + 3] = _mm512_unpackhi_ps(r[4 * g + 2], r[4 * g + 3]);
  }
  auto lo = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  auto hi = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  for (int g = 0; g < 4; ++g) {  // u[4g + c], lane L: rows 4g..4g+3 at column c + 4L
    u[4 * g + 0] = lo(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = hi(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = lo(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = hi(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    // v0: columns c, c+8 of rows 0-3 and 4-7; v1: columns c+4, c+12 of the same; v2, v3: rows 8-15.
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88), v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
    r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[c + 8] = _mm512_shuffle_f32x4(v0, v2, 0xdd);
    r[c + 4] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[c + 12] = _mm512_shuffle_f32x4(v1, v3, 0xdd);
  }
}

// R rows of C, 16 columns (the first `cols`), over one K chunk of kc, B^T in place: per column the
// same k order from 0 as tile(), then c = fma(alpha, acc, c).
template <int R>
void bt_block(int64_t kc, float alpha, const float* A, int64_t lda, const float* Bt, int64_t ldb, int cols, float* C,
              int64_t ldc, bool load_c) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  __m512 blk[16];
  for (int64_t k0 = 0; k0 < kc; k0 += 16) {
    const int n = (int)std::min<int64_t>(16, kc - k0);
    const __mmask16 km = (__mmask16)(n == 16 ? 0xFFFF : (1u << n) - 1);
    for (int j = 0; j < 16; ++j)
      blk[j] = j < cols ? _mm512_maskz_loadu_ps(km, Bt + j * ldb + k0) : _mm512_setzero_ps();
    transpose16(blk);
    for (int k = 0; k < n; ++k)
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(A[r * lda + k0 + k]), blk[k], acc[r]);
  }
  const __mmask16 cm = (__mmask16)(cols == 16 ? 0xFFFF : (1u << cols) - 1);
  const __m512 al = _mm512_set1_ps(alpha);
  for (int r = 0; r < R; ++r) {
    float* c = C + r * ldc;
    const __m512 cv = load_c ? _mm512_maskz_loadu_ps(cm, c) : _mm512_setzero_ps();
    _mm512_mask_storeu_ps(c, cm, _mm512_fmadd_ps(al, acc[r], cv));
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

using BtBlockFn = void (*)(int64_t, float, const float*, int64_t, const float*, int64_t, int, float*, int64_t, bool);

template <int... Rs>
constexpr BtBlockFn pick_bt(int r, std::integer_sequence<int, Rs...>) {
  BtBlockFn fns[] = {&bt_block<Rs + 1>...};
  return fns[r - 1];
}

// Rows per tile for NV vectors: about 24 accumulators of the 32 registers, the rest for B and A.
constexpr int rows_for(int nv) { return nv <= 3 ? 8 : (nv == 4 ? 6 : 4); }

template <int NV, bool TA, int... Rs>
constexpr TileFn pick_rows(int r, std::integer_sequence<int, Rs...>) {
  TileFn fns[] = {&tile<Rs + 1, NV, TA>...};
  return fns[r - 1];
}

template <bool TA>
TileFn pick(int r, int nv) {
  switch (nv) {
    case 1: return pick_rows<1, TA>(r, std::make_integer_sequence<int, rows_for(1)>{});
    case 2: return pick_rows<2, TA>(r, std::make_integer_sequence<int, rows_for(2)>{});
    case 3: return pick_rows<3, TA>(r, std::make_integer_sequence<int, rows_for(3)>{});
    case 4: return pick_rows<4, TA>(r, std::make_integer_sequence<int, rows_for(4)>{});
    case 5: return pick_rows<5, TA>(r, std::make_integer_sequence<int, rows_for(5)>{});
    default: return pick_rows<6, TA>(r, std::make_integer_sequence<int, rows_for(6)>{});
  }
}
#endif

}  // namespace

void gemm_exact_bt(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* Bt,
                   int64_t ldb, float beta, float* C, int64_t ldc) {
#ifdef __AVX512F__
  if (M <= 0 || N <= 0) return;
  DSMOE_ASSERT(M <= kMaxRowsBtInPlace && gemm_exact_applies(M, N, K), "gemm_exact_bt on a {}x{}x{} product", M, N, K);
  if (beta != 0.0f && beta != 1.0f)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] *= beta;
  const BtBlockFn fn = pick_bt((int)M, std::make_integer_sequence<int, kMaxRowsBtInPlace>{});
  // Column blocks outside, K chunks inside: a block's 16 rows of B^T are read once, front to back.
  for (int64_t j0 = 0; j0 < N; j0 += 16) {
    const int cols = (int)std::min<int64_t>(16, N - j0);
    for (int64_t k0 = 0; k0 < K;) {
      const int64_t kc = chunk_len(K - k0);
      fn(kc, alpha, A + k0, lda, Bt + j0 * ldb + k0, ldb, cols, C + j0, ldc, !(k0 == 0 && beta == 0.0f));
      k0 += kc;
    }
  }
#else
  (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)Bt, (void)ldb, (void)beta, (void)C, (void)ldc;
#endif
}

void transpose_for_gemm(float* out, const float* Bt, int64_t ldb, int64_t N, int64_t K) {
  constexpr int64_t kTile = 16;
  for (int64_t j0 = 0; j0 < N; j0 += kTile)
    for (int64_t k0 = 0; k0 < K; k0 += kTile)
      for (int64_t j = j0; j < std::min(N, j0 + kTile); ++j)
        for (int64_t k = k0; k < std::min(K, k0 + kTile); ++k) out[k * N + j] = Bt[j * ldb + k];
}

bool gemm_exact_applies(int64_t M, int64_t N, int64_t K) {
  return (double)M * (double)N * (double)K > kSmallMatrixMNK;
}

bool gemm_exact_available() {
#ifdef __AVX512F__
  static const bool ok = [] {
    const char* off = std::getenv("DSMOE_NO_EXACT_GEMM");
    if (off && *off && std::strcmp(off, "0") != 0) return false;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) return false;
    const char* core = openblas_get_corename();
    return std::strcmp(core, "Cooperlake") == 0 || std::strcmp(core, "SkylakeX") == 0;
  }();
  return ok;
#else
  return false;
#endif
}

namespace {

// Columns per column tile of gemm_exact for a product of N columns: all of N in one tile up to 6
// vectors (96 columns), else tiles of 4 vectors. pack_b_panels lays B out in these tiles.
int64_t tile_cols(int64_t N) {
  const int64_t vecs = (N + 15) / 16;
  return 16 * (vecs <= 6 ? vecs : 4);
}

#ifdef __AVX512F__
// gemm_exact's loops. B is either [K, N] with leading dimension ldb (panels false) or pack_b_panels'
// layout (panels true: the tile of columns [j0, j0 + w) is w-wide rows k = 0..K-1 at B + j0 K).
void exact_product(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* B, int64_t ldb, bool panels, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (beta != 0.0f && beta != 1.0f)  // the level-3 driver scales C first (its beta kernel)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] *= beta;
  const int64_t width = tile_cols(N);
  // Operands whose rows lie a page or more apart are copied, one K chunk at a time, into small
  // contiguous panels first: read in place, every k of a chunk is a different page and (at strides
  // of a power of two) the same few cache sets, so each tile re-fetched them from L3 (the lm_head's
  // dW = dlogits^T x ran at half the speed of dX; bench `Gemm_SmallModel`). The copy moves values,
  // not sums: the rounding is unchanged. A^T is copied per block of kRowBlock rows (each of its
  // k rows then read once, whole), a B panel per column tile where several row tiles share it
  // (a B that is multiplied often, as the lm_head is by every row block, comes packed instead).
  const bool pack_a = trans_a && lda >= kPageFloats;
  const int64_t row_block = pack_a ? kRowBlock : M;
  thread_local std::vector<float> a_panel, b_panel;
  for (int64_t k0 = 0; k0 < K;) {
    const int64_t kc = chunk_len(K - k0);
    const bool load_c = !(k0 == 0 && beta == 0.0f);
    for (int64_t ib = 0; ib < M; ib += row_block) {
      const int64_t mb = std::min(row_block, M - ib);
      const float* a_src = trans_a ? A + k0 * lda + ib : A + ib * lda + k0;
      int64_t a_ld = lda;
      if (pack_a) {
        if (a_panel.size() < (size_t)(kc * mb)) a_panel.resize((size_t)(kChunkQ * kRowBlock));
        for (int64_t k = 0; k < kc; ++k) std::memcpy(a_panel.data() + k * mb, a_src + k * lda, sizeof(float) * mb);
        a_src = a_panel.data();
        a_ld = mb;
      }
      for (int64_t j0 = 0; j0 < N; j0 += width) {
        const int64_t cols = std::min(N - j0, width);
        const int nv = (int)((cols + 15) / 16);
        const int rem = (int)(cols - 16 * (nv - 1));
        const __mmask16 last = (__mmask16)(rem == 16 ? 0xFFFF : (1u << rem) - 1);
        const int R = rows_for(nv);
        const TileFn full = trans_a ? pick<true>(R, nv) : pick<false>(R, nv);
        const float* b = panels ? B + j0 * K + k0 * cols : B + k0 * ldb + j0;
        int64_t b_ld = panels ? cols : ldb;
        if (!panels && ldb >= kPageFloats && mb > R) {
          if (b_panel.size() < (size_t)(kc * cols)) b_panel.resize((size_t)(kChunkQ * 16 * 6));  // the widest tile
          for (int64_t k = 0; k < kc; ++k) std::memcpy(b_panel.data() + k * cols, b + k * ldb, sizeof(float) * cols);
          b = b_panel.data();
          b_ld = cols;
        }
        for (int64_t i0 = 0; i0 < mb; i0 += R) {
          const int r = (int)std::min<int64_t>(R, mb - i0);
          const TileFn fn = r == R ? full : (trans_a ? pick<true>(r, nv) : pick<false>(r, nv));
          const float* a = trans_a ? a_src + i0 : a_src + i0 * a_ld;
          fn(kc, alpha, a, a_ld, b, b_ld, C + (ib + i0) * ldc + j0, ldc, last, load_c);
        }
      }
    }
    k0 += kc;
  }
}
#endif

}  // namespace

void gemm_exact(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
#ifdef __AVX512F__
  DSMOE_ASSERT(M <= 0 || N <= 0 || gemm_exact_applies(M, N, K),
               "gemm_exact on a {}x{}x{} product (OpenBLAS's small-matrix path)", M, N, K);
  exact_product(trans_a, M, N, K, alpha, A, lda, B, ldb, false, beta, C, ldc);
#else
  (void)trans_a, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)B, (void)ldb, (void)beta, (void)C,
      (void)ldc;
#endif
}

void pack_b_panels(float* out, const float* Bt, int64_t ldb, int64_t N, int64_t K) {
  const int64_t width = tile_cols(N);
  for (int64_t j0 = 0; j0 < N; j0 += width) {
    const int64_t cols = std::min(N - j0, width);
    float* panel = out + j0 * K;
    transpose_for_gemm(panel, Bt + j0 * ldb, ldb, cols, K);  // [K][cols]: the tile's rows, contiguous
  }
}

void gemm_exact_panels(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* panels,
                       float beta, float* C, int64_t ldc) {
#ifdef __AVX512F__
  exact_product(false, M, N, K, alpha, A, lda, panels, 0, true, beta, C, ldc);
#else
  (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)panels, (void)beta, (void)C, (void)ldc;
#endif
}

}  // namespace dsmoe
