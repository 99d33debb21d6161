// training.precision "bf16" (ops/matmul.h): every training product of the linear op (forward y = x W^T
// and both backward products dX = dY W, dW = dY^T X) against an fp64 reference computed here from the
// bf16-rounded inputs (nearest even, by integer arithmetic on the bits, not through the code under
// test); every transpose layout of matmul with padded leading dimensions; weights read from the
// parameters' bf16 copy; the config key, the CLI flag, the refusal without AVX512_BF16, the run
// folder's record and a resume with another precision. The whole model against the PyTorch oracle
// in bf16 is test_model's ModelBf16VsTorch.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <array>
#include <vector>

#include <fmt/format.h>
#include <oneapi/dnnl/dnnl.hpp>

#include "cli_runner.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/config.h"
#include "ops/bf16_gemm.h"
#include "ops/linear.h"
#include "ops/matmul.h"
#include "test_util.h"

using namespace dsmoe;
using ops::MatmulMode;
using ops::Precision;
namespace fs = std::filesystem;

namespace {

constexpr double kU = 1.0 / (1 << 24);  // fp32 unit roundoff, 2^-24

// The documented rounding (ops/bf16_gemm.h round_to_bf16): nearest even, denormals to signed zero.
double bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000) == 0) u &= 0x80000000u;
  const uint32_t hi = u >> 16, lo = u & 0xffff;
  const bool up = lo > 0x8000 || (lo == 0x8000 && (hi & 1));
  const uint32_t r = (hi + (up ? 1 : 0)) << 16;
  float out;
  std::memcpy(&out, &r, 4);
  return out;
}
uint16_t bf16_bits(float f) {
  const float r = (float)bf16_round(f);
  uint32_t u;
  std::memcpy(&u, &r, 4);
  return (uint16_t)(u >> 16);
}

std::vector<float> randn(int64_t n, uint64_t seed, double scale) {
  Rng r(seed);
  std::vector<float> v((size_t)n);
  for (float& x : v) x = (float)(scale * r.normal());
  return v;
}

bool skip_without_bf16() { return !ops::bf16_gemm_available(); }

// Checks C = alpha op(A) op(B) + C0 of bf16-rounded A and B against fp64, each element within
//   (K + 5) u (|alpha| sum_k |a_ik b_kj| + |C0_ij|):
// the products of two bf16 values are exact in fp32; the fp32 sum of K of them is within
// (K + 2) u sum |a b| (ops/bf16_gemm.h, the order oneDNN chooses); scaling by alpha and adding C0
// round once each (u |alpha P| and u |alpha P + C0|); the extra u covers the second-order terms.
// `exact_fails` counts the elements an fp32 product of the unrounded inputs would put outside
// that bound, so the check can be seen to tell bf16 inputs from fp32 ones.
struct Product {
  bool ta, tb;
  int64_t M, N, K, lda, ldb, ldc;
  float alpha;
};
int64_t count_outside(const Product& p, const float* A, const float* B, const float* C0, const float* C,
                      int64_t* exact_outside, std::string* first) {
  int64_t bad = 0;
  if (exact_outside) *exact_outside = 0;
  for (int64_t i = 0; i < p.M; ++i)
    for (int64_t j = 0; j < p.N; ++j) {
      double ref = 0, mag = 0, exact = 0;
      for (int64_t k = 0; k < p.K; ++k) {
        const float a = p.ta ? A[k * p.lda + i] : A[i * p.lda + k];
        const float b = p.tb ? B[j * p.ldb + k] : B[k * p.ldb + j];
        const double q = bf16_round(a) * bf16_round(b);
        ref += q;
        mag += std::fabs(q);
        exact += (double)a * b;
      }
      const double c0 = C0 ? C0[i * p.ldc + j] : 0.0;
      const double want = p.alpha * ref + c0;
      const double bound = ((double)p.K + 5) * kU * (std::fabs(p.alpha) * mag + std::fabs(c0));
      const double err = std::fabs((double)C[i * p.ldc + j] - want);
      if (!(err <= bound) && bad++ == 0 && first)
        *first = fmt::format("C[{}, {}] = {} but the fp64 product of the rounded inputs is {} (|err| {:.3g} > bound {:.3g})",
                             i, j, C[i * p.ldc + j], want, err, bound);
      if (exact_outside) *exact_outside += std::fabs(p.alpha * exact + c0 - want) > bound;
    }
  return bad;
}

// The bf16 copy of a parameter buffer, made here (the Model makes its own in model/model.cpp).
std::vector<uint16_t> bf16_copy(const std::vector<float>& p) {
  std::vector<uint16_t> out(p.size());
  for (size_t i = 0; i < p.size(); ++i) out[i] = bf16_bits(p[i]);
  return out;
}

// Weights read from the bf16 copy (plain rows), or through their packs (oneDNN's blocked layout,
// ops/bf16_gemm.h Bf16WeightPacks): the same arithmetic, so the same bound.
class Bf16Linear : public ::testing::TestWithParam<bool> {};

TEST_P(Bf16Linear, ForwardAndBothBackwardProductsMatchFp64OfRoundedInputs) {
  if (skip_without_bf16()) GTEST_SKIP() << "no AVX512_BF16";
  const bool packed = GetParam();
  // Sizes off every tile edge (oneDNN's 16 / 32 / 64 blocks); the weight sits inside a parameter
  // buffer at an offset, read from its bf16 copy.
  for (const auto& [n, in, out] : {std::array<int64_t, 3>{37, 70, 45}, {3, 130, 67}, {300, 96, 160}}) {
    SCOPED_TRACE(fmt::format("n {} in {} out {}", n, in, out));
    const int64_t off = 13;
    std::vector<float> params = randn(off + out * in + 7, 1, 0.05);
    const std::vector<uint16_t> params_bf16 = bf16_copy(params);
    ops::Bf16WeightPacks packs;
    const MatmulMode mode{Precision::BF16, params.data(), params_bf16.data(), (int64_t)params.size(),
                          packed ? &packs : nullptr};
    const float* w = params.data() + off;
    const std::vector<float> x = randn(n * in, 2, 1.0), dy = randn(n * out, 3, 0.3);
    const std::vector<float> dx0 = randn(n * in, 4, 0.01), dw0 = randn(out * in, 5, 0.01);

    std::vector<float> y(n * out);
    ops::linear_forward(y.data(), x.data(), w, n, in, out, mode);
    std::string first;
    int64_t exact_outside = 0;
    EXPECT_EQ(count_outside({false, true, n, out, in, in, in, out, 1.0f}, x.data(), w, nullptr, y.data(),
                            &exact_outside, &first), 0) << "forward y = x W^T: " << first;
    EXPECT_GT(exact_outside, n * out / 2) << "fp32 inputs should mostly fall outside the bf16 bound";

    const float alpha = 0.375f;  // not a power of two: the scale is applied after the sum
    std::vector<float> dx = dx0, dw = dw0;
    ops::linear_backward(dx.data(), dw.data(), dy.data(), x.data(), w, n, in, out, alpha, mode);
    EXPECT_EQ(count_outside({false, false, n, in, out, out, in, in, alpha}, dy.data(), w, dx0.data(), dx.data(),
                            &exact_outside, &first), 0) << "backward dX += alpha dY W: " << first;
    EXPECT_GT(exact_outside, n * in / 2);
    EXPECT_EQ(count_outside({true, false, out, in, n, out, in, in, alpha}, dy.data(), x.data(), dw0.data(), dw.data(),
                            &exact_outside, &first), 0) << "backward dW += alpha dY^T X: " << first;
    EXPECT_GT(exact_outside, out * in / 2);
    // Both uses of the weight were packed (forward W^T, backward W), once each.
    if (packed) {
      EXPECT_EQ(packs.packs(), 2);
    }
  }
}

// The hand-written packer against oneDNN's own reorder into the same layout, bit for bit (padding
// included: oneDNN zeroes it), for both orientations, padded row strides and every kind of edge
// block (K off 32, N off 64, both, and a single partial block).
TEST(Bf16Training, WeightPackerWritesOneDnnsBA16a64b2aLayout) {
  using dt = dnnl::memory::data_type;
  using dims = dnnl::memory::dims;
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  dnnl::stream stream(engine);
  Rng rng(test::test_seed() ^ 0x9ac);
  for (const auto& [K, N] : {std::array<int64_t, 2>{32, 64}, {1280, 880}, {70, 45}, {3, 130}, {96, 160}, {33, 65},
                             {64, 1}})
    for (const bool trans_b : {false, true}) {
      SCOPED_TRACE(fmt::format("K {} N {} trans_b {}", K, N, trans_b));
      const int64_t rows = trans_b ? N : K, cols = trans_b ? K : N, ldw = cols + 5;
      std::vector<uint16_t> w((size_t)(rows * ldw));
      for (auto& v : w) v = (uint16_t)rng.below(65536);
      const dnnl::memory::desc packed({K, N}, dt::bf16, dnnl::memory::format_tag::BA16a64b2a);
      const size_t count = packed.get_size() / sizeof(uint16_t);
      ASSERT_EQ(count, (size_t)(((K + 31) / 32) * ((N + 63) / 64) * 2048));
      std::vector<uint16_t> want(count, 0xdead), got(count, 0xbeef);
      const dnnl::memory::desc plain({K, N}, dt::bf16, trans_b ? dims{1, ldw} : dims{ldw, 1});
      dnnl::memory src(plain, engine, w.data()), dst(packed, engine, want.data());
      dnnl::reorder(src, dst).execute(stream, src, dst);
      stream.wait();
      ops::pack_bf16_ba16a64b2a(got.data(), w.data(), ldw, trans_b, K, N);
      size_t differ = 0, first = count;
      for (size_t i = 0; i < count; ++i)
        if (got[i] != want[i]) {
          ++differ;
          first = std::min(first, i);
        }
      EXPECT_EQ(differ, 0u) << "first at " << first << ": packer " << (first < count ? got[first] : 0)
                            << ", oneDNN " << (first < count ? want[first] : 0);
    }
}

// After an optimizer step the owner invalidates the packs and they are redone in place (the same
// memory) at the next product: the products must then read the new weights, bit for bit what a new
// set of packs of those weights gives (same kernel, same layout, same order of sums).
TEST(Bf16Training, InvalidatedPacksAreRedoneWithTheNewWeights) {
  if (skip_without_bf16()) GTEST_SKIP() << "no AVX512_BF16";
  const int64_t n = 300, in = 96, out = 160;
  std::vector<float> params = randn(out * in, 11, 0.05);
  std::vector<uint16_t> params_bf16 = bf16_copy(params);
  ops::Bf16WeightPacks packs;
  const MatmulMode mode{Precision::BF16, params.data(), params_bf16.data(), (int64_t)params.size(), &packs};
  const std::vector<float> x = randn(n * in, 12, 1.0), dy = randn(n * out, 13, 0.3);
  std::vector<float> y_old(n * out), dx_old(n * in, 0.0f), dw(out * in, 0.0f);
  ops::linear_forward(y_old.data(), x.data(), params.data(), n, in, out, mode);
  ops::linear_backward(dx_old.data(), dw.data(), dy.data(), x.data(), params.data(), n, in, out, 1.0f, mode);
  ASSERT_EQ(packs.packs(), 2);

  // The step: new values in the same buffers.
  const std::vector<float> updated = randn(out * in, 14, 0.05);
  std::copy(updated.begin(), updated.end(), params.begin());
  const std::vector<uint16_t> updated_bf16 = bf16_copy(params);
  std::copy(updated_bf16.begin(), updated_bf16.end(), params_bf16.begin());
  ASSERT_EQ(mode.params_bf16, params_bf16.data()) << "the copy must stay where the packs point";
  packs.invalidate();
  EXPECT_EQ(packs.packs(), 0) << "every pack is stale after invalidate()";
  std::vector<float> y(n * out), dx(n * in, 0.0f);
  ops::linear_forward(y.data(), x.data(), params.data(), n, in, out, mode);
  ops::linear_backward(dx.data(), dw.data(), dy.data(), x.data(), params.data(), n, in, out, 1.0f, mode);
  EXPECT_EQ(packs.packs(), 2);

  ops::Bf16WeightPacks fresh;
  const MatmulMode fresh_mode{Precision::BF16, params.data(), params_bf16.data(), (int64_t)params.size(), &fresh};
  std::vector<float> y_want(n * out), dx_want(n * in, 0.0f);
  ops::linear_forward(y_want.data(), x.data(), params.data(), n, in, out, fresh_mode);
  ops::linear_backward(dx_want.data(), dw.data(), dy.data(), x.data(), params.data(), n, in, out, 1.0f, fresh_mode);
  int64_t y_diff = 0, dx_diff = 0, y_changed = 0;
  for (int64_t i = 0; i < n * out; ++i) {
    y_diff += y[i] != y_want[i];
    y_changed += y[i] != y_old[i];
  }
  for (int64_t i = 0; i < n * in; ++i) dx_diff += dx[i] != dx_want[i];
  EXPECT_EQ(y_diff, 0) << "forward after invalidate() differs from fresh packs of the new weights";
  EXPECT_EQ(dx_diff, 0) << "backward dX after invalidate() differs from fresh packs of the new weights";
  EXPECT_GT(y_changed, n * out / 2) << "the new weights should change the forward output";
}

INSTANTIATE_TEST_SUITE_P(Weights, Bf16Linear, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Packed" : "Rows"; });

TEST(Bf16Training, WeightsComeFromTheBf16CopyAndOtherOperandsAreRoundedPerCall) {
  if (skip_without_bf16()) GTEST_SKIP() << "no AVX512_BF16";
  const int64_t n = 20, in = 48, out = 24;
  std::vector<float> params = randn(out * in, 6, 0.05);
  const std::vector<float> x = randn(n * in, 7, 1.0);
  const std::vector<float> w_old = params;
  const std::vector<uint16_t> copy = bf16_copy(params);
  const MatmulMode mode{Precision::BF16, params.data(), copy.data(), (int64_t)params.size()};
  // The weights change after their copy was made (as between optimizer steps, before the next
  // forward rounds them again): the product must still use the copy, i.e. the weights as rounded.
  for (float& p : params) p *= 1.5f;
  std::vector<float> y(n * out);
  ops::linear_forward(y.data(), x.data(), params.data(), n, in, out, mode);
  std::string first;
  EXPECT_EQ(count_outside({false, true, n, out, in, in, in, out, 1.0f}, x.data(), w_old.data(), nullptr, y.data(),
                          nullptr, &first), 0) << "the product did not read the bf16 copy: " << first;
  // The same weights outside any parameter buffer are rounded at the call.
  const MatmulMode no_copy{Precision::BF16};
  ops::linear_forward(y.data(), x.data(), params.data(), n, in, out, no_copy);
  EXPECT_EQ(count_outside({false, true, n, out, in, in, in, out, 1.0f}, x.data(), params.data(), nullptr, y.data(),
                          nullptr, &first), 0) << "rounded at the call: " << first;
}

TEST(Bf16Training, EveryTransposeLayoutWithPaddedLeadingDimensions) {
  if (skip_without_bf16()) GTEST_SKIP() << "no AVX512_BF16";
  const int64_t M = 19, N = 33, K = 41, pad = 5;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (float beta : {0.0f, 1.0f}) {
        const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
        const std::vector<float> A = randn((ta ? K : M) * lda, 10 + ta, 1.0), B = randn((tb ? N : K) * ldb, 20 + tb, 1.0);
        const std::vector<float> C0 = randn(M * ldc, 30, 0.5);
        std::vector<float> C = C0;
        ops::matmul(MatmulMode{Precision::BF16}, ta, tb, M, N, K, -0.625f, A.data(), lda, B.data(), ldb, beta,
                    C.data(), ldc);
        std::string first;
        EXPECT_EQ(count_outside({(bool)ta, (bool)tb, M, N, K, lda, ldb, ldc, -0.625f}, A.data(), B.data(),
                                beta != 0 ? C0.data() : nullptr, C.data(), nullptr, &first), 0)
            << "trans_a " << ta << " trans_b " << tb << " beta " << beta << ": " << first;
        for (int64_t i = 0; i < M; ++i)  // the padding of C is not touched
          for (int64_t j = N; j < ldc; ++j) ASSERT_EQ(C[i * ldc + j], C0[i * ldc + j]) << "padding of C written";
      }
}

TEST(Bf16Training, PrecisionKeyDefaultsToF32AndIsRangeChecked) {
  nlohmann::json j = test::cli::tiny_config_json();
  EXPECT_EQ(parse_config(j, "c.json").train.precision, Precision::F32);
  j["training"]["precision"] = "bf16";
  const Config c = parse_config(j, "c.json");
  EXPECT_EQ(c.train.precision, Precision::BF16);
  EXPECT_EQ(to_json(c)["training"]["precision"], "bf16");  // what the run folder's config.json records
  for (const nlohmann::json& bad : {nlohmann::json("fp16"), nlohmann::json("BF16"), nlohmann::json(16)}) {
    j["training"]["precision"] = bad;
    try {
      parse_config(j, "c.json");
      ADD_FAILURE() << "precision " << bad.dump() << " accepted";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("'training.precision'"), std::string::npos) << m;
      EXPECT_NE(m.find(bad.is_string() ? "must be \"f32\" or \"bf16\"" : "must be a string"), std::string::npos) << m;
      EXPECT_NE(m.find(bad.is_string() ? bad.get<std::string>() : "16"), std::string::npos) << m;
    }
  }
}

using namespace test::cli;

// Sets an environment variable for the scope (the CLI children inherit it).
struct ScopedEnv {
  std::string name;
  ScopedEnv(const char* n, const char* v) : name(n) { setenv(n, v, 1); }
  ~ScopedEnv() { unsetenv(name.c_str()); }
};

TEST(Bf16TrainingCli, RefusedWithoutAvx512Bf16BeforeTouchingAnything) {
  const std::string dir = scratch("bf16_refused");
  const std::string data = make_dataset(dir + "/data");
  const std::string cfg = write_config(dir, "config.json");
  const std::string cfg_bf16 = write_config(dir, "config_bf16.json", {{"training", {{"precision", "bf16"}}}});
  ScopedEnv no_bf16("DSMOE_NO_AVX512_BF16", "1");
  auto flag = train_args(cfg, data, dir + "/run_flag");
  flag.insert(flag.end(), {"--precision", "bf16"});
  for (const auto& args : {flag, train_args(cfg_bf16, data, dir + "/run_key")}) {
    Proc p = run_cli(args);
    ASSERT_FALSE(p.signaled) << p.describe();
    EXPECT_EQ(p.exit_code, 2) << p.describe();
    EXPECT_TRUE(contains(p.err, "training.precision is \"bf16\"")) << p.describe();
    EXPECT_TRUE(contains(p.err, "AVX512_BF16")) << p.describe();
  }
  EXPECT_FALSE(fs::exists(dir + "/run_flag")) << "a refused run must not create its folder";
  EXPECT_FALSE(fs::exists(dir + "/run_key"));
  // f32 still trains there.
  auto f32 = train_args(cfg_bf16, data, dir + "/run_f32");
  f32.insert(f32.end(), {"--precision", "f32", "--steps", "1"});
  Proc ok = run_cli(f32);
  EXPECT_TRUE(ok.ok()) << ok.describe();
  Proc bad = run_cli({"train", "--config", cfg, "--data", data, "--out", dir + "/x", "--precision", "fp16"});
  EXPECT_EQ(bad.exit_code, 2) << bad.describe();
  EXPECT_TRUE(contains(bad.err, "--precision")) << bad.describe();
}

TEST(Bf16TrainingCli, RecordsPrecisionAndResumesWithAnotherOneSayingSo) {
  if (skip_without_bf16()) GTEST_SKIP() << "no AVX512_BF16";
  const std::string dir = scratch("bf16_run");
  const std::string data = make_dataset(dir + "/data");
  const std::string cfg = write_config(dir, "config.json", {{"training", {{"steps", 4}}}});
  auto a1 = train_args(cfg, data, dir + "/run");
  a1.insert(a1.end(), {"--precision", "bf16", "--stop-after", "2"});
  Proc p1 = run_cli(a1);
  ASSERT_TRUE(p1.ok()) << p1.describe();
  std::ifstream in(dir + "/run/config.json");
  const nlohmann::json saved = nlohmann::json::parse(in);
  EXPECT_EQ(saved["training"]["precision"], "bf16");
  auto a2 = train_args(cfg, data, dir + "/run");
  a2.push_back("--resume");  // the config says f32 (the default)
  Proc p2 = run_cli(a2);
  ASSERT_TRUE(p2.ok()) << p2.describe();
  EXPECT_TRUE(contains(p2.err, "resuming with training.precision \"f32\"")) << p2.describe();
  EXPECT_TRUE(contains(p2.err, "trained with \"bf16\"")) << p2.describe();
  const auto rows = read_metrics(dir + "/run");
  ASSERT_EQ(rows.size(), 4u);
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i]["precision"], i < 2 ? "bf16" : "f32") << "step " << i + 1;
    EXPECT_TRUE(std::isfinite(rows[i]["lm_loss"].get<double>()));
  }
}

}  // namespace
