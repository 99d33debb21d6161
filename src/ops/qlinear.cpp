#include "ops/qlinear.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/gemm.h"
#include "ops/bf16_gemm.h"
#include "ops/int8_gemm.h"
#include "ops/linear.h"
#include "ops/matmul.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define DSMOE_QLINEAR_AVX512 1
#if defined(__AVX512BF16__)
#define DSMOE_QLINEAR_BF16 1
#endif
#endif

namespace dsmoe::ops {

const char* wtype_name(WType t) {
  switch (t) {
    case WType::F32: return "f32";
    case WType::BF16: return "bf16";
    case WType::Q8: return "q8";
    case WType::Q4: return "q4";
  }
  return "?";
}

const char* compute_name(Compute c) {
  switch (c) {
    case Compute::F32: return "f32";
    case Compute::BF16: return "bf16";
    case Compute::INT8: return "int8";
    case Compute::MIXED: return "mixed";
  }
  return "?";
}

WType parse_wtype(const std::string& s, const std::string& what) {
  if (s == "f32") return WType::F32;
  if (s == "bf16") return WType::BF16;
  if (s == "q8") return WType::Q8;
  if (s == "q4") return WType::Q4;
  fail("{} '{}': expected f32, bf16, q8 or q4", what, s);
}

int64_t WeightMat::row_bytes_of(WType t, int64_t cols) {
  switch (t) {
    case WType::F32: return cols * 4;
    case WType::BF16: return cols * 2;
    case WType::Q8: return cols;
    case WType::Q4: return (cols + kBlock - 1) / kBlock * (kBlock / 2);
  }
  return 0;
}

WeightMat WeightMat::slice_rows(int64_t r0, int64_t n) const {
  DSMOE_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= rows, "rows [{}, {}) of a {}-row matrix", r0, r0 + n, rows);
  WeightMat w = *this;
  w.rows = n;
  w.data = (const uint8_t*)data + r0 * row_bytes();
  if (scales) w.scales = scales + r0 * blocks();
  return w;
}

// ---------------------------------------------------------------- conversions (scalar, not hot)

void dequantize_rows(float* out, const WeightMat& w, int64_t r0, int64_t n) {
  const int64_t K = w.cols, nb = w.blocks(), rb = w.row_bytes();
  for (int64_t r = r0; r < r0 + n; ++r) {
    float* o = out + (r - r0) * K;
    const uint8_t* p = (const uint8_t*)w.data + r * rb;
    switch (w.type) {
      case WType::F32: std::memcpy(o, p, (size_t)K * 4); break;
      case WType::BF16:
        for (int64_t c = 0; c < K; ++c) {
          uint16_t h;
          std::memcpy(&h, p + 2 * c, 2);
          o[c] = bf16_to_f32(h);
        }
        break;
      case WType::Q8:
        for (int64_t b = 0; b < nb; ++b) {
          const float d = bf16_to_f32(w.scales[r * nb + b]);
          for (int64_t c = b * kBlock; c < std::min(K, (b + 1) * kBlock); ++c) o[c] = d * (float)(int8_t)p[c];
        }
        break;
      case WType::Q4:
        for (int64_t b = 0; b < nb; ++b) {
          const float d = bf16_to_f32(w.scales[r * nb + b]);
          const uint8_t* q = p + b * (kBlock / 2);
          for (int64_t j = 0; j < kBlock / 2; ++j) {
            const int64_t c0 = b * kBlock + j, c1 = c0 + kBlock / 2;
            if (c0 < K) o[c0] = d * (float)((q[j] & 15) - 8);
            if (c1 < K) o[c1] = d * (float)((q[j] >> 4) - 8);
          }
        }
        break;
    }
  }
}

void dequantize_rows_bf16(uint16_t* out, const WeightMat& w, int64_t r0, int64_t n) {
  const int64_t K = w.cols, nb = w.blocks(), full = K / kBlock, rb = w.row_bytes();
  thread_local std::vector<float> row;
  for (int64_t r = r0; r < r0 + n; ++r) {
    uint16_t* o = out + (r - r0) * K;
    const uint8_t* p = (const uint8_t*)w.data + r * rb;
    int64_t c = 0;  // first column not yet converted
#ifdef DSMOE_QLINEAR_BF16
    if (bf16_gemm_available() && (w.type == WType::Q8 || w.type == WType::Q4)) {
      const __m512 lut = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
      for (int64_t b = 0; b < full; ++b) {
        const __m512 d = _mm512_set1_ps(bf16_to_f32(w.scales[r * nb + b]));
        __m512 v0, v1;
        if (w.type == WType::Q8) {
          v0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + b * 32))));
          v1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + b * 32 + 16))));
        } else {  // byte j: element j in the low nibble, element j + 16 in the high one
          const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + b * 16)));
          v0 = _mm512_permutexvar_ps(q, lut);
          v1 = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), lut);
        }
        // q * d is exact in fp32 (8 + 8 significant bits); one rounding to bf16.
        const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_mul_ps(v1, d), _mm512_mul_ps(v0, d));
        _mm512_storeu_si512(o + b * 32, (__m512i)h);
      }
      c = full * kBlock;
    }
#endif
    if (c < K) {  // everything else, and the short last block: decode to fp32, then round
      if (row.size() < (size_t)K) row.resize((size_t)K);
      dequantize_rows(row.data(), w, r, 1);
      for (int64_t j = c; j < K; ++j) o[j] = round_to_bf16(row[j]);
    }
  }
}

void quantize_rows(WType t, const float* src, int64_t rows, int64_t cols, void* data, uint16_t* scales) {
  const int64_t nb = (cols + kBlock - 1) / kBlock, rb = WeightMat::row_bytes_of(t, cols);
  const int qmax = t == WType::Q8 ? 127 : 7;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = src + r * cols;
    uint8_t* p = (uint8_t*)data + r * rb;
    if (t == WType::F32) {
      std::memcpy(p, x, (size_t)cols * 4);
      continue;
    }
    if (t == WType::BF16) {
      for (int64_t c = 0; c < cols; ++c) {
        const uint16_t h = f32_to_bf16(x[c]);
        std::memcpy(p + 2 * c, &h, 2);
      }
      continue;
    }
    if (t == WType::Q4) std::memset(p, 0x88, (size_t)rb);  // padding nibbles decode to 0
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c0 = b * kBlock, c1 = std::min(cols, c0 + kBlock);
      float amax = 0;
      for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x[c]));
      const uint16_t dh = f32_to_bf16(amax / (float)qmax);
      scales[r * nb + b] = dh;
      const double d = bf16_to_f32(dh);
      for (int64_t c = c0; c < c1; ++c) {
        // Division in double: q is the exact nearest integer to x/d (see the header for why it
        // never exceeds qmax; the clamp only guards against a bug).
        const int q = d > 0 ? (int)std::clamp(std::nearbyint((double)x[c] / d), (double)-qmax, (double)qmax) : 0;
        if (t == WType::Q8) p[c] = (uint8_t)(int8_t)q;
        else {
          const int64_t j = c - c0;
          uint8_t& byte = p[b * (kBlock / 2) + (j & 15)];
          byte = j < 16 ? (uint8_t)((byte & 0xF0) | (q + 8)) : (uint8_t)((byte & 0x0F) | ((q + 8) << 4));
        }
      }
    }
  }
}

// ---------------------------------------------------------------- GEMV: one weight row, NX activation rows

namespace {

// Scales of one row as fp32, so the inner loops broadcast them from memory (one load-port uop).
void row_scales(float* s, const uint16_t* h, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) s[b] = bf16_to_f32(h[b]);
}

// Scalar reference for one block range [c0, c1) of a row: sum_c x[c] * w[c] for NX activation rows.
template <int NX>
void dot_tail(const WeightMat& w, const uint8_t* p, const float* s, const float* x, int64_t ldx, int64_t c0,
              float* acc) {
  const int64_t K = w.cols;
  for (int64_t c = c0; c < K; ++c) {
    float wc;
    switch (w.type) {
      case WType::BF16: {
        uint16_t h;
        std::memcpy(&h, p + 2 * c, 2);
        wc = bf16_to_f32(h);
        break;
      }
      case WType::Q8: wc = s[c / kBlock] * (float)(int8_t)p[c]; break;
      case WType::Q4: {
        const int64_t b = c / kBlock, j = c % kBlock;
        const uint8_t byte = p[b * (kBlock / 2) + (j & 15)];
        wc = s[b] * (float)((j < 16 ? byte & 15 : byte >> 4) - 8);
        break;
      }
      default: wc = 0;
    }
    for (int i = 0; i < NX; ++i) acc[i] += x[i * ldx + c] * wc;
  }
}

#ifdef DSMOE_QLINEAR_AVX512

// Software prefetch distance (bytes) in the weight stream: one 64-byte line per iteration, this far
// ahead, keeps more misses in flight than the hardware prefetcher alone. Measured with Infer_Gemv
// streaming from DRAM, 2 threads: 0 / 1024 / 2048 / 4096 bytes gave bf16 18 / 23 / 25 / 24 GB/s and
// q8 13 / 16 / 23 / 22 GB/s (bench/RESULTS.md).
constexpr int64_t kPrefetch = 2048;

// acc[i] += d * (w0 . x_i[col, col + 16) + w1 . x_i[col + 16, col + 32)): one block of 32 decoded
// weights against NX activation rows (the scale applied once per block, not per weight).
template <int NX>
inline void fma_block(__m512 w0, __m512 w1, float scale, const float* x, int64_t ldx, int64_t col, __m512* acc) {
  const __m512 d = _mm512_set1_ps(scale);
  for (int i = 0; i < NX; ++i) {
    __m512 t = _mm512_mul_ps(w0, _mm512_loadu_ps(x + i * ldx + col));
    t = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + i * ldx + col + 16), t);
    acc[i] = _mm512_fmadd_ps(t, d, acc[i]);
  }
}

// Runs block(b, acc) over the `full` whole blocks of a row, alternating the two accumulator sets;
// returns the first column not done.
template <class Block>
inline int64_t for_blocks(int64_t full, Block&& block, __m512* a0, __m512* a1) {
  int64_t b = 0;
  for (; b + 2 <= full; b += 2) {
    block(b, a0);
    block(b + 1, a1);
  }
  if (b < full) block(b, a0);
  return full * kBlock;
}

// Two accumulators per activation row (even / odd half-blocks or blocks) so consecutive FMAs do not
// wait on each other's latency: with one, a single row could not keep up with the memory.
template <int NX>
void dot_row(const WeightMat& w, int64_t r, const float* x, int64_t ldx, float* s, float* out) {
  const int64_t K = w.cols, nb = w.blocks();
  const uint8_t* p = (const uint8_t*)w.data + r * w.row_bytes();
  __m512 a0[NX], a1[NX];
  for (int i = 0; i < NX; ++i) a0[i] = a1[i] = _mm512_setzero_ps();
  int64_t c = 0;  // first column not yet done
  if (w.type == WType::BF16) {
    const uint16_t* q = (const uint16_t*)p;
    for (; c + 32 <= K; c += 32) {
      _mm_prefetch((const char*)(q + c) + kPrefetch, _MM_HINT_T0);
      const __m512i raw = _mm512_loadu_si512(q + c);
      const __m512 w0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(raw)), 16));
      const __m512 w1 =
          _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(raw, 1)), 16));
      for (int i = 0; i < NX; ++i) {
        a0[i] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + i * ldx + c), a0[i]);
        a1[i] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + i * ldx + c + 16), a1[i]);
      }
    }
  } else if (w.type == WType::Q8) {
    row_scales(s, w.scales + r * nb, nb);
    const int8_t* q = (const int8_t*)p;
    const int64_t full = K / kBlock;
    auto block = [&](int64_t bb, __m512* acc) {
      if (bb % 2 == 0) _mm_prefetch((const char*)(q + bb * 32) + kPrefetch, _MM_HINT_T0);
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + bb * 32))));
      const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + bb * 32 + 16))));
      fma_block<NX>(w0, w1, s[bb], x, ldx, bb * 32, acc);
    };
    c = for_blocks(full, block, a0, a1);
  } else if (w.type == WType::Q4) {
    row_scales(s, w.scales + r * nb, nb);
    // Nibble -> value by a 16-entry table lookup (vpermps uses the low 4 bits of each index), which
    // replaces mask + subtract + convert.
    const __m512 lut = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    const int64_t full = K / kBlock;
    auto block = [&](int64_t bb, __m512* acc) {
      if (bb % 4 == 0) _mm_prefetch((const char*)(p + bb * 16) + kPrefetch, _MM_HINT_T0);
      const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + bb * 16)));
      const __m512 w0 = _mm512_permutexvar_ps(v, lut);
      const __m512 w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
      fma_block<NX>(w0, w1, s[bb], x, ldx, bb * 32, acc);
    };
    c = for_blocks(full, block, a0, a1);
  }
  float acc[NX];
  for (int i = 0; i < NX; ++i) acc[i] = _mm512_reduce_add_ps(_mm512_add_ps(a0[i], a1[i]));
  if (c < K) dot_tail<NX>(w, p, s, x, ldx, c, acc);  // short last block (cols % 32 != 0)
  for (int i = 0; i < NX; ++i) out[i] = acc[i];
}

#else  // portable fallback: the same arithmetic one element at a time

template <int NX>
void dot_row(const WeightMat& w, int64_t r, const float* x, int64_t ldx, float* s, float* out) {
  const uint8_t* p = (const uint8_t*)w.data + r * w.row_bytes();
  if (WeightMat::has_scales(w.type)) row_scales(s, w.scales + r * w.blocks(), w.blocks());
  float acc[NX] = {};
  dot_tail<NX>(w, p, s, x, ldx, 0, acc);
  for (int i = 0; i < NX; ++i) out[i] = acc[i];
}

#endif

// Rows of W split statically over the threads: each thread streams one contiguous part of the
// matrix once; activation rows are taken four at a time (their weight row is then in L1).
void gemv(float* y, const float* x, const WeightMat& w, int64_t n) {
  const int64_t R = w.rows, K = w.cols;
  const bool par = R * K >= (1 << 16);  // tiny matrices (tests): a parallel region costs more than it saves
#pragma omp parallel if (par)
  {
    // Per-thread scratch kept across calls: a decode step makes hundreds of these calls.
    thread_local std::vector<float> s;
    if (s.size() < (size_t)w.blocks()) s.resize((size_t)w.blocks());
    float out[4];
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t i0 = 0; i0 < n; i0 += 4) {
        const float* xi = x + i0 * K;
        switch (std::min<int64_t>(4, n - i0)) {
          case 1: dot_row<1>(w, r, xi, K, s.data(), out); break;
          case 2: dot_row<2>(w, r, xi, K, s.data(), out); break;
          case 3: dot_row<3>(w, r, xi, K, s.data(), out); break;
          default: dot_row<4>(w, r, xi, K, s.data(), out); break;
        }
        for (int64_t i = i0; i < std::min(n, i0 + 4); ++i) y[i * R + r] = out[i - i0];
      }
    }
  }
}

// Many activation rows: W is converted kTileRows rows at a time (per thread, into L2) and each tile
// multiplied on its thread (OpenBLAS and oneDNN run single-threaded inside the parallel region):
// fn(scratch, r0, nr) for every tile, with a per-thread Scratch kept across calls (megabytes: a
// fresh one per call cost page faults every time).
constexpr int64_t kTileRows = 128;
template <class Scratch, class Fn>
void for_each_weight_tile(const WeightMat& w, Fn&& fn) {
  const int64_t R = w.rows, tiles = (R + kTileRows - 1) / kTileRows;
#pragma omp parallel
  {
    thread_local Scratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tiles; ++t) fn(scratch, t * kTileRows, std::min(kTileRows, R - t * kTileRows));
  }
}

// A tile's worth of T in a per-thread vector, grown once.
template <class T>
T* tile_buffer(std::vector<T>& v, const WeightMat& w) {
  const size_t need = (size_t)(std::min(kTileRows, w.rows) * w.cols);
  if (v.size() < need) v.resize(need);
  return v.data();
}

// Compute F32: tiles dequantized to fp32, SGEMM does the arithmetic.
void tiled_gemm(float* y, const float* x, const WeightMat& w, int64_t n) {
  const int64_t R = w.rows, K = w.cols;
  for_each_weight_tile<std::vector<float>>(w, [&](std::vector<float>& buf, int64_t r0, int64_t nr) {
    float* tile = tile_buffer(buf, w);
    dequantize_rows(tile, w, r0, nr);
    gemm(false, true, n, nr, K, 1.0f, x, K, tile, K, 0.0f, y + r0, R);
  });
}

// Compute BF16: the activations rounded to bf16 once (per-thread scratch kept across calls); bf16
// weights are read as stored, q8 / q4 tiles decoded to bf16, each multiplied by the bf16 kernel.
void bf16_prefill(float* y, const float* x, const WeightMat& w, int64_t n) {
  const int64_t R = w.rows, K = w.cols;
  thread_local std::vector<uint16_t> xb;
  if (xb.size() < (size_t)(n * K)) xb.resize((size_t)(n * K));
  round_to_bf16(xb.data(), x, n * K);
  if (w.type == WType::BF16) return bf16_gemm(y, R, xb.data(), (const uint16_t*)w.data, n, R, K);
  const uint16_t* xs = xb.data();
  for_each_weight_tile<std::vector<uint16_t>>(w, [&](std::vector<uint16_t>& buf, int64_t r0, int64_t nr) {
    uint16_t* tile = tile_buffer(buf, w);
    dequantize_rows_bf16(tile, w, r0, nr);
    bf16_gemm(y + r0, R, xs, tile, n, nr, K);
  });
}

// Compute INT8: the activations quantized once (this thread's scratch, read by every thread through
// the pointer: a thread_local named inside the lambda would be each thread's own), the tiles repacked
// per thread and multiplied by the int8 kernel.
// x [n, w.cols] quantized for the int8 kernels, into this thread's buffer (kept across calls).
const Int8Activations& quantized_activations(const float* x, const WeightMat& w, int64_t n) {
  thread_local Int8Activations xq;
  quantize_activations_int8(xq, x, n, w.cols);
  return xq;
}

void int8_prefill(float* y, const float* x, const WeightMat& w, int64_t n) {
  const Int8Activations* xa = &quantized_activations(x, w, n);
  for_each_weight_tile<Int8WeightTile>(w, [&, xa](Int8WeightTile& tile, int64_t r0, int64_t nr) {
    pack_weights_int8(tile, w, r0, nr);
    int8_gemm(y + r0, w.rows, *xa, tile);
  });
}

}  // namespace

void qlinear_forward(float* y, const float* x, const WeightMat& w, int64_t n) {
  if (n <= 0 || w.rows == 0) return;
  if (w.type == WType::F32)
    return linear_forward(y, x, (const float*)w.data, n, w.cols, w.rows, w.f32_mode ? *w.f32_mode : MatmulMode{});
  if (n <= kGemvMaxRows) {
    // int8 / mixed: the activations quantized as in prefill, VNNI dot products (ops/int8_gemm.h);
    // at one thread the f32 GEMV's nibble and byte conversions, not the memory, bound decode.
    if ((w.compute == Compute::INT8 || w.compute == Compute::MIXED) && (w.type == WType::Q8 || w.type == WType::Q4) &&
        int8_gemm_available())
      return int8_gemv(y, w.rows, quantized_activations(x, w, n), w);
    return gemv(y, x, w, n);
  }
  Compute c = w.compute;
  if (c == Compute::MIXED) {
    DSMOE_ASSERT(bf16_gemm_available(), "compute mixed without AVX512_BF16");
    c = n <= kMixedInt8MaxRows ? Compute::INT8 : Compute::BF16;
  }
  if (c == Compute::BF16 && bf16_gemm_available()) bf16_prefill(y, x, w, n);
  else if (c == Compute::INT8) {
    DSMOE_ASSERT(int8_gemm_available() && (w.type == WType::Q8 || w.type == WType::Q4),
                 "compute {} with {} weights{}", compute_name(w.compute), wtype_name(w.type),
                 int8_gemm_available() ? "" : " without AVX512-VNNI");
    int8_prefill(y, x, w, n);
  } else tiled_gemm(y, x, w, n);
}

}  // namespace dsmoe::ops
