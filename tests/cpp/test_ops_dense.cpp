// The dense ops (linear, embedding, rmsnorm, rope, attention, cross-entropy, AdamW) against PyTorch
// autograd in float64 (tests/oracle/dense_ops.py), on fresh random inputs every run.
//
// Tolerances. The oracle rounds every input to fp32, so the only differences are dsmoe's fp32
// roundings against an (almost) exact fp64 reference. eps below is FLT_EPSILON = 2^-23, twice the
// unit roundoff. A result that is a sum of K rounded terms of random sign accumulates rounding errors
// like a random walk: |error| ~ eps * sqrt(K) * (the result's scale) (the recursive-summation estimate
// u * K * term = eps/2 * sqrt(K) * (sqrt(K) * term); OpenBLAS's blocked FMA sums do better). We allow
//   rtol = 4 * eps * sqrt(K)   and   atol = rtol * rms(reference)
// (the atol covers elements that cancel to ~0, whose error still scales with the typical magnitude).
// The 4 leaves a margin of about 3 over the largest of thousands of such errors. Element-wise ops use
// the same rule with K = the number of rounded terms per element. Op-specific bounds (softmax
// arguments, AdamW) are derived where they are used. Backward gradients are accumulated into buffers
// pre-filled with kPrefill and checked after subtracting it; that adds one rounding at magnitude
// |kPrefill + g| per accumulation (OpenBLAS adds into C once per K block; at most 2 here) and one for
// the subtraction: 2 * eps * (kPrefill + max|g|) on top.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "io/safetensors.h"
#include "ops/adamw.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "test_util.h"

using namespace dsmoe;

namespace {

constexpr double kEps = 0x1p-23;  // FLT_EPSILON
constexpr float kPrefill = 0.375f;

struct Tol {
  double atol, rtol;
};

double rms(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += (double)x * x;
  return v.empty() ? 0.0 : std::sqrt(s / (double)v.size());
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, (double)std::fabs(x));
  return m;
}

// A sum of K rounded terms (see the top of the file).
Tol reduction_tol(double K, const std::vector<float>& want) {
  const double r = 4.0 * kEps * std::sqrt(K);
  return {r * rms(want), r};
}

// The extra rounding of accumulating into a pre-filled buffer and of subtracting kPrefill again.
Tol with_prefill(Tol t, const std::vector<float>& want) {
  t.atol += 2.0 * kEps * (kPrefill + max_abs(want));
  return t;
}

std::vector<float> prefilled(size_t n) { return std::vector<float>(n, kPrefill); }

std::vector<float> minus_prefill(std::vector<float> v) {
  for (float& x : v) x -= kPrefill;
  return v;
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// One oracle file: tensors "c<k>.<name>", metadata "cases" and "c<k>.<field>".
class Oracle {
 public:
  explicit Oracle(const std::string& op) {
    const std::string path = test::tmp_path("dense_" + op + ".safetensors");
    ok_ = test::run_oracle("dense_ops.py", {op, std::to_string(test::test_seed()), path});
    if (ok_) f_ = std::make_unique<SafeTensorsFile>(path);
  }
  bool ok() const { return ok_; }
  int cases() const { return std::stoi(f_->metadata().at("cases")); }
  std::vector<float> f32(int c, const std::string& name) const { return f_->read_f32(key(c, name)); }
  std::vector<int32_t> i32(int c, const std::string& name) const { return f_->read_i32(key(c, name)); }
  std::vector<int64_t> shape(int c, const std::string& name) const { return f_->get(key(c, name)).shape; }
  int64_t num(int c, const std::string& field) const { return std::stoll(f_->metadata().at(key(c, field))); }
  double real(int c, const std::string& field) const { return std::stod(f_->metadata().at(key(c, field))); }

 private:
  static std::string key(int c, const std::string& name) { return "c" + std::to_string(c) + "." + name; }
  bool ok_ = false;
  std::unique_ptr<SafeTensorsFile> f_;
};

// The shape of an attention oracle case, and how a failure names it.
ops::AttentionShape attention_shape(const Oracle& o, int c) {
  return {o.num(c, "batch"),   o.num(c, "q_len"),    o.num(c, "kv_len"),
          o.num(c, "q_heads"), o.num(c, "kv_heads"), o.num(c, "head_dim")};
}

std::string describe(const ops::AttentionShape& s, int c) {
  return "case " + std::to_string(c) + ": B=" + std::to_string(s.batch) + " q_len=" + std::to_string(s.q_len) +
         " kv_len=" + std::to_string(s.kv_len) + " Hq=" + std::to_string(s.q_heads) + " Hkv=" +
         std::to_string(s.kv_heads) + " D=" + std::to_string(s.head_dim);
}

#define CHECK_CLOSE(what, got, want, shape, tol) \
  EXPECT_TRUE(test::all_close(what, got, want, shape, (tol).atol, (tol).rtol))

}  // namespace

TEST(DenseOps, Linear) {
  Oracle o("linear");
  ASSERT_TRUE(o.ok());
  for (int c = 0; c < o.cases(); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    const int64_t n = o.num(c, "n"), in = o.num(c, "in"), out = o.num(c, "out");
    const auto x = o.f32(c, "x"), w = o.f32(c, "w"), dy = o.f32(c, "dy");
    const auto y_ref = o.f32(c, "y"), dx_ref = o.f32(c, "dx"), dw_ref = o.f32(c, "dw");

    std::vector<float> y((size_t)(n * out), NAN);  // forward must overwrite
    ops::linear_forward(y.data(), x.data(), w.data(), n, in, out);
    CHECK_CLOSE("linear y", y, y_ref, o.shape(c, "y"), reduction_tol((double)in, y_ref));

    auto dx = prefilled(x.size()), dw = prefilled(w.size());
    ops::linear_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), n, in, out);
    CHECK_CLOSE("linear dx (accumulated)", minus_prefill(dx), dx_ref, o.shape(c, "dx"),
                with_prefill(reduction_tol((double)out, dx_ref), dx_ref));
    CHECK_CLOSE("linear dw (accumulated)", minus_prefill(dw), dw_ref, o.shape(c, "dw"),
                with_prefill(reduction_tol((double)n, dw_ref), dw_ref));

    // A null gradient is skipped; the other one is computed exactly as before.
    auto dx2 = prefilled(x.size()), dw2 = prefilled(w.size());
    ops::linear_backward(dx2.data(), nullptr, dy.data(), x.data(), w.data(), n, in, out);
    ops::linear_backward(nullptr, dw2.data(), dy.data(), x.data(), w.data(), n, in, out);
    EXPECT_TRUE(bit_equal(dx2, dx));
    EXPECT_TRUE(bit_equal(dw2, dw));
  }
}

TEST(DenseOps, Embedding) {
  Oracle o("embedding");
  ASSERT_TRUE(o.ok());
  for (int c = 0; c < o.cases(); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    const int64_t n = o.num(c, "n"), dim = o.num(c, "dim");
    const auto table = o.f32(c, "table"), dout = o.f32(c, "dout");
    const auto ids = o.i32(c, "ids");
    const auto out_ref = o.f32(c, "out"), dtable_ref = o.f32(c, "dtable");

    std::vector<float> out((size_t)(n * dim), NAN);
    ops::embedding_forward(out.data(), ids.data(), table.data(), n, dim);
    EXPECT_TRUE(bit_equal(out, out_ref)) << "the lookup is a copy";

    // Each table row is the sum of as many dout rows as its id occurs.
    std::map<int32_t, int> count;
    int most = 1;
    for (int32_t id : ids) most = std::max(most, ++count[id]);
    auto dtable = prefilled(table.size());
    ops::embedding_backward(dtable.data(), dout.data(), ids.data(), n, dim);
    CHECK_CLOSE("embedding dtable (accumulated)", minus_prefill(dtable), dtable_ref, o.shape(c, "dtable"),
                with_prefill(reduction_tol((double)most, dtable_ref), dtable_ref));
    // Rows of ids that never occur are untouched.
    for (int64_t r = 0; r < (int64_t)(table.size() / dim); ++r)
      if (!count.count((int32_t)r))
        for (int64_t j = 0; j < dim; ++j) ASSERT_EQ(dtable[r * dim + j], kPrefill) << "row " << r;
  }
}

TEST(DenseOps, RmsNorm) {
  Oracle o("rmsnorm");
  ASSERT_TRUE(o.ok());
  for (int c = 0; c < o.cases(); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    const int64_t n = o.num(c, "n"), dim = o.num(c, "dim");
    const float eps = (float)o.real(c, "eps");
    const auto x = o.f32(c, "x"), w = o.f32(c, "w"), dy = o.f32(c, "dy");
    const auto y_ref = o.f32(c, "y"), rstd_ref = o.f32(c, "rstd"), dx_ref = o.f32(c, "dx"),
               dw_ref = o.f32(c, "dw");

    std::vector<float> y(x.size(), NAN), rstd((size_t)n, NAN);
    ops::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), n, dim, eps);
    // rstd: the sum of squares (positive terms) is accumulated in double and rounded once: a few
    // roundings; y = w * (x * rstd) adds two products. Element-wise: K = 4 roundings.
    CHECK_CLOSE("rmsnorm rstd", rstd, rstd_ref, o.shape(c, "rstd"), reduction_tol(4, rstd_ref));
    CHECK_CLOSE("rmsnorm y", y, y_ref, o.shape(c, "y"), reduction_tol(4, y_ref));
    std::vector<float> y2(x.size(), NAN);
    ops::rmsnorm_forward(y2.data(), nullptr, x.data(), w.data(), n, dim, eps);
    EXPECT_TRUE(bit_equal(y2, y)) << "rstd = null must not change y";

    auto dx = prefilled(x.size()), dw = prefilled(w.size());
    ops::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), n, dim);
    // dx_j = r w_j dy_j - x_j r^3/dim * sum_k dy_k w_k x_k: the row sum is accumulated in double, so
    // the error is that of a few fp32 products and one subtraction of two terms of dx's magnitude
    // (cancellation covered by the rms-scaled atol): K = 4. dw sums n rows: K = n.
    CHECK_CLOSE("rmsnorm dx (accumulated)", minus_prefill(dx), dx_ref, o.shape(c, "dx"),
                with_prefill(reduction_tol(4, dx_ref), dx_ref));
    CHECK_CLOSE("rmsnorm dw (accumulated)", minus_prefill(dw), dw_ref, o.shape(c, "dw"),
                with_prefill(reduction_tol((double)n, dw_ref), dw_ref));
  }
}

TEST(DenseOps, Rope) {
  Oracle o("rope");
  ASSERT_TRUE(o.ok());
  for (int c = 0; c < o.cases(); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    const int64_t n = o.num(c, "n"), heads = o.num(c, "heads"), D = o.num(c, "head_dim"), half = D / 2;
    const auto t = ops::rope_table(o.num(c, "max_pos"), D, o.real(c, "theta"));
    ASSERT_EQ((int64_t)t.cos.size(), t.max_pos * half);
    const auto x = o.f32(c, "x"), dy = o.f32(c, "dy");
    const auto pos = o.i32(c, "pos");
    const auto y_ref = o.f32(c, "y"), dx_ref = o.f32(c, "dx"), cos_ref = o.f32(c, "cos"),
               sin_ref = o.f32(c, "sin");

    // Tables: cos/sin in double rounded once to fp32 (0.5 ulp each side of the comparison, so 1 ulp
    // = eps relative), plus an absolute 1e-12 for angles pos * inv_freq that may differ in the last
    // double bit (pos < 4096: ~4096 * 2^-52 ~ 1e-12) between std::pow and torch's **.
    std::vector<float> cs((size_t)(n * half)), sn((size_t)(n * half));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < half; ++j) {
        cs[i * half + j] = t.cos[pos[i] * half + j];
        sn[i * half + j] = t.sin[pos[i] * half + j];
      }
    EXPECT_TRUE(test::all_close("rope cos", cs, cos_ref, {n, half}, 1e-12, kEps));
    EXPECT_TRUE(test::all_close("rope sin", sn, sin_ref, {n, half}, 1e-12, kEps));

    // out = a c -/+ b s: two fp32 table values (rounded), two products and a sum: K = 5 roundings,
    // scaled by rms(out) = rms(x) (a rotation) for the cancelling elements.
    auto y = x;
    ops::rope_forward(y.data(), pos.data(), t, n, heads);
    CHECK_CLOSE("rope forward", y, y_ref, o.shape(c, "y"), reduction_tol(5, y_ref));
    // Backward is the inverse rotation, in place (not accumulating, by the header's contract).
    auto dx = dy;
    ops::rope_backward(dx.data(), pos.data(), t, n, heads);
    CHECK_CLOSE("rope backward", dx, dx_ref, o.shape(c, "dx"), reduction_tol(5, dx_ref));
  }
}

TEST(DenseOps, Attention) {
  Oracle o("attention");
  ASSERT_TRUE(o.ok());
  for (int c = 0; c < o.cases(); ++c) {
    const ops::AttentionShape s = attention_shape(o, c);
    SCOPED_TRACE(describe(s, c));
    const auto q = o.f32(c, "q"), k = o.f32(c, "k"), v = o.f32(c, "v"), dout = o.f32(c, "dout");
    const auto out_ref = o.f32(c, "out"), probs_ref = o.f32(c, "probs"), dq_ref = o.f32(c, "dq"),
               dk_ref = o.f32(c, "dk"), dv_ref = o.f32(c, "dv");

    std::vector<float> out(q.size(), NAN), probs(probs_ref.size(), NAN);
    ops::attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
    // Scores are D-term dot products (error ~ eps sqrt(D) each, passed to the probabilities as a
    // relative error through exp), and out sums kv_len weighted values: K = D + kv_len.
    const double K_fwd = (double)(s.head_dim + s.kv_len);
    CHECK_CLOSE("attention probs", probs, probs_ref, o.shape(c, "probs"), reduction_tol(K_fwd, probs_ref));
    CHECK_CLOSE("attention out", out, out_ref, o.shape(c, "out"), reduction_tol(K_fwd, out_ref));
    // Masked probabilities are exact zeros.
    for (size_t i = 0; i < probs.size(); ++i)
      if (probs_ref[i] == 0.0f && probs[i] != 0.0f) {
        ADD_FAILURE() << "masked probability " << i << " is " << probs[i];
        break;
      }
    std::vector<float> out2(q.size(), NAN);
    ops::attention_forward(out2.data(), nullptr, q.data(), k.data(), v.data(), s);
    EXPECT_TRUE(bit_equal(out2, out)) << "probs = null (inference) must give the same output";

    auto dq = prefilled(q.size()), dk = prefilled(k.size()), dv = prefilled(v.size());
    ops::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(), q.data(), k.data(),
                            v.data(), s);
    // dP = dO V^T (D terms), the softmax backward's row dot (kv_len terms), dq sums kv_len keys,
    // dk/dv sum group * q_len query rows: K = D + kv_len + group * q_len bounds every chain.
    const double K_bwd = (double)(s.head_dim + s.kv_len + (s.q_heads / s.kv_heads) * s.q_len);
    CHECK_CLOSE("attention dq (accumulated)", minus_prefill(dq), dq_ref, o.shape(c, "dq"),
                with_prefill(reduction_tol(K_bwd, dq_ref), dq_ref));
    CHECK_CLOSE("attention dk (accumulated)", minus_prefill(dk), dk_ref, o.shape(c, "dk"),
                with_prefill(reduction_tol(K_bwd, dk_ref), dk_ref));
    CHECK_CLOSE("attention dv (accumulated)", minus_prefill(dv), dv_ref, o.shape(c, "dv"),
                with_prefill(reduction_tol(K_bwd, dv_ref), dv_ref));

    // Null gradients are skipped; the others are computed exactly as before.
    auto dq2 = prefilled(q.size()), dv2 = prefilled(v.size());
    ops::attention_backward(dq2.data(), nullptr, nullptr, dout.data(), probs.data(), q.data(), k.data(),
                            v.data(), s);
    ops::attention_backward(nullptr, nullptr, dv2.data(), dout.data(), probs.data(), q.data(), k.data(),
                            v.data(), s);
    EXPECT_TRUE(bit_equal(dq2, dq));
    EXPECT_TRUE(bit_equal(dv2, dv));
  }
}

// The bf16 KV cache of inference: keys and values rounded by dsmoe's f32_to_bf16 (core/bf16.h) must
// be torch's bf16 rounding bit for bit, and attention over the bf16 bits must equal the fp64
// attention of those rounded values. Widening bf16 to fp32 is exact, so what remains is the fp32
// path's arithmetic on the same numbers, and its bound: K = D + kv_len rounded terms per chain (the
// 256-key chunks only regroup the kv_len-term sums of P V and add no term).
TEST(DenseOps, AttentionOverBf16KeysAndValues) {
  Oracle o("attention_bf16_kv");
  ASSERT_TRUE(o.ok());
  for (int c = 0; c < o.cases(); ++c) {
    const ops::AttentionShape s = attention_shape(o, c);
    SCOPED_TRACE(describe(s, c));
    const auto q = o.f32(c, "q"), k = o.f32(c, "k"), v = o.f32(c, "v");
    const auto k_ref = o.f32(c, "k_bf16"), v_ref = o.f32(c, "v_bf16");
    const auto out_ref = o.f32(c, "out"), probs_ref = o.f32(c, "probs");
    std::vector<uint16_t> kh(k.size()), vh(v.size());
    for (size_t i = 0; i < k.size(); ++i) {
      kh[i] = f32_to_bf16(k[i]);
      vh[i] = f32_to_bf16(v[i]);
    }
    for (size_t i = 0; i < k.size(); ++i)
      if (bf16_to_f32(kh[i]) != k_ref[i] || bf16_to_f32(vh[i]) != v_ref[i]) {
        ADD_FAILURE() << "element " << i << ": dsmoe rounds k " << k[i] << " -> " << bf16_to_f32(kh[i]) << ", v "
                      << v[i] << " -> " << bf16_to_f32(vh[i]) << "; torch gives " << k_ref[i] << ", " << v_ref[i];
        break;
      }
    std::vector<float> out(q.size(), NAN), probs(probs_ref.size(), NAN);
    ops::attention_forward(out.data(), probs.data(), q.data(), kh.data(), vh.data(), s);
    const double K_fwd = (double)(s.head_dim + s.kv_len);
    CHECK_CLOSE("attention probs (bf16 K/V)", probs, probs_ref, o.shape(c, "probs"), reduction_tol(K_fwd, probs_ref));
    CHECK_CLOSE("attention out (bf16 K/V)", out, out_ref, o.shape(c, "out"), reduction_tol(K_fwd, out_ref));
    std::vector<float> out2(q.size(), NAN);
    ops::attention_forward(out2.data(), nullptr, q.data(), kh.data(), vh.data(), s);
    EXPECT_TRUE(bit_equal(out2, out)) << "probs = null (inference) must give the same output";
  }
}

TEST(DenseOps, CrossEntropy) {
  Oracle o("cross_entropy");
  ASSERT_TRUE(o.ok());
  for (int c = 0; c < o.cases(); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    const int64_t n = o.num(c, "n"), V = o.num(c, "V");
    const float scale = (float)o.real(c, "scale");
    const auto logits = o.f32(c, "logits");
    const auto targets = o.i32(c, "targets");
    const auto losses_ref = o.f32(c, "losses"), dlogits_ref = o.f32(c, "dlogits");
    int ignored = 0;
    for (int32_t t : targets) ignored += t < 0;
    ASSERT_GT(ignored, 0) << "the oracle must exercise ignored targets";

    std::vector<float> losses((size_t)n, NAN);
    ops::cross_entropy_forward(losses.data(), logits.data(), targets.data(), n, V);
    // The only fp32 rounding that is not relative to the loss itself: x_j - max, rounded with error
    // <= eps/2 |x_j - max| <= eps max|x|, passed through exp into log-sum-exp as a weighted average
    // (the sums are in double). So |error| <= eps max|x| + eps/2 |loss|; we allow 4x.
    const double lmax = max_abs(logits);
    EXPECT_TRUE(test::all_close("cross-entropy losses", losses, losses_ref, {n}, 4 * kEps * lmax, 4 * kEps));
    for (int64_t i = 0; i < n; ++i)
      if (targets[i] < 0) EXPECT_EQ(losses[i], 0.0f) << "ignored row " << i;

    auto dl = prefilled(logits.size());
    ops::cross_entropy_backward(dl.data(), logits.data(), targets.data(), scale, n, V);
    // p_j = exp(x_j - m) / s carries relative error eps (|x_j - m|/2 + 2); since p_j |x_j - m| <=
    // max_t t e^-t = 1/e, the absolute error is <= eps (0.2 + 2 p_j) <= 2.2 eps, times scale (also for
    // the target's p - 1, which may cancel). We allow atol = 4 eps scale, rtol = 4 eps.
    CHECK_CLOSE("cross-entropy dlogits (accumulated)", minus_prefill(dl), dlogits_ref, o.shape(c, "dlogits"),
                with_prefill((Tol{4 * kEps * scale, 4 * kEps}), dlogits_ref));
    for (int64_t i = 0; i < n; ++i)
      if (targets[i] < 0)
        for (int64_t j = 0; j < V; ++j) ASSERT_EQ(dl[i * V + j], kPrefill) << "ignored row " << i << " got a gradient";

    // The fused training pass: the same losses (the same row arithmetic, so bit for bit), and the
    // unscaled gradient, overwritten (NaN prefill) with zeros on ignored rows. Times scale (one more
    // rounding, eps/2 relative) it must meet the oracle's dlogits with the tolerance above.
    std::vector<float> losses2((size_t)n, NAN), d2(logits.size(), NAN);
    ops::cross_entropy_forward_backward(losses2.data(), d2.data(), logits.data(), targets.data(), n, V);
    EXPECT_TRUE(bit_equal(losses2, losses)) << "fused losses differ from cross_entropy_forward";
    std::vector<float> d2s(d2.size());
    for (size_t j = 0; j < d2.size(); ++j) d2s[j] = d2[j] * scale;
    CHECK_CLOSE("cross-entropy fused dlogits x scale", d2s, dlogits_ref, o.shape(c, "dlogits"),
                (Tol{4 * kEps * scale, 4 * kEps}));
    for (int64_t i = 0; i < n; ++i)
      if (targets[i] < 0)
        for (int64_t j = 0; j < V; ++j) ASSERT_EQ(d2[i * V + j], 0.0f) << "ignored row " << i << " got a gradient";
  }
}

TEST(DenseOps, AdamW) {
  Oracle o("adamw");
  ASSERT_TRUE(o.ok());
  const int64_t n = o.num(0, "n"), steps = o.num(0, "steps");
  ops::AdamWHyper h;
  h.lr = (float)o.real(0, "lr");
  h.beta1 = (float)o.real(0, "beta1");
  h.beta2 = (float)o.real(0, "beta2");
  h.eps = (float)o.real(0, "eps");
  h.weight_decay = (float)o.real(0, "weight_decay");
  auto p = o.f32(0, "p0");
  const auto grads = o.f32(0, "grads");
  ASSERT_EQ((int64_t)grads.size(), steps * n);
  std::vector<float> m((size_t)n, 0.0f), v((size_t)n, 0.0f);
  for (int64_t t = 1; t <= steps; ++t) ops::adamw_step(p.data(), grads.data() + (t - 1) * n, m.data(), v.data(), n, h, t);
  const auto p_ref = o.f32(0, "p"), m_ref = o.f32(0, "m"), v_ref = o.f32(0, "v");
  // Per step each of m, v, p takes ~4 fp32 roundings (the (1 - beta) factors rounded to fp32, two
  // products, a sum); over 3 steps about 12 of eps/2 each: rtol = 8 eps. m may cancel between steps
  // (gradients of opposite signs): its absolute error scales with max|g| (atol 8 eps max|g|). v is a
  // sum of positive terms (relative error only). p: errors scale with |p| ~ max|p| and the update
  // lr * m_hat / (sqrt(v_hat) + eps) is well conditioned: atol 8 eps max|p|.
  const double gmax = max_abs(grads);
  EXPECT_TRUE(test::all_close("adamw m", m, m_ref, {n}, 8 * kEps * gmax, 8 * kEps));
  EXPECT_TRUE(test::all_close("adamw v", v, v_ref, {n}, 0.0, 8 * kEps));
  EXPECT_TRUE(test::all_close("adamw p", p, p_ref, {n}, 8 * kEps * max_abs(p_ref), 8 * kEps));
}

// Same inputs twice -> bit-identical results; and the ops that are documented as independent of the
// thread count give the same bits on 1 thread.
TEST(DenseOps, DeterministicRepeat) {
  std::mt19937_64 rng(test::test_seed());
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto randn = [&](size_t n) {
    std::vector<float> a(n);
    for (float& x : a) x = nd(rng);
    return a;
  };
  const ops::AttentionShape s{2, 100, 100, 4, 2, 32};
  const auto q = randn((size_t)(s.batch * s.q_len * s.q_stride()));
  const auto k = randn((size_t)(s.batch * s.kv_len * s.kv_stride())), v = randn(k.size());
  const auto dout = randn(q.size());
  const int64_t n = 150, dim = 200, V = 300;
  const auto x = randn((size_t)(n * dim)), w = randn((size_t)dim), dy = randn(x.size());
  const auto logits = randn((size_t)(n * V));
  std::vector<int32_t> ids((size_t)n), targets((size_t)n);
  for (int64_t i = 0; i < n; ++i) {
    ids[i] = (int32_t)(rng() % 7);  // many repeats
    targets[i] = (i % 5 == 0) ? -1 : (int32_t)(rng() % V);
  }

  auto run_all = [&]() {
    std::vector<std::vector<float>> r;
    std::vector<float> out(q.size()), probs((size_t)(s.batch * s.q_heads * s.q_len * s.kv_len));
    ops::attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
    std::vector<float> dq(q.size(), 0.f), dk(k.size(), 0.f), dv(v.size(), 0.f);
    ops::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(), q.data(), k.data(),
                            v.data(), s);
    std::vector<float> y(x.size()), rstd((size_t)n), dx(x.size(), 0.f), dw((size_t)dim, 0.f);
    ops::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), n, dim, 1e-6f);
    ops::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), n, dim);
    std::vector<float> dtable((size_t)(7 * dim), 0.f);
    ops::embedding_backward(dtable.data(), dy.data(), ids.data(), n, dim);
    std::vector<float> losses((size_t)n), dl(logits.size(), 0.f);
    ops::cross_entropy_forward(losses.data(), logits.data(), targets.data(), n, V);
    ops::cross_entropy_backward(dl.data(), logits.data(), targets.data(), 0.01f, n, V);
    for (auto* t : {&out, &probs, &dq, &dk, &dv, &y, &rstd, &dx, &dw, &dtable, &losses, &dl}) r.push_back(*t);
    return r;
  };
  const char* names[] = {"attn out", "probs", "dq", "dk", "dv", "rms y", "rstd", "rms dx", "rms dw",
                         "dtable", "losses", "dlogits"};
  const auto a = run_all(), b = run_all();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(bit_equal(a[i], b[i])) << names[i] << " differs on repeat";

  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = run_all();
  omp_set_num_threads(threads);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(bit_equal(a[i], one[i])) << names[i] << " differs between " << threads << " threads and 1";
}
