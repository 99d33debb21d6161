// The bf16 compute path (ops/bf16_gemm.h): the activation rounding, and the kernel against an fp64
// reference of the documented arithmetic (activations rounded to bf16, exact bf16 products, the
// error bound of fp32 accumulation stated in the header), for shapes around the kernels' tile edges
// (rows of x and of W not multiples of 4 / 16, K not a multiple of 32), called outside and inside a
// parallel region; and the choice qlinear_forward makes with it (prefill only; GEMV unchanged).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/bf16.h"
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

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Round to nearest even by integer arithmetic on the bits, denormals to signed zero (the documented rule).
uint16_t expected_bf16(float f) {
  const uint32_t u = bits(f);
  if ((u & 0x7f800000) == 0) return (uint16_t)((u >> 16) & 0x8000);
  if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
  const uint32_t hi = u >> 16, lo = u & 0xffff;
  const bool up = lo > 0x8000 || (lo == 0x8000 && (hi & 1));
  return (uint16_t)(hi + (up ? 1 : 0));
}


std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = f32_to_bf16(v[i]);
  return out;
}

// Counts outputs of y [n, R] outside the header's bound around the fp64 product of xb and w.
int64_t count_outside_bound(const std::vector<float>& y, const std::vector<uint16_t>& xb, const std::vector<uint16_t>& w,
                            int64_t n, int64_t R, int64_t K, std::string* first) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < R; ++r) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = bf16_value(xb[i * K + k]) * bf16_value(w[r * K + k]);
        ref += p;
        mag += std::fabs(p);
      }
      const double bound = ((double)K + 2) * std::ldexp(1.0, -24) * mag;  // ops/bf16_gemm.h
      const double err = std::fabs((double)y[i * R + r] - ref);
      if (!(err <= bound)) {
        if (bad++ == 0 && first)
          *first = "y[" + std::to_string(i) + "][" + std::to_string(r) + "] = " + std::to_string(y[i * R + r]) +
                   ", fp64 " + std::to_string(ref) + ", |error| " + std::to_string(err) + " > bound " +
                   std::to_string(bound);
      }
    }
  return bad;
}

#define SKIP_WITHOUT_BF16()                                                               \
  if (!ops::bf16_gemm_available()) GTEST_SKIP() << "this CPU or build has no AVX512_BF16"

TEST(Bf16Gemm, RoundingIsNearestEvenWithDenormalsToZero) {
  std::vector<float> x = randn(1000, 11, 3.0f);
  const float specials[] = {0.0f, -0.0f, 1e-40f, -1e-40f, std::numeric_limits<float>::min(),
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(), 3.4e38f, 1.00390625f /* tie, even below */,
                            1.01171875f /* tie, even above */, -1.00390625f};
  for (int rep = 0; rep < 3; ++rep)  // both in the vector body and in the scalar tail
    for (float s : specials) x.insert(x.begin() + 7 + 40 * rep, s);
  std::vector<uint16_t> out(x.size());
  ops::round_to_bf16(out.data(), x.data(), (int64_t)x.size());
  int64_t bad = 0;
  for (size_t i = 0; i < x.size(); ++i)
    if (out[i] != expected_bf16(x[i]) && bad++ < 5)
      ADD_FAILURE() << "x[" << i << "] = " << x[i] << " (0x" << std::hex << bits(x[i]) << ") -> 0x" << out[i]
                    << ", expected 0x" << expected_bf16(x[i]);
  EXPECT_EQ(bad, 0);
}

TEST(Bf16Gemm, MatchesFp64OfTheRoundedOperandsForEveryTileEdge) {
  SKIP_WITHOUT_BF16();
  // n, R and K around the tile sizes of the AVX512_BF16 and AMX kernels (16 rows, 32 of K).
  const int64_t shapes[][3] = {{1, 1, 1},   {3, 5, 31},   {4, 4, 32},   {5, 7, 33},    {9, 13, 77},
                               {13, 16, 64}, {66, 9, 100}, {17, 130, 1408}, {70, 6, 2048}};
  uint64_t seed = 100;
  for (const auto& s : shapes) {
    const int64_t n = s[0], R = s[1], K = s[2];
    const std::vector<uint16_t> w = to_bf16(randn(R * K, ++seed, 0.05f));
    const std::vector<float> x = randn(n * K, ++seed, 1.0f);
    std::vector<uint16_t> xb((size_t)(n * K));
    ops::round_to_bf16(xb.data(), x.data(), n * K);
    for (bool inside : {false, true}) {
      std::vector<float> y((size_t)(n * R), std::nanf(""));
      if (inside) {
#pragma omp parallel num_threads(2)
        {
#pragma omp single
          ops::bf16_gemm(y.data(), R, xb.data(), w.data(), n, R, K);
        }
      } else {
        ops::bf16_gemm(y.data(), R, xb.data(), w.data(), n, R, K);
      }
      std::string first;
      EXPECT_EQ(count_outside_bound(y, xb, w, n, R, K, &first), 0)
          << "n " << n << " R " << R << " K " << K << (inside ? " inside" : " outside") << " a parallel region: " << first;
    }
  }
}

TEST(Bf16Gemm, WritesOnlyItsColumnsOfAStridedOutput) {
  SKIP_WITHOUT_BF16();
  const int64_t n = 10, R = 6, K = 40, ldy = 9;
  const std::vector<uint16_t> w = to_bf16(randn(R * K, 5, 0.1f)), xb = to_bf16(randn(n * K, 6, 1.0f));
  std::vector<float> y((size_t)(n * ldy), -7.0f);
  ops::bf16_gemm(y.data(), ldy, xb.data(), w.data(), n, R, K);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = R; c < ldy; ++c) EXPECT_EQ(y[i * ldy + c], -7.0f) << "row " << i << " column " << c;
}

// qlinear_forward with compute BF16: prefill (n > kGemvMaxRows) is the bf16 product of the rounded
// activations; decode (n <= kGemvMaxRows) is bit-identical to compute F32; other storages ignore it.
TEST(Bf16Gemm, QlinearUsesItForPrefillOnly) {
  SKIP_WITHOUT_BF16();
  const int64_t R = 37, K = 96;
  const std::vector<uint16_t> w = to_bf16(randn(R * K, 21, 0.05f));
  WeightMat f32c{WType::BF16, R, K, w.data(), nullptr};
  WeightMat bf16c = f32c;
  bf16c.compute = Compute::BF16;
  for (int64_t n : {int64_t{1}, ops::kGemvMaxRows, ops::kGemvMaxRows + 1, int64_t{40}}) {
    const std::vector<float> x = randn(n * K, 30 + n, 1.0f);
    std::vector<float> ya((size_t)(n * R)), yb((size_t)(n * R));
    ops::qlinear_forward(ya.data(), x.data(), f32c, n);
    ops::qlinear_forward(yb.data(), x.data(), bf16c, n);
    if (n <= ops::kGemvMaxRows) {
      EXPECT_EQ(std::memcmp(ya.data(), yb.data(), ya.size() * 4), 0) << "decode (n " << n << ") changed";
    } else {
      std::vector<uint16_t> xb(x.size());
      for (size_t i = 0; i < x.size(); ++i) xb[i] = expected_bf16(x[i]);
      std::string first;
      EXPECT_EQ(count_outside_bound(yb, xb, w, n, R, K, &first), 0) << "n " << n << ": " << first;
      // And it is not the f32 product: the rounding of x is visible (guards against a silent fallback).
      double diff = 0;
      for (size_t i = 0; i < ya.size(); ++i) diff = std::max(diff, (double)std::fabs(ya[i] - yb[i]));
      EXPECT_GT(diff, 0.0) << "n " << n << ": compute bf16 gave exactly the f32 result";
    }
  }
}

TEST(Bf16Gemm, ComputeChoiceFollowsTheFlagAndTheStorage) {
  const Compute hw = ops::bf16_gemm_available() ? Compute::BF16 : Compute::F32;
  // auto: bf16 for bf16 weights; for q8 / q4 mixed where both kernels run and bf16 has AMX, int8
  // where VNNI runs otherwise, else bf16 or f32.
  const bool vnni = ops::int8_gemm_available(), bf16 = ops::bf16_gemm_available();
  const Compute quantized = vnni && bf16 && ops::bf16_gemm_on_amx() ? Compute::MIXED : vnni ? Compute::INT8 : hw;
  if (vnni && bf16) EXPECT_EQ(choose_compute("mixed", WType::Q8).compute, Compute::MIXED) << "asked for by name";
  EXPECT_EQ(choose_compute("auto", WType::BF16).compute, hw);
  EXPECT_EQ(choose_compute("auto", WType::Q8).compute, quantized);
  EXPECT_EQ(choose_compute("auto", WType::Q4).compute, quantized);
  for (WType t : {WType::BF16, WType::Q8, WType::Q4}) {
    EXPECT_EQ(choose_compute("bf16", t).compute, hw) << ops::wtype_name(t);
    EXPECT_EQ(choose_compute("f32", t).compute, Compute::F32) << ops::wtype_name(t);
  }
  EXPECT_EQ(choose_compute("auto", WType::F32).compute, Compute::F32);
  EXPECT_EQ(choose_compute("f32", WType::F32).compute, Compute::F32);
  try {
    choose_compute("bf16", WType::F32);
    ADD_FAILURE() << "--compute bf16 accepted with f32 weights";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--compute bf16 needs bf16, q8 or q4 weights"), std::string::npos) << e.what();
  }
  EXPECT_THROW(choose_compute("int4", WType::BF16), UsageError);
}

// Quantized weights with compute BF16: each tile decoded (q * d, exact in fp32) and rounded to bf16
// once, then the same kernel: checked against fp64 of bf16(x) . bf16(decoded w) computed here from
// the documented format, with the kernel's bound; dequantize_rows_bf16 against the same rounding.
TEST(Bf16Gemm, QuantizedWeightsAreDecodedThenRoundedToBf16) {
  SKIP_WITHOUT_BF16();
  for (WType t : {WType::Q8, WType::Q4, WType::BF16})
    for (int64_t K : {int64_t{64}, int64_t{77}, int64_t{160}}) {
      const int64_t R = 150, n = 11, nb = (K + 31) / 32;  // R > one 128-row tile
      const std::vector<float> wf = randn(R * K, 40 + K, 0.05f);
      std::vector<uint8_t> data((size_t)(R * WeightMat::row_bytes_of(t, K)));
      std::vector<uint16_t> scales((size_t)(R * nb));
      ops::quantize_rows(t, wf.data(), R, K, data.data(), scales.data());
      WeightMat w{t, R, K, data.data(), WeightMat::has_scales(t) ? scales.data() : nullptr};
      // Decode from the format (ops/qlinear.h), independently of the code under test.
      std::vector<uint16_t> wb((size_t)(R * K));
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < K; ++c) {
          double v;
          if (t == WType::BF16) {
            uint16_t h;
            std::memcpy(&h, data.data() + 2 * (r * K + c), 2);
            v = bf16_value(h);
          } else if (t == WType::Q8) {
            v = (double)(int8_t)data[r * K + c] * bf16_value(scales[r * nb + c / 32]);
          } else {
            const uint8_t byte = data[r * nb * 16 + (c / 32) * 16 + (c % 32) % 16];
            v = (double)(((c % 32) < 16 ? byte & 15 : byte >> 4) - 8) * bf16_value(scales[r * nb + c / 32]);
          }
          wb[r * K + c] = expected_bf16((float)v);  // (float)v is exact: 8 x 8 significant bits
        }
      std::vector<uint16_t> got((size_t)(R * K));
      ops::dequantize_rows_bf16(got.data(), w, 0, R);
      int64_t diff = 0;
      for (size_t i = 0; i < got.size(); ++i) diff += got[i] != wb[i];
      EXPECT_EQ(diff, 0) << ops::wtype_name(t) << " K " << K << ": dequantize_rows_bf16 differs in " << diff << " values";
      w.compute = Compute::BF16;
      const std::vector<float> x = randn(n * K, 50 + K, 1.0f);
      std::vector<uint16_t> xb(x.size());
      for (size_t i = 0; i < x.size(); ++i) xb[i] = expected_bf16(x[i]);
      std::vector<float> y((size_t)(n * R), std::nanf(""));
      ops::qlinear_forward(y.data(), x.data(), w, n);
      std::string first;
      EXPECT_EQ(count_outside_bound(y, xb, wb, n, R, K, &first), 0) << ops::wtype_name(t) << " K " << K << ": " << first;
    }
}

}  // namespace
