// The int8 compute path (ops/int8_gemm.h): the activation quantization against a plain
// implementation of the documented rule written here, the weight packing against the documented
// layout, and the product against an fp64 reference of the quantized operands: the block sums of
// integers are exact, so the only error is the fp32 scaling and accumulation of one term per block,
// bounded by gamma(nb + 1) * sum_b |S_b d_x d_w| (the header's bound). Shapes around the register
// tile (6 activation rows x 32 weight rows, groups of 16) and the 128-row weight tiles, K not a
// multiple of 32 (padded blocks), outside and inside a parallel region; and the choice qlinear_forward
// and --compute make with it.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "infer/compute_mode.h"
#include "ops/bf16_gemm.h"
#include "ops/int8_gemm.h"
#include "ops/qlinear.h"
#include "test_util.h"

using namespace dsmoe;
using ops::Compute;
using ops::WeightMat;
using ops::WType;
using test::bf16_value;
using test::randn;

namespace {

// Nearest integer, ties to even, by comparison (not the library's rounding).
int round_even(float p) {
  const double f = std::floor((double)p), frac = (double)p - f;
  int64_t q = (int64_t)f;
  if (frac > 0.5 || (frac == 0.5 && (q % 2 != 0))) ++q;
  return (int)q;
}

// The documented rule for one row of K values: q [nb * 32], d [nb], sum [nb].
struct RefQuant {
  std::vector<int> q;
  std::vector<float> d;
  std::vector<int> sum;
};
RefQuant reference_quantize(const float* x, int64_t K) {
  const int64_t nb = (K + 31) / 32;
  RefQuant r{std::vector<int>((size_t)(nb * 32), 0), std::vector<float>((size_t)nb), std::vector<int>((size_t)nb, 0)};
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t c0 = b * 32, c1 = std::min(K, c0 + 32);
    bool finite = true;
    float amax = 0;
    for (int64_t c = c0; c < c1; ++c) {
      if (std::isnan(x[c]) || std::isinf(x[c])) finite = false;
      else if (std::fabs(x[c]) > amax) amax = std::fabs(x[c]);
    }
    if (!finite) {
      r.d[b] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const float inv = 127.0f / amax;  // fp32 division, as documented
    if (std::isinf(inv) || std::isnan(inv)) {
      r.d[b] = 0;
      continue;
    }
    r.d[b] = amax / 127.0f;
    for (int64_t c = c0; c < c1; ++c) {
      const float p = x[c] * inv;  // fp32 product
      r.q[c] = round_even(p);
      r.sum[b] += r.q[c];
    }
  }
  return r;
}

// Integer weights and scales of row r decoded from the storage format (ops/qlinear.h).
void weight_ints(const WeightMat& w, int64_t r, std::vector<int>& q, std::vector<double>& d) {
  const int64_t K = w.cols, nb = w.blocks();
  q.assign((size_t)(nb * 32), 0);
  d.resize((size_t)nb);
  const uint8_t* p = (const uint8_t*)w.data + r * w.row_bytes();
  for (int64_t b = 0; b < nb; ++b) d[b] = bf16_value(w.scales[r * nb + b]);
  for (int64_t c = 0; c < K; ++c) {
    if (w.type == WType::Q8) q[c] = (int8_t)p[c];
    else {
      const uint8_t byte = p[(c / 32) * 16 + (c % 32) % 16];
      q[c] = ((c % 32) < 16 ? byte & 15 : byte >> 4) - 8;
    }
  }
}

// Counts outputs of y [n, ldy] (columns [0, R)) outside the bound around the fp64 product of the
// reference-quantized x and the stored weights.
int64_t count_outside_bound(const std::vector<float>& y, int64_t ldy, const std::vector<float>& x, const WeightMat& w,
                            int64_t n, std::string* first) {
  const int64_t K = w.cols, R = w.rows, nb = w.blocks();
  const double u = std::ldexp(1.0, -24), gamma = (nb + 1) * u / (1 - (nb + 1) * u);
  std::vector<RefQuant> xq;
  for (int64_t i = 0; i < n; ++i) xq.push_back(reference_quantize(x.data() + i * K, K));
  int64_t bad = 0;
  std::vector<int> wq;
  std::vector<double> wd;
  for (int64_t r = 0; r < R; ++r) {
    weight_ints(w, r, wq, wd);
    for (int64_t i = 0; i < n; ++i) {
      double ref = 0, mag = 0;
      for (int64_t b = 0; b < nb; ++b) {
        int64_t s = 0;
        for (int64_t k = b * 32; k < b * 32 + 32; ++k) s += (int64_t)wq[k] * xq[i].q[k];
        const double term = (double)s * xq[i].d[b] * wd[b];
        ref += term;
        mag += std::fabs(term);
      }
      const double bound = gamma * mag + nb * std::ldexp(1.0, -149);
      const double got = y[i * ldy + r], err = std::fabs(got - ref);
      if (!(err <= bound)) {
        if (bad++ == 0 && first)
          *first = "y[" + std::to_string(i) + "][" + std::to_string(r) + "] = " + std::to_string(got) + ", fp64 " +
                   std::to_string(ref) + ", |error| " + std::to_string(err) + " > bound " + std::to_string(bound);
      }
    }
  }
  return bad;
}

struct QMat {
  std::vector<uint8_t> data;
  std::vector<uint16_t> scales;
  WeightMat w;
};
QMat make_weights(WType t, int64_t R, int64_t K, uint64_t seed) {
  QMat m;
  const std::vector<float> wf = randn(R * K, seed, 0.05f);
  m.data.resize((size_t)(R * WeightMat::row_bytes_of(t, K)));
  m.scales.resize((size_t)(R * ((K + 31) / 32)));
  ops::quantize_rows(t, wf.data(), R, K, m.data.data(), m.scales.data());
  m.w = WeightMat{t, R, K, m.data.data(), m.scales.data()};
  return m;
}

#define SKIP_WITHOUT_VNNI() \
  if (!ops::int8_gemm_available()) GTEST_SKIP() << "this CPU or build has no AVX512-VNNI"

TEST(Int8Gemm, ActivationsFollowTheDocumentedRule) {
  SKIP_WITHOUT_VNNI();
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t K : {int64_t{32}, int64_t{77}, int64_t{256}}) {
    const int64_t n = 7, nb = (K + 31) / 32;
    std::vector<float> x = randn(n * K, 3 + K, 2.0f);
    // Row 1, block 0: amax 127, so q = x exactly at integers and the ties 2.5 -> 2, 3.5 -> 4, -2.5 -> -2.
    const float ties[] = {127.0f, 2.5f, 3.5f, -2.5f, -0.5f, 0.5f, 1.5f, -127.0f};
    for (int k = 0; k < 8; ++k) x[1 * K + k] = ties[k];
    for (int k = 8; k < 32 && k < K; ++k) x[1 * K + k] = (float)(k - 20);
    for (int64_t k = 0; k < std::min<int64_t>(K, 32); ++k) x[2 * K + k] = 0.0f;  // row 2 block 0: zeros
    x[3 * K + 5] = nan;                                                          // row 3: NaN in block 0
    x[4 * K + K - 1] = -inf;                                                     // row 4: -inf in the last block
    for (int64_t k = 0; k < std::min<int64_t>(K, 32); ++k) x[5 * K + k] = 1e-38f * (float)(k % 3);  // below 3.7e-37
    ops::Int8Activations a;
    ops::quantize_activations_int8(a, x.data(), n, K);
    ASSERT_EQ(a.n, n);
    ASSERT_EQ(a.blocks, nb);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      const RefQuant r = reference_quantize(x.data() + i * K, K);
      for (int64_t b = 0; b < nb; ++b) {
        const float gd = a.d[i * nb + b];
        const bool same_d = std::isnan(r.d[b]) ? std::isnan(gd) : std::memcmp(&gd, &r.d[b], 4) == 0;
        if ((!same_d || a.sum[i * nb + b] != r.sum[b]) && bad++ < 5)
          ADD_FAILURE() << "K " << K << " row " << i << " block " << b << ": d " << gd << " sum " << a.sum[i * nb + b]
                        << ", expected d " << r.d[b] << " sum " << r.sum[b];
        for (int64_t k = b * 32; k < b * 32 + 32; ++k)
          if (a.q[i * nb * 32 + k] != r.q[k] && bad++ < 5)
            ADD_FAILURE() << "K " << K << " row " << i << " column " << k << ": q " << (int)a.q[i * nb * 32 + k]
                          << ", expected " << r.q[k] << " (x " << (k < K ? x[i * K + k] : 0.0f) << ")";
      }
    }
    EXPECT_EQ(bad, 0);
    // The ties, spelled out (not only through the reference above).
    EXPECT_EQ(a.q[1 * nb * 32 + 1], 2);
    EXPECT_EQ(a.q[1 * nb * 32 + 2], 4);
    EXPECT_EQ(a.q[1 * nb * 32 + 3], -2);
    EXPECT_EQ(a.q[1 * nb * 32 + 4], 0);
    EXPECT_TRUE(std::isnan(a.d[3 * nb]));
    EXPECT_TRUE(std::isnan(a.d[4 * nb + nb - 1]));
    EXPECT_EQ(a.d[2 * nb], 0.0f);
    EXPECT_EQ(a.d[5 * nb], 0.0f);
  }
}

TEST(Int8Gemm, WeightsArePackedInTheDocumentedLayout) {
  SKIP_WITHOUT_VNNI();
  for (WType t : {WType::Q8, WType::Q4})
    for (int64_t K : {int64_t{64}, int64_t{77}}) {
      const int64_t R = 40, r0 = 3, nr = 21, nb = (K + 31) / 32;  // 2 groups, the second padded
      QMat m = make_weights(t, R, K, 60 + K);
      ops::Int8WeightTile p;
      ops::pack_weights_int8(p, m.w, r0, nr);
      const int off = t == WType::Q8 ? 128 : 8;
      ASSERT_EQ(p.offset, off);
      ASSERT_EQ(p.rows, nr);
      ASSERT_EQ(p.blocks, nb);
      int64_t bad = 0;
      std::vector<int> wq;
      std::vector<double> wd;
      for (int64_t g = 0; g < 2; ++g)
        for (int j = 0; j < 16; ++j) {
          const int64_t r = g * 16 + j;
          if (r < nr) weight_ints(m.w, r0 + r, wq, wd);
          for (int64_t b = 0; b < nb; ++b) {
            const double d = r < nr ? wd[b] : 0.0;
            if (p.d[(g * nb + b) * 16 + j] != d && bad++ < 5)
              ADD_FAILURE() << "scale of row " << r << " block " << b << ": " << p.d[(g * nb + b) * 16 + j] << " != " << d;
            for (int k = 0; k < 32; ++k) {
              const int expect = (r < nr ? wq[b * 32 + k] : 0) + off;
              const int got = p.q[((g * nb + b) * 8 + k / 4) * 64 + j * 4 + k % 4];
              if (got != expect && bad++ < 5)
                ADD_FAILURE() << ops::wtype_name(t) << " K " << K << " row " << r << " block " << b << " k " << k
                              << ": byte " << got << ", expected " << expect;
            }
          }
        }
      EXPECT_EQ(bad, 0) << ops::wtype_name(t) << " K " << K;
    }
}

// The kernel called directly: every count of activation rows of the register tile's tail (1..13),
// weight rows around groups of 16 and pairs of groups, K with a short padded last block, and an
// output with a row stride wider than its columns (the columns beyond stay untouched).
TEST(Int8Gemm, KernelMatchesFp64OfTheQuantizedOperands) {
  SKIP_WITHOUT_VNNI();
  const int64_t shapes[][3] = {{1, 1, 32}, {2, 15, 64}, {3, 16, 77}, {5, 17, 96}, {6, 33, 160}, {7, 48, 31},
                               {11, 5, 2048}, {13, 40, 100}};
  uint64_t seed = 200;
  for (WType t : {WType::Q8, WType::Q4})
    for (const auto& s : shapes) {
      const int64_t n = s[0], R = s[1], K = s[2], ldy = R + 3;
      QMat m = make_weights(t, R, K, ++seed);
      const std::vector<float> x = randn(n * K, ++seed, 1.0f);
      ops::Int8Activations a;
      ops::quantize_activations_int8(a, x.data(), n, K);
      ops::Int8WeightTile p;
      ops::pack_weights_int8(p, m.w, 0, R);
      std::vector<float> y((size_t)(n * ldy), -7.0f);
      ops::int8_gemm(y.data(), ldy, a, p);
      std::string first;
      EXPECT_EQ(count_outside_bound(y, ldy, x, m.w, n, &first), 0)
          << ops::wtype_name(t) << " n " << n << " R " << R << " K " << K << ": " << first;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = R; c < ldy; ++c) ASSERT_EQ(y[i * ldy + c], -7.0f) << "row " << i << " column " << c << " written";
    }
}

// The decode GEMV (ops/int8_gemm.h int8_gemv) against fp64 of the same integers with its own bound:
// gamma(nb / 2 + 6) times the sum of |q_w q_x| d_x |d_w| over the row. Also: a row's result has
// the same bits whatever the other rows of x and whatever the thread count (rows of W are split
// over the threads; nothing of one row may reach another's sums).
TEST(Int8Gemm, GemvMatchesFp64AndIsIndependentOfBatchAndThreads) {
  SKIP_WITHOUT_VNNI();
  const int64_t shapes[][3] = {{1, 1, 32}, {1, 7, 64}, {2, 15, 96}, {3, 16, 77}, {4, 33, 160}, {5, 17, 31},
                               {8, 5, 2048}, {6, 300, 1408}, {1, 700, 100}};
  uint64_t seed = 500;
  const double u = std::ldexp(1.0, -24);
  for (WType t : {WType::Q8, WType::Q4})
    for (const auto& s : shapes) {
      const int64_t n = s[0], R = s[1], K = s[2], ldy = R + 3, nb = (K + 31) / 32;
      QMat m = make_weights(t, R, K, ++seed);
      const std::vector<float> x = randn(n * K, ++seed, 1.0f);
      ops::Int8Activations a;
      ops::quantize_activations_int8(a, x.data(), n, K);
      std::vector<float> y((size_t)(n * ldy), -7.0f);
      ops::int8_gemv(y.data(), ldy, a, m.w);
      const double g = (nb / 2 + 6) * u / (1 - (nb / 2 + 6) * u);
      std::vector<int> wq;
      std::vector<double> wd;
      int64_t bad = 0;
      std::string first;
      for (int64_t r = 0; r < R; ++r) {
        weight_ints(m.w, r, wq, wd);
        for (int64_t i = 0; i < n; ++i) {
          double ref = 0, mag = 0;
          for (int64_t b = 0; b < nb; ++b) {
            int64_t sb = 0, ab = 0;
            for (int64_t k = b * 32; k < b * 32 + 32; ++k) {
              const int64_t pq = (int64_t)wq[k] * a.q[i * nb * 32 + k];
              sb += pq;
              ab += std::llabs(pq);
            }
            ref += (double)sb * a.d[i * nb + b] * wd[b];
            mag += (double)ab * a.d[i * nb + b] * std::fabs(wd[b]);
          }
          const double err = std::fabs(y[i * ldy + r] - ref), bound = g * mag + nb * std::ldexp(1.0, -149);
          if (!(err <= bound) && bad++ == 0)
            first = fmt::format("y[{}][{}] = {}, fp64 {}, |error| {:.3g} > bound {:.3g}", i, r, y[i * ldy + r], ref, err, bound);
        }
      }
      EXPECT_EQ(bad, 0) << ops::wtype_name(t) << " n " << n << " R " << R << " K " << K << ": " << first;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = R; c < ldy; ++c) ASSERT_EQ(y[i * ldy + c], -7.0f) << "row " << i << " column " << c << " written";
      // The last row alone, and the whole product at 1 and 3 threads: the same bits.
      ops::Int8Activations last;
      ops::quantize_activations_int8(last, x.data() + (n - 1) * K, 1, K);
      std::vector<float> y1((size_t)ldy, -7.0f);
      ops::int8_gemv(y1.data(), ldy, last, m.w);
      EXPECT_EQ(std::memcmp(y1.data(), y.data() + (n - 1) * ldy, (size_t)R * 4), 0)
          << ops::wtype_name(t) << " n " << n << " R " << R << " K " << K << ": the last row alone differs";
      const int threads = omp_get_max_threads();
      for (int th : {1, 3}) {
        omp_set_num_threads(th);
        std::vector<float> yt((size_t)(n * ldy), -7.0f);
        ops::int8_gemv(yt.data(), ldy, a, m.w);
        omp_set_num_threads(threads);
        EXPECT_EQ(std::memcmp(yt.data(), y.data(), y.size() * 4), 0)
            << ops::wtype_name(t) << " n " << n << " R " << R << " K " << K << ": " << th << " threads differ";
      }
    }
}

// Decode's routed experts call the GEMV from the threads of a parallel region at once (ops/experts.cpp
// for_each_expert), through qlinear_forward: each call's result equals the same call made alone.
TEST(Int8Gemm, GemvCalledFromManyThreadsAtOnceEqualsAlone) {
  SKIP_WITHOUT_VNNI();
  for (WType t : {WType::Q8, WType::Q4}) {
    const int64_t E = 12, R = 96, K = 1408;
    std::vector<QMat> ms;
    std::vector<std::vector<float>> xs, alone(E), together(E);
    for (int64_t e = 0; e < E; ++e) {
      ms.push_back(make_weights(t, R, K, 700 + e));
      ms.back().w.compute = Compute::INT8;
      xs.push_back(randn((1 + e % 4) * K, 800 + e, 1.0f));
    }
    for (int64_t e = 0; e < E; ++e) {
      alone[e].assign((size_t)((1 + e % 4) * R), 0.0f);
      ops::qlinear_forward(alone[e].data(), xs[e].data(), ms[e].w, 1 + e % 4);
      together[e].assign(alone[e].size(), 0.0f);
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(3)
    for (int64_t e = 0; e < E; ++e) ops::qlinear_forward(together[e].data(), xs[e].data(), ms[e].w, 1 + e % 4);
    for (int64_t e = 0; e < E; ++e)
      EXPECT_EQ(std::memcmp(alone[e].data(), together[e].data(), alone[e].size() * 4), 0)
          << ops::wtype_name(t) << " expert " << e << " differs when computed beside the others";
  }
}

// Through qlinear_forward with compute INT8 (prefill: n > kGemvMaxRows): several 128-row tiles
// spread over the threads, called outside and inside a parallel region (the per-expert products).
TEST(Int8Gemm, QlinearPrefillMatchesFp64OutsideAndInsideAParallelRegion) {
  SKIP_WITHOUT_VNNI();
  uint64_t seed = 300;
  for (WType t : {WType::Q8, WType::Q4})
    for (const auto& s : std::vector<std::array<int64_t, 3>>{{9, 300, 64}, {20, 129, 77}, {70, 260, 256}}) {
      const int64_t n = s[0], R = s[1], K = s[2];
      QMat m = make_weights(t, R, K, ++seed);
      m.w.compute = Compute::INT8;
      const std::vector<float> x = randn(n * K, ++seed, 1.0f);
      for (bool inside : {false, true}) {
        std::vector<float> y((size_t)(n * R), std::nanf(""));
        if (inside) {
#pragma omp parallel num_threads(2)
          {
#pragma omp single
            ops::qlinear_forward(y.data(), x.data(), m.w, n);
          }
        } else {
          ops::qlinear_forward(y.data(), x.data(), m.w, n);
        }
        std::string first;
        EXPECT_EQ(count_outside_bound(y, R, x, m.w, n, &first), 0)
            << ops::wtype_name(t) << " n " << n << " R " << R << " K " << K << (inside ? " inside" : " outside")
            << " a parallel region (" << omp_get_max_threads() << " threads): " << first;
      }
    }
}

// Prefill and decode (the GEMV, n <= kGemvMaxRows) are not the f32 product (the quantization of x
// is visible: guards against a silent fallback); a NaN in x reaches its row's outputs only.
TEST(Int8Gemm, QlinearUsesItForPrefillAndDecodeAndPropagatesNaN) {
  SKIP_WITHOUT_VNNI();
  const int64_t R = 37, K = 96;
  QMat m = make_weights(WType::Q8, R, K, 21);
  WeightMat f32c = m.w, int8c = m.w;
  int8c.compute = Compute::INT8;
  for (int64_t n : {int64_t{1}, ops::kGemvMaxRows, ops::kGemvMaxRows + 1, int64_t{40}}) {
    std::vector<float> x = randn(n * K, 30 + n, 1.0f);
    std::vector<float> ya((size_t)(n * R)), yb((size_t)(n * R));
    ops::qlinear_forward(ya.data(), x.data(), f32c, n);
    ops::qlinear_forward(yb.data(), x.data(), int8c, n);
    double diff = 0;
    for (size_t i = 0; i < ya.size(); ++i) diff = std::max(diff, (double)std::fabs(ya[i] - yb[i]));
    EXPECT_GT(diff, 0.0) << "n " << n << ": compute int8 gave exactly the f32 result";
    if (n < 4) continue;  // the NaN goes in row 2 and row 3 must stay clean
    x[2 * K + 40] = std::nanf("");
    ops::qlinear_forward(yb.data(), x.data(), int8c, n);
    for (int64_t r = 0; r < R; ++r) {
      EXPECT_TRUE(std::isnan(yb[2 * R + r])) << "row 2 column " << r << " = " << yb[2 * R + r] << " with a NaN input";
      EXPECT_FALSE(std::isnan(yb[3 * R + r])) << "row 3 column " << r << " is NaN";
    }
  }
}

// Compute MIXED is, bit for bit, INT8 for products of up to kMixedInt8MaxRows rows (decode's GEMV
// included) and BF16 above: each side of the limit, q8 and q4.
TEST(Int8Gemm, MixedIsInt8UpToItsRowLimitAndBf16Above) {
  SKIP_WITHOUT_VNNI();
  if (!ops::bf16_gemm_available()) GTEST_SKIP() << "no AVX512_BF16";
  const int64_t R = 70, K = 96;
  for (WType t : {WType::Q8, WType::Q4}) {
    QMat m = make_weights(t, R, K, 41);
    WeightMat mixed = m.w, int8c = m.w, bf16c = m.w, f32c = m.w;
    mixed.compute = Compute::MIXED;
    int8c.compute = Compute::INT8;
    bf16c.compute = Compute::BF16;
    for (int64_t n : {ops::kGemvMaxRows, ops::kGemvMaxRows + 1, ops::kMixedInt8MaxRows, ops::kMixedInt8MaxRows + 1,
                      int64_t{130}}) {
      const std::vector<float> x = randn(n * K, 50 + n, 1.0f);
      std::vector<float> ym((size_t)(n * R)), ye((size_t)(n * R)), yo((size_t)(n * R));
      const bool few = n <= ops::kMixedInt8MaxRows;
      const WeightMat& expect = few ? int8c : bf16c;  // decode (n <= kGemvMaxRows) included: the int8 GEMV
      const WeightMat& other = few ? bf16c : int8c;
      ops::qlinear_forward(ym.data(), x.data(), mixed, n);
      ops::qlinear_forward(ye.data(), x.data(), expect, n);
      ops::qlinear_forward(yo.data(), x.data(), other, n);
      EXPECT_EQ(std::memcmp(ym.data(), ye.data(), ym.size() * 4), 0)
          << ops::wtype_name(t) << " n " << n << ": mixed is not compute " << ops::compute_name(expect.compute);
      EXPECT_NE(std::memcmp(ym.data(), yo.data(), ym.size() * 4), 0)
            << ops::wtype_name(t) << " n " << n << ": mixed equals compute " << ops::compute_name(other.compute)
            << " too (the test cannot tell them apart)";
    }
  }
}

TEST(Int8Gemm, ComputeChoiceRefusesWhatItCannotRun) {
  for (WType t : {WType::F32, WType::BF16}) {
    try {
      choose_compute("int8", t);
      ADD_FAILURE() << "--compute int8 accepted with " << ops::wtype_name(t) << " weights";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--compute int8 needs q8 or q4 weights"), std::string::npos) << e.what();
    }
  }
  for (WType t : {WType::Q8, WType::Q4}) {
    if (ops::int8_gemm_available()) {
      const ComputeChoice c = choose_compute("int8", t);
      EXPECT_EQ(c.compute, Compute::INT8) << ops::wtype_name(t);
      EXPECT_NE(c.note.find("AVX512-VNNI"), std::string::npos) << c.note;  // stderr names the kernel
    } else {
      try {
        choose_compute("int8", t);
        ADD_FAILURE() << "--compute int8 accepted on a CPU without AVX512-VNNI";
      } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("AVX512-VNNI"), std::string::npos) << e.what();
      }
    }
  }
  for (WType t : {WType::F32, WType::BF16}) EXPECT_THROW(choose_compute("mixed", t), UsageError);
  if (ops::int8_gemm_available() && ops::bf16_gemm_available()) {
    const ComputeChoice c = choose_compute("mixed", WType::Q8);
    EXPECT_EQ(c.compute, Compute::MIXED);
    EXPECT_NE(c.note.find("up to " + std::to_string(ops::kMixedInt8MaxRows) + " rows"), std::string::npos) << c.note;
  }
  EXPECT_THROW(choose_compute("int4", WType::Q8), UsageError);
}

}  // namespace
