#include "ops/bf16_gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/bf16.h"
#include "core/error.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define DSMOE_BF16_GEMM 1
#endif

namespace dsmoe::ops {

bool bf16_gemm_available() {
#ifdef DSMOE_BF16_GEMM
  static const bool ok = __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

void round_to_bf16(uint16_t* out, const float* x, int64_t count) {
  int64_t i = 0;
#ifdef DSMOE_BF16_GEMM
  if (bf16_gemm_available())
    for (; i + 32 <= count; i += 32) {
      // cvtne2ps: element j of the result is from the SECOND operand for j < 16.
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
      _mm512_storeu_si512(out + i, (__m512i)v);
    }
#endif
  for (; i < count; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    out[i] = (u & 0x7f800000) == 0 ? (uint16_t)((u >> 16) & 0x8000) : f32_to_bf16(x[i]);
  }
}

#ifdef DSMOE_BF16_GEMM
namespace {

// Rows of x and of w per register tile: MR x NR accumulators (one per output), each holding 16
// partial sums; per 32-element step of K the tile loads MR + NR vectors and issues MR * NR
// vdpbf16ps. 4 x 4: 16 accumulators + 4 weight vectors + 1 activation vector of the 32 registers.
constexpr int kMR = 4, kNR = 4;

// acc[i][j] (16 lanes) summed into y[i][j]: four accumulators of one row at a time, transposed by
// pairs so that 3 adds per level replace 4 full horizontal reductions.
inline __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  // Fold 512 -> 256 -> 128 bits per accumulator, then a 4x4 transpose-add.
  auto fold = [](__m512 v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  };
  const __m128 b0 = fold(a0), b1 = fold(a1), b2 = fold(a2), b3 = fold(a3);
  const __m128 s01 = _mm_hadd_ps(b0, b1), s23 = _mm_hadd_ps(b2, b3);
  return _mm_hadd_ps(s01, s23);  // {sum a0, sum a1, sum a2, sum a3}
}

// One tile: rows x[0 .. MR) (row stride ldx) against rows w[0 .. NR) (stride ldw) over all of K.
// Rows past mr / nr are not read (their accumulators stay zero and are not stored).
template <int MR, int NR>
inline void tile(float* y, int64_t ldy, const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw, int64_t K) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w + j * ldw + k);
    for (int i = 0; i < MR; ++i) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + i * ldx + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  if (k < K) {  // the last K % 32 elements: masked loads read only them and zero the rest
    const __mmask32 m = (__mmask32)((1ull << (K - k)) - 1);
    __m512bh wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(m, w + j * ldw + k);
    for (int i = 0; i < MR; ++i) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, x + i * ldx + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    if constexpr (NR == 4) {
      _mm_storeu_ps(y + i * ldy, reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
    } else {
      for (int j = 0; j < NR; ++j) y[i * ldy + j] = _mm512_reduce_add_ps(acc[i][j]);
    }
  }
}

// Dispatch of an edge tile (mr < kMR or nr < kNR) to the instantiation of its size.
template <int MR>
void tile_nr(int nr, float* y, int64_t ldy, const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw,
             int64_t K) {
  switch (nr) {
    case 1: return tile<MR, 1>(y, ldy, x, ldx, w, ldw, K);
    case 2: return tile<MR, 2>(y, ldy, x, ldx, w, ldw, K);
    case 3: return tile<MR, 3>(y, ldy, x, ldx, w, ldw, K);
    default: return tile<MR, 4>(y, ldy, x, ldx, w, ldw, K);
  }
}
void any_tile(int mr, int nr, float* y, int64_t ldy, const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw,
              int64_t K) {
  switch (mr) {
    case 1: return tile_nr<1>(nr, y, ldy, x, ldx, w, ldw, K);
    case 2: return tile_nr<2>(nr, y, ldy, x, ldx, w, ldw, K);
    case 3: return tile_nr<3>(nr, y, ldy, x, ldx, w, ldw, K);
    default: return tile_nr<4>(nr, y, ldy, x, ldx, w, ldw, K);
  }
}

// Activation rows per pass over a block of weight rows: kNC rows of K bf16 stay in L2 (K = 2048:
// 256 KiB) while kNR weight rows (16 KiB) stay in L1 and meet every one of them.
constexpr int64_t kNC = 64;

// Weight rows [r0, r1) against every activation row.
void rows_range(float* y, int64_t ldy, const uint16_t* xb, const uint16_t* w, int64_t n, int64_t r0, int64_t r1,
                int64_t K) {
  for (int64_t i0 = 0; i0 < n; i0 += kNC) {
    const int64_t i1 = std::min(n, i0 + kNC);
    for (int64_t r = r0; r < r1; r += kNR) {
      const int nr = (int)std::min<int64_t>(kNR, r1 - r);
      const uint16_t* wr = w + r * K;
      int64_t i = i0;
      if (nr == kNR)
        for (; i + kMR <= i1; i += kMR) tile<kMR, kNR>(y + i * ldy + r, ldy, xb + i * K, K, wr, K, K);
      for (; i < i1; i += kMR) any_tile((int)std::min<int64_t>(kMR, i1 - i), nr, y + i * ldy + r, ldy, xb + i * K, K,
                                        wr, K, K);
    }
  }
}

}  // namespace
#endif

void bf16_gemm(float* y, int64_t ldy, const uint16_t* xb, const uint16_t* w, int64_t n, int64_t R, int64_t K) {
#ifdef DSMOE_BF16_GEMM
  DSMOE_ASSERT(bf16_gemm_available(), "bf16_gemm called on a CPU without AVX512_BF16");
  if (n <= 0 || R <= 0) return;
  if (omp_in_parallel() || omp_get_max_threads() == 1 || R < 2 * kNR) return rows_range(y, ldy, xb, w, n, 0, R, K);
#pragma omp parallel
  {
    // Contiguous shares of whole kNR-row groups: each thread streams its part of W once.
    const int64_t T = omp_get_num_threads(), t = omp_get_thread_num(), groups = (R + kNR - 1) / kNR;
    const int64_t g0 = groups * t / T, g1 = groups * (t + 1) / T;
    rows_range(y, ldy, xb, w, n, g0 * kNR, std::min(R, g1 * kNR), K);
  }
#else
  (void)y, (void)ldy, (void)xb, (void)w, (void)n, (void)R, (void)K;
  fail("internal: bf16_gemm called in a build without AVX512_BF16");
#endif
}

}  // namespace dsmoe::ops
