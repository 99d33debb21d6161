// Causal GQA attention with materialised probabilities.
//
// Work is cut into blocks of up to kRowBlock query rows of one (batch, query head); a block only
// touches the keys its last row can see (kmax = i1 + kv_len - q_len), so the masked upper triangle
// is mostly skipped. The products are single-threaded GEMMs inside our OpenMP region (the OpenMP
// build of OpenBLAS runs single-threaded when called from an active parallel region).
// Forward: one task per (batch, q head, row block), scheduled dynamically. It is one template over
// the storage of keys and values: an fp32 K/V is used in place (one product over all visible keys);
// a bf16 K/V (the inference cache) is widened to fp32 kBf16KeyChunk keys at a time into per-thread
// panels that stay in L2, and the products run chunk by chunk (S column blocks; O accumulated). Backward: one task per
// (batch, kv head), which walks the group's query heads and row blocks in a fixed order, so the
// dk/dv sums shared by a group need no atomics or per-thread copies. Every task's arithmetic is fixed by the shape alone,
// so results are bit-identical for any thread count.
#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/gemm.h"
#include "core/vmath.h"

namespace dsmoe::ops {

namespace {

constexpr int64_t kRowBlock = 64;
// Keys widened per product from a bf16 K/V: 256 keys x head_dim 128 x 4 bytes = 128 KiB of fp32
// panel, which stays in L2 between its widening and its product.
constexpr int64_t kBf16KeyChunk = 256;

void check_shape(const AttentionShape& s) {
  DSMOE_ASSERT(s.batch >= 0 && s.q_len >= 0 && s.head_dim > 0, "bad attention shape b={} q_len={} head_dim={}",
               s.batch, s.q_len, s.head_dim);
  DSMOE_ASSERT(s.kv_heads > 0 && s.q_heads > 0 && s.q_heads % s.kv_heads == 0,
               "q_heads {} must be a positive multiple of kv_heads {}", s.q_heads, s.kv_heads);
  DSMOE_ASSERT(s.q_len <= s.kv_len, "q_len {} exceeds kv_len {}", s.q_len, s.kv_len);
}

template <class KV>
void attention_forward_impl(float* out, float* probs, const float* q, const KV* k, const KV* v,
                            const AttentionShape& s) {
  check_shape(s);
  constexpr bool kInPlace = std::is_same_v<KV, float>;
  const int64_t B = s.batch, Tq = s.q_len, Tk = s.kv_len, Hq = s.q_heads, D = s.head_dim;
  const int64_t group = Hq / s.kv_heads, off = Tk - Tq, qs = s.q_stride(), ks = s.kv_stride();
  const float scale = (float)(1.0 / std::sqrt((double)D));
  const int64_t nblk = (Tq + kRowBlock - 1) / kRowBlock;
  const int64_t ntask = B * Hq * nblk;
#pragma omp parallel
  {
    std::vector<float> scratch(probs ? 0 : (size_t)(kRowBlock * Tk));
    std::vector<float> panel(kInPlace ? 0 : (size_t)(kBf16KeyChunk * D));
    // Rows [j0, j1) of one kv head's keys or values (row stride ks) as fp32 rows: in place for an
    // fp32 K/V, widened into `panel` (row stride D) for bf16.
    const auto rows_f32 = [&](const KV* src, int64_t j0, int64_t j1, int64_t& ld) -> const float* {
      if constexpr (kInPlace) {
        ld = ks;
        return src + j0 * ks;
      } else {
        ld = D;
        for (int64_t j = j0; j < j1; ++j) {
          const uint16_t* in = src + j * ks;
          float* o = panel.data() + (j - j0) * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) o[d] = bf16_to_f32(in[d]);
        }
        return panel.data();
      }
    };
    // Dynamic, most expensive block of each head first (a block's cost grows with its index along
    // the causal triangle): the old round-robin static schedule gave one of 2 threads the even,
    // cheaper blocks every time (1.5x imbalance at T = 256). Each task writes only its own rows, so
    // the schedule does not change the results.
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntask; ++t) {
      const int64_t blk = nblk - 1 - t % nblk, h = (t / nblk) % Hq, b = t / (nblk * Hq);
      const int64_t i0 = blk * kRowBlock, i1 = std::min(Tq, i0 + kRowBlock), rows = i1 - i0;
      const int64_t kmax = i1 + off;  // keys visible to the block's last row: j < kmax
      const int64_t chunk = kInPlace ? kmax : kBf16KeyChunk;
      const float* qb = q + (b * Tq + i0) * qs + h * D;
      const KV* kb = k + b * Tk * ks + (h / group) * D;
      const KV* vb = v + b * Tk * ks + (h / group) * D;
      float* ob = out + (b * Tq + i0) * qs + h * D;
      float* P;
      int64_t ldp, width;  // row stride of P, and how many columns of each row we must fill
      if (probs) {
        P = probs + ((b * Hq + h) * Tq + i0) * Tk;
        ldp = Tk;
        width = Tk;
      } else {
        P = scratch.data();
        ldp = kmax;
        width = kmax;
      }
      // S = scale * Q K^T over the visible keys, a column block per chunk of keys
      for (int64_t j0 = 0; j0 < kmax; j0 += chunk) {
        const int64_t j1 = std::min(kmax, j0 + chunk);
        int64_t ld = 0;
        const float* kr = rows_f32(kb, j0, j1, ld);
        gemm(false, true, rows, j1 - j0, D, scale, qb, qs, kr, ld, 0.0f, P + j0, ldp);
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* row = P + r * ldp;
        const int64_t nv = i0 + r + off + 1;  // keys 0..nv-1 are visible
        const float m = vmax(row, nv);
        vexp(row, row, m, nv);
        // Summed in vector lanes (a fixed order, so still deterministic): a serial chain was ~2% of a step.
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < nv; ++j) sum += row[j];
        const float inv = (float)(1.0 / sum);
#pragma omp simd
        for (int64_t j = 0; j < nv; ++j) row[j] *= inv;
        for (int64_t j = nv; j < width; ++j) row[j] = 0.0f;
      }
      // O = P V (masked entries are exact zeros), accumulated over the chunks of keys
      for (int64_t j0 = 0; j0 < kmax; j0 += chunk) {
        const int64_t j1 = std::min(kmax, j0 + chunk);
        int64_t ld = 0;
        const float* vr = rows_f32(vb, j0, j1, ld);
        gemm(false, false, rows, D, j1 - j0, 1.0f, P + j0, ldp, vr, ld, j0 == 0 ? 0.0f : 1.0f, ob, qs);
      }
    }
  }
}

}  // namespace

void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       const AttentionShape& s) {
  attention_forward_impl(out, probs, q, k, v, s);
}

void attention_forward(float* out, float* probs, const float* q, const uint16_t* k, const uint16_t* v,
                       const AttentionShape& s) {
  attention_forward_impl(out, probs, q, k, v, s);
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs, const float* q,
                        const float* k, const float* v, const AttentionShape& s) {
  check_shape(s);
  if (!dq && !dk && !dv) return;
  const int64_t B = s.batch, Tq = s.q_len, Tk = s.kv_len, Hq = s.q_heads, Hkv = s.kv_heads, D = s.head_dim;
  const int64_t group = Hq / Hkv, off = Tk - Tq, qs = s.q_stride(), ks = s.kv_stride();
  const float scale = (float)(1.0 / std::sqrt((double)D));
  const int64_t nblk = (Tq + kRowBlock - 1) / kRowBlock;
  const int64_t ntask = B * Hkv;
  const bool need_ds = dq || dk;
#pragma omp parallel
  {
    std::vector<float> dS(need_ds ? (size_t)(kRowBlock * Tk) : 0);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntask; ++t) {
      const int64_t b = t / Hkv, g = t % Hkv;
      const float* kb = k + b * Tk * ks + g * D;
      const float* vb = v + b * Tk * ks + g * D;
      float* dkb = dk ? dk + b * Tk * ks + g * D : nullptr;
      float* dvb = dv ? dv + b * Tk * ks + g * D : nullptr;
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        for (int64_t blk = 0; blk < nblk; ++blk) {
          const int64_t i0 = blk * kRowBlock, i1 = std::min(Tq, i0 + kRowBlock), rows = i1 - i0;
          const int64_t kmax = i1 + off;
          const float* P = probs + ((b * Hq + h) * Tq + i0) * Tk;
          const float* dO = dout + (b * Tq + i0) * qs + h * D;
          const float* qb = q + (b * Tq + i0) * qs + h * D;
          // dV += P^T dO
          if (dvb) gemm(true, false, kmax, D, rows, 1.0f, P, Tk, dO, qs, 1.0f, dvb, ks);
          if (!need_ds) continue;
          // dP = dO V^T, then dS = P * (dP - sum_j P dP) (softmax backward), row by row
          float* S = dS.data();
          gemm(false, true, rows, kmax, D, 1.0f, dO, qs, vb, ks, 0.0f, S, kmax);
          for (int64_t r = 0; r < rows; ++r) {
            const float* pr = P + r * Tk;
            float* sr = S + r * kmax;
            const int64_t nv = i0 + r + off + 1;
            double dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < nv; ++j) dot += (double)pr[j] * (double)sr[j];
            const float dotf = (float)dot;
#pragma omp simd
            for (int64_t j = 0; j < nv; ++j) sr[j] = pr[j] * (sr[j] - dotf);
            for (int64_t j = nv; j < kmax; ++j) sr[j] = 0.0f;
          }
          // dQ += scale dS K ; dK += scale dS^T Q
          if (dq) gemm(false, false, rows, D, kmax, scale, S, kmax, kb, ks, 1.0f, dq + (b * Tq + i0) * qs + h * D, qs);
          if (dkb) gemm(true, false, kmax, D, rows, scale, S, kmax, qb, qs, 1.0f, dkb, ks);
        }
      }
    }
  }
}

}  // namespace dsmoe::ops
