#include "ops/int8_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/bf16.h"
#include "core/error.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define DSMOE_INT8_GEMM 1
#endif

namespace dsmoe::ops {

bool int8_gemm_available() {
#ifdef DSMOE_INT8_GEMM
  static const bool ok = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
  return ok;
#else
  return false;
#endif
}

// Register tile of the kernel: kRowsX activation rows x kGroupsW groups of 16 weight rows: 12 int32
// block sums + 12 fp32 accumulators + 2 weight vectors of the 32 zmm registers.
constexpr int kRowsX = 6, kGroupsW = 2;

const char* int8_gemm_implementation() {
  return int8_gemm_available() ? "dsmoe AVX512-VNNI vpdpbusd, 6 x 32 register tile" : "none (no AVX512-VNNI)";
}

namespace {

// The rule of the header for one block of `len` <= 32 values; returns {d, sum of q}.
void quantize_block_scalar(const float* x, int64_t len, int8_t* q, float* d, int32_t* sum) {
  float amax = 0;
  bool finite = true;
  for (int64_t k = 0; k < len; ++k) {
    if (!std::isfinite(x[k])) finite = false;
    else amax = std::max(amax, std::fabs(x[k]));
  }
  std::memset(q, 0, kBlock);
  *sum = 0;
  if (!finite) {
    *d = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  const float inv = 127.0f / amax;
  if (!std::isfinite(inv)) {
    *d = 0;
    return;
  }
  *d = amax / 127.0f;
  int32_t s = 0;
  for (int64_t k = 0; k < len; ++k) {
    const float p = x[k] * inv;
    q[k] = (int8_t)std::nearbyint(p);  // the default rounding mode: to nearest, ties to even
    s += q[k];
  }
  *sum = s;
}

}  // namespace

void quantize_activations_int8(Int8Activations& out, const float* x, int64_t n, int64_t K) {
  const int64_t nb = (K + kBlock - 1) / kBlock, full = K / kBlock, kp = nb * kBlock;
  out.n = n;
  out.blocks = nb;
  if (out.q.size() < (size_t)(n * kp)) out.q.resize((size_t)(n * kp));
  if (out.d.size() < (size_t)(n * nb)) out.d.resize((size_t)(n * nb));
  if (out.sum.size() < (size_t)(n * nb)) out.sum.resize((size_t)(n * nb));
  int8_t* q = out.q.data();
  float* d = out.d.data();
  int32_t* sum = out.sum.data();
#pragma omp parallel for schedule(static) if (n * K >= (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * K;
    int64_t b = 0;
#ifdef DSMOE_INT8_GEMM
    if (int8_gemm_available())
      for (; b < full; ++b) {
        const __m512 v0 = _mm512_loadu_ps(xi + b * 32), v1 = _mm512_loadu_ps(xi + b * 32 + 16);
        const __m512 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
        // NaN or infinity anywhere: "not <= FLT_MAX" is true for both (unordered compares true).
        const __m512 big = _mm512_set1_ps(std::numeric_limits<float>::max());
        if (_mm512_cmp_ps_mask(a0, big, _CMP_NLE_UQ) | _mm512_cmp_ps_mask(a1, big, _CMP_NLE_UQ)) {
          quantize_block_scalar(xi + b * 32, 32, q + i * kp + b * 32, d + i * nb + b, sum + i * nb + b);
          continue;
        }
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
        const float inv = 127.0f / amax;
        int8_t* qb = q + i * kp + b * 32;
        if (!std::isfinite(inv)) {
          std::memset(qb, 0, 32);
          d[i * nb + b] = 0;
          sum[i * nb + b] = 0;
          continue;
        }
        const __m512 iv = _mm512_set1_ps(inv);
        // cvtps_epi32 rounds in the MXCSR mode: to nearest, ties to even (never changed here).
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, iv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, iv));
        _mm_storeu_si128((__m128i*)qb, _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i*)(qb + 16), _mm512_cvtsepi32_epi8(q1));
        d[i * nb + b] = amax / 127.0f;
        sum[i * nb + b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      }
#endif
    for (; b < nb; ++b)
      quantize_block_scalar(xi + b * 32, std::min(kBlock, K - b * 32), q + i * kp + b * 32, d + i * nb + b,
                            sum + i * nb + b);
  }
}

void pack_weights_int8(Int8WeightTile& out, const WeightMat& w, int64_t r0, int64_t nr) {
  DSMOE_ASSERT(w.type == WType::Q8 || w.type == WType::Q4, "int8 packing of {} weights", wtype_name(w.type));
  DSMOE_ASSERT(r0 >= 0 && nr >= 0 && r0 + nr <= w.rows, "rows [{}, {}) of a {}-row matrix", r0, r0 + nr, w.rows);
  const int64_t K = w.cols, nb = w.blocks(), rb = w.row_bytes(), groups = (nr + 15) / 16;
  const bool q8 = w.type == WType::Q8;
  out.rows = nr;
  out.blocks = nb;
  out.offset = q8 ? 128 : 8;
  if (out.q.size() < (size_t)(groups * nb * 512)) out.q.resize((size_t)(groups * nb * 512));
  if (out.d.size() < (size_t)(groups * nb * 16)) out.d.resize((size_t)(groups * nb * 16));
  // Rows past nr (the last group's padding) read a row of encoded zeros: q8 byte 0, q4 nibbles 8.
  thread_local std::vector<uint8_t> zero_row;
  if (zero_row.size() < (size_t)rb) zero_row.resize((size_t)rb);
  std::memset(zero_row.data(), q8 ? 0 : 0x88, (size_t)rb);
  const int64_t full = q8 ? K / kBlock : nb;  // q4 rows are padded to whole blocks already
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* rowp[16];
    for (int j = 0; j < 16; ++j) {
      const int64_t r = g * 16 + j;
      rowp[j] = r < nr ? (const uint8_t*)w.data + (r0 + r) * rb : zero_row.data();
      float* dg = out.d.data() + g * nb * 16;
      for (int64_t b = 0; b < nb; ++b) dg[b * 16 + j] = r < nr ? bf16_to_f32(w.scales[(r0 + r) * nb + b]) : 0.0f;
    }
    uint8_t* qg = out.q.data() + g * nb * 512;
    int64_t b = 0;
#ifdef DSMOE_INT8_GEMM
    if (int8_gemm_available()) {
      const __m512i lo4 = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8((char)0x80);
      for (; b < full; ++b) {
        // z[h][j]: 128-bit lane L holds 16 bytes (4 dwords) of row 4L + j: dwords 0-3 of the block
        // (h = 0) or 4-7 (h = 1). A 4 x 4 dword transpose inside each lane then gives vector t:
        // dword t of rows 0 .. 15, the layout vpdpbusd wants.
        __m512i z[2][4];
        for (int j = 0; j < 4; ++j) {
          if (q8) {
            const int64_t off = b * 32;
            const __m512i a = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(rowp[j] + off))),
                _mm256_loadu_si256((const __m256i*)(rowp[4 + j] + off)), 1);
            const __m512i c = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(rowp[8 + j] + off))),
                _mm256_loadu_si256((const __m256i*)(rowp[12 + j] + off)), 1);
            // a = [row j lo, row j hi, row 4+j lo, row 4+j hi], c likewise for rows 8+j, 12+j.
            z[0][j] = _mm512_xor_si512(_mm512_shuffle_i64x2(a, c, 0x88), flip);  // lanes 0, 2 of a; 0, 2 of c
            z[1][j] = _mm512_xor_si512(_mm512_shuffle_i64x2(a, c, 0xDD), flip);  // lanes 1, 3 of a; 1, 3 of c
          } else {  // q4: 16 bytes per block; low nibbles are elements 0-15, high ones 16-31
            const int64_t off = b * 16;
            __m512i raw = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)(rowp[j] + off)));
            raw = _mm512_inserti32x4(raw, _mm_loadu_si128((const __m128i*)(rowp[4 + j] + off)), 1);
            raw = _mm512_inserti32x4(raw, _mm_loadu_si128((const __m128i*)(rowp[8 + j] + off)), 2);
            raw = _mm512_inserti32x4(raw, _mm_loadu_si128((const __m128i*)(rowp[12 + j] + off)), 3);
            z[0][j] = _mm512_and_si512(raw, lo4);
            z[1][j] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4);
          }
        }
        uint8_t* qb = qg + b * 512;
        for (int h = 0; h < 2; ++h) {
          const __m512i t0 = _mm512_unpacklo_epi32(z[h][0], z[h][1]), t1 = _mm512_unpacklo_epi32(z[h][2], z[h][3]);
          const __m512i t2 = _mm512_unpackhi_epi32(z[h][0], z[h][1]), t3 = _mm512_unpackhi_epi32(z[h][2], z[h][3]);
          _mm512_storeu_si512(qb + (4 * h + 0) * 64, _mm512_unpacklo_epi64(t0, t1));
          _mm512_storeu_si512(qb + (4 * h + 1) * 64, _mm512_unpackhi_epi64(t0, t1));
          _mm512_storeu_si512(qb + (4 * h + 2) * 64, _mm512_unpacklo_epi64(t2, t3));
          _mm512_storeu_si512(qb + (4 * h + 3) * 64, _mm512_unpackhi_epi64(t2, t3));
        }
      }
    }
#endif
    for (; b < nb; ++b)  // scalar: no AVX-512 (the tests' reference layout), or q8's short last block
      for (int j = 0; j < 16; ++j)
        for (int64_t k = 0; k < kBlock; ++k) {
          const int64_t c = b * kBlock + k;
          uint8_t u;
          if (q8) {
            u = c < K ? (uint8_t)(rowp[j][c] ^ 0x80) : (uint8_t)0x80;  // padding: q = 0
          } else {
            const uint8_t byte = rowp[j][b * 16 + (k & 15)];
            u = k < 16 ? byte & 15 : byte >> 4;
          }
          qg[b * 512 + (k / 4) * 64 + j * 4 + (k % 4)] = u;
        }
  }
}

#ifdef DSMOE_INT8_GEMM
namespace {

// y[i][r] for MX activation rows starting at xq and NG groups of 16 weight rows starting at wq
// (valid: the columns to store of the last group).
template <int MX, int NG>
void int8_tile(float* y, int64_t ldy, const Int8Activations& x, int64_t i0, const Int8WeightTile& w, int64_t g0,
               int valid_last) {
  const int64_t nb = x.blocks, kp = nb * kBlock;
  const uint8_t* wq = w.q.data() + g0 * nb * 512;
  const float* wd = w.d.data() + g0 * nb * 16;
  const int8_t* xq = x.q.data() + i0 * kp;
  const float* xd = x.d.data() + i0 * nb;
  const int32_t* xs = x.sum.data() + i0 * nb;
  const int32_t off = w.offset;
  __m512 acc[MX][NG];
  for (int i = 0; i < MX; ++i)
    for (int j = 0; j < NG; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512i s[MX][NG];
    for (int i = 0; i < MX; ++i) {
      const __m512i init = _mm512_set1_epi32(-off * xs[i * nb + b]);  // removes the weights' offset
      for (int j = 0; j < NG; ++j) s[i][j] = init;
    }
    const uint8_t* wb = wq + b * 512;
    for (int t = 0; t < 8; ++t) {
      __m512i wv[NG];
      for (int j = 0; j < NG; ++j) wv[j] = _mm512_loadu_si512(wb + j * nb * 512 + t * 64);
      for (int i = 0; i < MX; ++i) {
        int32_t x4;
        std::memcpy(&x4, xq + i * kp + b * 32 + 4 * t, 4);
        const __m512i xv = _mm512_set1_epi32(x4);
        for (int j = 0; j < NG; ++j) s[i][j] = _mm512_dpbusd_epi32(s[i][j], wv[j], xv);
      }
    }
    __m512 dw[NG];
    for (int j = 0; j < NG; ++j) dw[j] = _mm512_loadu_ps(wd + j * nb * 16 + b * 16);
    for (int i = 0; i < MX; ++i) {
      const __m512 dx = _mm512_set1_ps(xd[i * nb + b]);
      for (int j = 0; j < NG; ++j)
        acc[i][j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s[i][j]), dx), dw[j], acc[i][j]);
    }
  }
  const __mmask16 last = (__mmask16)((1u << valid_last) - 1);
  for (int i = 0; i < MX; ++i)
    for (int j = 0; j < NG; ++j) {
      float* yo = y + (i0 + i) * ldy + (g0 + j) * 16;
      if (j == NG - 1 && valid_last < 16) _mm512_mask_storeu_ps(yo, last, acc[i][j]);
      else _mm512_storeu_ps(yo, acc[i][j]);
    }
}

template <int NG>
void int8_rows(float* y, int64_t ldy, const Int8Activations& x, const Int8WeightTile& w, int64_t g0, int valid_last) {
  int64_t i = 0;
  for (; i + kRowsX <= x.n; i += kRowsX) int8_tile<kRowsX, NG>(y, ldy, x, i, w, g0, valid_last);
  switch (x.n - i) {
    case 1: int8_tile<1, NG>(y, ldy, x, i, w, g0, valid_last); break;
    case 2: int8_tile<2, NG>(y, ldy, x, i, w, g0, valid_last); break;
    case 3: int8_tile<3, NG>(y, ldy, x, i, w, g0, valid_last); break;
    case 4: int8_tile<4, NG>(y, ldy, x, i, w, g0, valid_last); break;
    case 5: int8_tile<5, NG>(y, ldy, x, i, w, g0, valid_last); break;
    default: break;
  }
}

}  // namespace
#endif

#ifdef DSMOE_INT8_GEMM
namespace {

// Blocks b and b + 1 of weight row p as 64 unsigned bytes q_w + off, in the activations' order.
inline __m512i weight_pair(const uint8_t* p, int64_t b, bool q8) {
  if (q8) return _mm512_xor_si512(_mm512_loadu_si512(p + b * 32), _mm512_set1_epi8((char)0x80));
  // q4: byte j of a block holds element j (low nibble) and j + 16 (high nibble).
  const __m256i raw = _mm256_loadu_si256((const __m256i*)(p + b * 16));
  const __m256i m = _mm256_set1_epi8(0x0F);
  const __m256i lo = _mm256_and_si256(raw, m), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m);
  // [lo b, lo b+1, hi b, hi b+1] -> [lo b, hi b, lo b+1, hi b+1] (128-bit lanes 0, 2, 1, 3)
  const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  return _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));
}

// The exact S_b of one block by scalar code (a last odd block, a short q8 block).
int32_t block_sum_scalar(const uint8_t* p, int64_t b, int64_t K, bool q8, const int8_t* qx) {
  int32_t s = 0;
  for (int64_t k = 0; k < kBlock && b * kBlock + k < K; ++k) {
    const int32_t qw = q8 ? (int32_t)(int8_t)p[b * kBlock + k]
                          : (int32_t)((p[b * 16 + (k & 15)] >> (k < 16 ? 0 : 4)) & 15) - 8;
    s += qw * (int32_t)qx[b * kBlock + k];
  }
  return s;
}

template <int NX>
void gemv_row(float* y, int64_t ldy, const Int8Activations& x, const WeightMat& w, int64_t r, int64_t i0,
              const int32_t* xoff, const float* sw, float* sx) {
  const bool q8 = w.type == WType::Q8;
  const int64_t K = w.cols, nb = w.blocks(), stride = nb * kBlock;
  const uint8_t* p = (const uint8_t*)w.data + r * w.row_bytes();
  // Whole pairs of whole blocks go through vpdpbusd (a q8 row is not padded: a short last block is scalar).
  const int64_t whole = q8 ? K / kBlock : nb, pairs = whole / 2;
  __m512 acc[NX];
  float tail[NX];
  for (int i = 0; i < NX; ++i) {
    acc[i] = _mm512_setzero_ps();
    tail[i] = 0;
    for (int64_t b = 0; b < nb; ++b) sx[i * nb + b] = sw[b] * x.d[(i0 + i) * nb + b];
  }
  for (int64_t pr = 0; pr < pairs; ++pr) {
    const int64_t b = 2 * pr;
    _mm_prefetch((const char*)(p + (q8 ? b * 32 : b * 16)) + 2048, _MM_HINT_T0);
    const __m512i u = weight_pair(p, b, q8);
    for (int i = 0; i < NX; ++i) {
      const int8_t* qx = x.q.data() + (i0 + i) * stride;
      // Started at -off * (the lane's four q_x): each lane ends at its four exact q_w q_x products.
      const __m512i start = _mm512_loadu_si512(xoff + ((i0 + i) * nb + b) * 8);
      const __m512i dp = _mm512_dpbusd_epi32(start, u, _mm512_loadu_si512(qx + b * kBlock));
      const __m512 s = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(sx[i * nb + b])),
                                                           _mm256_castps_pd(_mm256_set1_ps(sx[i * nb + b + 1])), 1));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), s, acc[i]);
    }
  }
  for (int64_t b = 2 * pairs; b < nb; ++b)
    for (int i = 0; i < NX; ++i)
      tail[i] = std::fma((float)block_sum_scalar(p, b, K, q8, x.q.data() + (i0 + i) * stride), sx[i * nb + b], tail[i]);
  for (int i = 0; i < NX; ++i) y[(i0 + i) * ldy + r] = _mm512_reduce_add_ps(acc[i]) + tail[i];
}

}  // namespace
#endif

void int8_gemv(float* y, int64_t ldy, const Int8Activations& x, const WeightMat& w) {
  DSMOE_ASSERT(int8_gemm_available(), "int8_gemv called on a CPU without AVX512-VNNI");
  DSMOE_ASSERT(w.type == WType::Q8 || w.type == WType::Q4, "int8 GEMV of {} weights", wtype_name(w.type));
  DSMOE_ASSERT(x.blocks == w.blocks(), "int8_gemv: activations of {} blocks, weights of {}", x.blocks, w.blocks());
#ifdef DSMOE_INT8_GEMM
  if (x.n <= 0 || w.rows <= 0) return;
  const int64_t nb = w.blocks(), off = w.type == WType::Q8 ? 128 : 8;
  // -off * (sum of each lane's four q_x), per activation row and block: the offset correction.
  thread_local std::vector<int32_t> xoff;
  if (xoff.size() < (size_t)(x.n * nb * 8)) xoff.resize((size_t)(x.n * nb * 8));
  for (int64_t i = 0; i < x.n * nb * 8; ++i) {
    const int8_t* q = x.q.data() + i * 4;
    xoff[i] = -(int32_t)off * ((int32_t)q[0] + q[1] + q[2] + q[3]);
  }
  const int32_t* xo = xoff.data();
  const bool par = w.rows * w.cols >= (1 << 16);
#pragma omp parallel if (par)
  {
    thread_local std::vector<float> sw, sx;
    if (sw.size() < (size_t)nb) sw.resize((size_t)nb);
    if (sx.size() < (size_t)(4 * nb)) sx.resize((size_t)(4 * nb));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < w.rows; ++r) {
      for (int64_t b = 0; b < nb; ++b) sw[b] = bf16_to_f32(w.scales[r * nb + b]);
      for (int64_t i0 = 0; i0 < x.n; i0 += 4) {
        switch (std::min<int64_t>(4, x.n - i0)) {
          case 1: gemv_row<1>(y, ldy, x, w, r, i0, xo, sw.data(), sx.data()); break;
          case 2: gemv_row<2>(y, ldy, x, w, r, i0, xo, sw.data(), sx.data()); break;
          case 3: gemv_row<3>(y, ldy, x, w, r, i0, xo, sw.data(), sx.data()); break;
          default: gemv_row<4>(y, ldy, x, w, r, i0, xo, sw.data(), sx.data()); break;
        }
      }
    }
  }
#else
  (void)y, (void)ldy;
#endif
}

void int8_gemm(float* y, int64_t ldy, const Int8Activations& x, const Int8WeightTile& w) {
  DSMOE_ASSERT(int8_gemm_available(), "int8_gemm called on a CPU without AVX512-VNNI");
  DSMOE_ASSERT(x.blocks == w.blocks, "int8_gemm: activations of {} blocks, weights of {}", x.blocks, w.blocks);
#ifdef DSMOE_INT8_GEMM
  if (x.n <= 0 || w.rows <= 0) return;
  const int64_t groups = (w.rows + 15) / 16;
  for (int64_t g = 0; g < groups; g += kGroupsW) {
    const int64_t ng = std::min<int64_t>(kGroupsW, groups - g);
    const int valid_last = (int)std::min<int64_t>(16, w.rows - (g + ng - 1) * 16);
    if (ng == 2) int8_rows<2>(y, ldy, x, w, g, valid_last);
    else int8_rows<1>(y, ldy, x, w, g, valid_last);
  }
#else
  (void)y, (void)ldy;
#endif
}

}  // namespace dsmoe::ops
