// MoE ops (swiglu, router, dispatch/experts/combine, capacity, balance losses, hash routing) against
// the PyTorch oracle tests/oracle/moe_ops.py, which draws fresh random inputs from the test seed,
// rounds them to fp32 and computes forward and backward in float64 with autograd.
//
// Tolerances. u = 2^-24 ~ 6e-8 is the fp32 unit roundoff; the oracle is fp64 (its own error is
// negligible) and its results are rounded once more to fp32 when read (0.5 ulp). Inputs are exactly
// the fp32 values the oracle used, so every difference is our fp32 rounding:
//  * a fixed chain of c elementwise roundings without cancellation has relative error <= c*u;
//  * a length-m dot product/sum has absolute error <= m*u*sum|terms| (and typically sqrt(m)*u*...).
// Each check below states its c or m and the magnitude of sum|terms|, and sets atol/rtol at or below
// that bound. Gradients that the op ADDS into are checked on buffers pre-filled with `prefill()`
// values (exact in fp32, size ~1), against prefill + oracle; that one extra add costs <= 1 ulp of the
// result, covered by the same tolerances.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "ops/balance_loss.h"
#include "ops/dispatch.h"
#include "ops/experts.h"
#include "ops/router.h"
#include "ops/swiglu.h"
#include "test_util.h"

using namespace dsmoe;
using namespace dsmoe::ops;

namespace {

constexpr double kU = 5.9604644775390625e-8;  // 2^-24

std::unique_ptr<SafeTensorsFile> oracle(const std::string& op) {
  std::string path = test::tmp_path("moe_ops_" + op + ".safetensors");
  if (!test::run_oracle("moe_ops.py", {op, std::to_string(test::test_seed()), path})) return nullptr;
  return std::make_unique<SafeTensorsFile>(path);
}

const std::vector<int64_t>& shape(const SafeTensorsFile& f, const std::string& name) { return f.get(name).shape; }

// Values exactly representable in fp32, of size ~1, different per element.
std::vector<float> prefill(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = 0.125f * (float)((int)((i * 37 + 11) % 17) - 8);
  return v;
}

// want = pre + grad (the accumulate contract), rounded once to fp32.
std::vector<float> plus(const std::vector<float>& pre, const std::vector<float>& grad) {
  std::vector<float> w(pre.size());
  for (size_t i = 0; i < w.size(); ++i) w[i] = (float)((double)pre[i] + (double)grad[i]);
  return w;
}

// Runs the same routing chain as MoEGate: softmax -> top-k -> gate_norm.
struct Route {
  std::vector<float> probs, vals, gates;
  std::vector<int32_t> ids;
};
Route route(const std::vector<float>& logits, int64_t n, int64_t E, int64_t k, bool norm) {
  Route r;
  r.probs.resize(n * E);
  r.vals.resize(n * k);
  r.gates.resize(n * k);
  r.ids.resize(n * k);
  softmax_forward(r.probs.data(), logits.data(), n, E);
  topk_forward(r.ids.data(), r.vals.data(), r.probs.data(), n, E, k);
  gate_norm_forward(r.gates.data(), r.vals.data(), n, k, norm);
  return r;
}

// dispatch -> experts -> combine, then the backward of all three.
struct MoeRun {
  DispatchPlan plan;
  std::vector<float> y, dx, dgates, dw_gu, dw_down;
};
MoeRun run_moe(const std::vector<float>& x, const std::vector<int32_t>& ids, const std::vector<float>& gates,
               const uint8_t* keep, const std::vector<float>& w_gu, const std::vector<float>& w_down,
               const std::vector<float>& dy, int64_t n, int64_t k, int64_t E, int64_t H, int64_t I,
               std::vector<float> dx_pre, std::vector<float> dgates_pre, std::vector<float> dw_gu_pre,
               std::vector<float> dw_down_pre) {
  MoeRun m;
  build_dispatch(m.plan, ids.data(), keep, n, k, E);
  const int64_t rows = m.plan.rows();
  ExpertsShape s{E, H, I};
  std::vector<float> xs(rows * H), ys(rows * H), gu(rows * 2 * I), act(rows * I);
  dispatch_gather(xs.data(), x.data(), m.plan, H);
  experts_forward(ys.data(), gu.data(), act.data(), xs.data(), w_gu.data(), w_down.data(), m.plan.offsets.data(), s);
  m.y.assign(n * H, NAN);  // combine overwrites
  combine_forward(m.y.data(), ys.data(), gates.data(), m.plan, H);

  m.dx = std::move(dx_pre);
  m.dgates = std::move(dgates_pre);
  m.dw_gu = std::move(dw_gu_pre);
  m.dw_down = std::move(dw_down_pre);
  std::vector<float> dys(rows * H, 0.0f), dxs(rows * H, 0.0f), scratch(rows * 3 * I);
  combine_backward(dys.data(), m.dgates.data(), dy.data(), ys.data(), gates.data(), m.plan, H);
  experts_backward(dxs.data(), m.dw_gu.data(), m.dw_down.data(), dys.data(), xs.data(), gu.data(), act.data(),
                   w_gu.data(), w_down.data(), m.plan.offsets.data(), s, scratch.data());
  dispatch_gather_backward(m.dx.data(), dxs.data(), m.plan, H);
  return m;
}

}  // namespace

TEST(MoeOps, SwiGLU) {
  auto f = oracle("swiglu");
  ASSERT_TRUE(f);
  auto gu = f->read_f32("gu"), dh = f->read_f32("dh"), h_want = f->read_f32("h"), dgu_want = f->read_f32("dgu");
  const int64_t n = shape(*f, "gu")[0], I = shape(*f, "gu")[1] / 2;
  std::vector<float> h(n * I, NAN);
  swiglu_forward(h.data(), gu.data(), n, I);
  // h = g * (1 / (1 + exp(-g))) * u: expf (<= 2 ulp) and 4 roundings, no cancellation (the error of
  // exp(-g) enters sigmoid with factor <= 1): relative error <= ~7u ~ 4e-7 -> rtol 1e-6.
  EXPECT_TRUE(test::all_close("swiglu h", h, h_want, {n, I}, 1e-30, 1e-6));

  std::vector<float> dgu(n * 2 * I, NAN);  // overwritten
  swiglu_backward(dgu.data(), dh.data(), gu.data(), n, I);
  // du = dh * silu(g): as above, relative ~7u; dg = dh*u*s*(1 + g(1-s)) cancels where 1 + g(1-s) ~ 0
  // (g ~ -1.28) and 1-s loses relative precision for large g: absolute error <= |dh u s| * u *
  // (2 + 2|g|) with |g| <= ~8 and |dh u s| <= ~20 here -> <= 2e-5 worst case; atol 1e-5 (a relative
  // bound of 16u = 1e-6 holds elsewhere).
  EXPECT_TRUE(test::all_close("swiglu dgu", dgu, dgu_want, {n, 2 * I}, 1e-5, 1e-6));
}

TEST(MoeOps, TopKMatchesTorch) {
  auto f = oracle("topk");
  ASSERT_TRUE(f);
  auto probs = f->read_f32("probs");
  auto ids_want = f->read_i32("ids");
  auto vals_want = f->read_f32("vals");
  const int64_t n = shape(*f, "probs")[0], E = shape(*f, "probs")[1], k = shape(*f, "ids")[1];
  std::vector<int32_t> ids(n * k, -1);
  std::vector<float> vals(n * k, NAN);
  topk_forward(ids.data(), vals.data(), probs.data(), n, E, k);
  // No ties in the inputs: selection and order must match torch.topk exactly, and the values are
  // copies of the fp32 inputs (exact).
  EXPECT_EQ(ids, ids_want);
  EXPECT_EQ(vals, vals_want);
}

// torch.topk does not specify the order of ties; lower expert id first is dsmoe's own deterministic
// rule (ops/router.h), not the official code's.
TEST(MoeOps, TopKTiesLowerIdFirst) {
  const int64_t E = 6, k = 4, n = 5;
  const std::vector<float> probs = {
      0.1f, 0.3f, 0.3f, 0.2f, 0.3f, 0.0f,  // three-way tie at the top
      0.2f, 0.2f, 0.2f, 0.2f, 0.2f, 0.2f,  // all equal
      0.5f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f,  // tie across the k boundary
      0.2f, 0.2f, 0.2f, 0.3f, 0.3f, 0.3f,  // higher ids larger
      0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 1.0f,
  };
  const std::vector<int32_t> want = {1, 2, 4, 3, 0, 1, 2, 3, 0, 1, 2, 3, 3, 4, 5, 0, 5, 0, 1, 2};
  std::vector<int32_t> ids(n * k);
  std::vector<float> vals(n * k);
  topk_forward(ids.data(), vals.data(), probs.data(), n, E, k);
  EXPECT_EQ(ids, want);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) EXPECT_EQ(vals[t * k + j], probs[t * E + ids[t * k + j]]);

  // Backward scatters to the ORIGINAL ids and adds.
  std::vector<float> dvals(n * k), dprobs(n * E, 1.0f);
  for (int64_t i = 0; i < n * k; ++i) dvals[i] = (float)(i + 1);
  topk_backward(dprobs.data(), dvals.data(), ids.data(), n, E, k);
  std::vector<float> dwant(n * E, 1.0f);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) dwant[t * E + want[t * k + j]] += (float)(t * k + j + 1);
  EXPECT_EQ(dprobs, dwant);
}

// skip > 0 (the paper's "disable the top routed experts"): ranks [skip, skip + k) of the same order,
// i.e. the plain top-k after masking the `skip` largest probs to -inf (written out per row here).
TEST(MoeOps, TopKSkipExcludesTheTopRanks) {
  const int64_t E = 6, n = 5;
  const std::vector<float> probs = {
      0.1f, 0.3f, 0.3f, 0.2f, 0.3f, 0.0f,  // three-way tie at the top
      0.2f, 0.2f, 0.2f, 0.2f, 0.2f, 0.2f,  // all equal
      0.5f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f,  // tie right after the skipped one
      0.2f, 0.2f, 0.2f, 0.3f, 0.3f, 0.3f,  // higher ids larger
      0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 1.0f,
  };
  // Descending order with lower-id tie-break, per row: {1,2,4,3,0,5} {0..5} {0,1,2,3,4,5} {3,4,5,0,1,2} {5,0,1,2,3,4}.
  struct Case {
    int64_t skip, k;
    std::vector<int32_t> want;
  };
  for (const Case& c : {Case{1, 2, {2, 4, 1, 2, 1, 2, 4, 5, 0, 1}}, Case{2, 3, {4, 3, 0, 2, 3, 4, 2, 3, 4, 5, 0, 1, 1, 2, 3}},
                        Case{4, 2, {0, 5, 4, 5, 4, 5, 1, 2, 3, 4}}, Case{0, 1, {1, 0, 0, 3, 5}}}) {
    std::vector<int32_t> ids(n * c.k);
    std::vector<float> vals(n * c.k);
    topk_forward(ids.data(), vals.data(), probs.data(), n, E, c.k, c.skip);
    EXPECT_EQ(ids, c.want) << "skip " << c.skip << " k " << c.k;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < c.k; ++j) EXPECT_EQ(vals[t * c.k + j], probs[t * E + ids[t * c.k + j]]);
  }
  std::vector<int32_t> ids(n * 2);
  std::vector<float> vals(n * 2);
  EXPECT_THROW(topk_forward(ids.data(), vals.data(), probs.data(), n, E, 2, 5), Error) << "skip + k > E";
}

// The selection against a full stable sort, at the paper configs' shapes (63 experts, top-7; skip up
// to the whole row) with many ties (values on a coarse grid).
TEST(MoeOps, TopKMatchesSortWithTies) {
  const int64_t E = 63, n = 200;
  Rng rng(7);
  std::vector<float> probs(n * E);
  for (auto& p : probs) p = (float)rng.below(9) * 0.125f;
  for (const auto& [skip, k] : std::vector<std::pair<int64_t, int64_t>>{{0, 7}, {0, 1}, {3, 7}, {0, E}, {60, 3}}) {
    std::vector<int32_t> ids(n * k);
    std::vector<float> vals(n * k);
    topk_forward(ids.data(), vals.data(), probs.data(), n, E, k, skip);
    for (int64_t t = 0; t < n; ++t) {
      const float* p = probs.data() + t * E;
      std::vector<int32_t> order(E);
      for (int64_t e = 0; e < E; ++e) order[e] = (int32_t)e;
      std::stable_sort(order.begin(), order.end(), [p](int32_t a, int32_t b) { return p[a] > p[b]; });
      for (int64_t j = 0; j < k; ++j) {
        ASSERT_EQ(ids[t * k + j], order[skip + j]) << "row " << t << " rank " << j << " skip " << skip << " k " << k;
        ASSERT_EQ(vals[t * k + j], p[order[skip + j]]);
      }
    }
  }
}

static void router_chain_test(const std::string& op, bool norm) {
  auto f = oracle(op);
  ASSERT_TRUE(f);
  auto logits = f->read_f32("logits");
  const int64_t n = shape(*f, "logits")[0], E = shape(*f, "logits")[1], k = shape(*f, "ids")[1];
  ASSERT_EQ(f->read_i32("norm")[0], (int)norm);
  Route r = route(logits, n, E, k, norm);
  // softmax: expf + max-subtract + sum of E=16 terms + divide: relative error <= (E + 4)u ~ 1.2e-6.
  EXPECT_TRUE(test::all_close("probs", r.probs, f->read_f32("probs"), {n, E}, 1e-30, 2e-6));
  // The oracle's logits keep every pair >= 0.2 apart, so the selection is exact.
  EXPECT_EQ(r.ids, f->read_i32("ids"));
  EXPECT_TRUE(test::all_close("vals", r.vals, f->read_f32("vals"), {n, k}, 1e-30, 2e-6));
  // gates: + sum of k=4 values and one divide: (E + 4 + k + 1)u ~ 1.5e-6.
  EXPECT_TRUE(test::all_close("gates", r.gates, f->read_f32("gates"), {n, k}, 1e-30, 2e-6));

  // Backward of the whole chain: dprobs starts as the extra gradient (a balance loss would put it
  // there), top-k adds into it, softmax adds into a pre-filled dlogits.
  auto dgates = f->read_f32("dgates");
  std::vector<float> dvals(n * k, 0.0f);
  gate_norm_backward(dvals.data(), dgates.data(), r.vals.data(), n, k, norm);
  auto dprobs = f->read_f32("dprobs_extra");
  topk_backward(dprobs.data(), dvals.data(), r.ids.data(), n, E, k);
  auto dlogits = prefill(n * E);
  auto want = plus(dlogits, f->read_f32("dlogits"));
  softmax_backward(dlogits.data(), dprobs.data(), r.probs.data(), n, E);
  // dlogits = p * (dp - sum_e dp_e p_e) + prefill: the 16-term dot has |terms| summing to <= ~3, and
  // dp carries the gate-norm error (relative ~10u of values ~3); the subtraction dp - dot cancels, so
  // bound the absolute error: ~(E + 10) u * 3 * p + 1 ulp of the prefill (~0.5) -> ~5e-6 + 3e-8.
  EXPECT_TRUE(test::all_close("dlogits (+= prefill)", dlogits, want, {n, E}, 5e-6, 1e-6));
}

TEST(MoeOps, RouterChainNormalized) { router_chain_test("router_norm", true); }
TEST(MoeOps, RouterChainRaw) { router_chain_test("router_raw", false); }

TEST(MoeOps, GateNormIgnoresAllZeroRow) {
  // norm_topk_prob divides by sum + 1e-20: an all-zero row gives zero gates, never NaN.
  std::vector<float> vals = {0.f, 0.f}, gates(2, NAN), dvals(2, 0.f), dg = {1.f, 1.f};
  gate_norm_forward(gates.data(), vals.data(), 1, 2, true);
  EXPECT_EQ(gates, (std::vector<float>{0.f, 0.f}));
  gate_norm_backward(dvals.data(), dg.data(), vals.data(), 1, 2, true);
  EXPECT_TRUE(std::isfinite(dvals[0]) && std::isfinite(dvals[1]));
}

// A golden of dsmoe's own rule, not of the paper's: DeepSeekMoE's Table 1 baseline "Hash Layer"
// (Roller et al. 2021; shared/reference/deepseekmoe.md section 4) routes each token top-1 by a
// fixed hash of its id, gate 1, but neither the paper nor the official modeling code fixes the hash.
// dsmoe's (ops/router.h: "stable across versions: checkpoints depend on it") is the 32-bit
// "lowbias32" integer mix (x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b;
// x ^= x >> 16) of the id as uint32, mod E; moe_ops.py and model_ref.py restate it independently.
TEST(MoeOps, HashRoute) {
  auto f = oracle("hash");
  ASSERT_TRUE(f);
  auto toks = f->read_i32("tokens");
  const int64_t n = (int64_t)toks.size();
  for (int64_t E : {1, 7, 63, 64}) {
    auto want = f->read_i32("experts_" + std::to_string(E));
    std::vector<int32_t> ids(n, -1);
    std::vector<float> gates(n, 0.f);
    hash_route(ids.data(), gates.data(), toks.data(), n, E);
    EXPECT_EQ(ids, want) << "E=" << E;
    for (int64_t t = 0; t < n; ++t) {
      EXPECT_EQ(gates[t], 1.0f);
      EXPECT_EQ(hash_expert(toks[t], E), want[t]);
    }
  }
}

TEST(MoeOps, DispatchPlanHandBuilt) {
  // 4 tokens, k=2, 4 experts; slot 5 (token 2, j 1) dropped; expert 3 gets nothing.
  const std::vector<int32_t> ids = {2, 0, 0, 2, 1, 2, 0, 1};
  const std::vector<uint8_t> keep = {1, 1, 1, 1, 1, 0, 1, 1};
  DispatchPlan p;
  build_dispatch(p, ids.data(), keep.data(), 4, 2, 4);
  EXPECT_EQ(p.offsets, (std::vector<int64_t>{0, 3, 5, 7, 7}));
  EXPECT_EQ(p.row_slot, (std::vector<int32_t>{1, 2, 6, 4, 7, 0, 3}));  // stable: token order inside an expert
  EXPECT_EQ(p.row_token, (std::vector<int32_t>{0, 1, 3, 2, 3, 0, 1}));
  EXPECT_EQ(p.slot_row, (std::vector<int32_t>{5, 0, 1, 6, 3, -1, 2, 4}));
  EXPECT_EQ(p.rows(), 7);
  build_dispatch(p, ids.data(), nullptr, 4, 2, 4);  // dropless: every slot has a row
  EXPECT_EQ(p.rows(), 8);
  EXPECT_EQ(p.offsets, (std::vector<int64_t>{0, 3, 5, 8, 8}));
  EXPECT_EQ(p.slot_row[5], 7);
}

// The capacity rule: the official DeepSeekMoE is dropless (reference section 1); dropping is the
// GShard/Switch-era option, and DeepSeek-V2 "drops the lowest-affinity tokens" (same section). The
// order among EQUAL affinities is dsmoe's own rule (ops/dispatch.h: lower token index first, then
// lower slot), chosen to be deterministic; moe_ops.py's capacity_reference restates it by sorting.
TEST(MoeOps, CapacityMask) {
  auto f = oracle("capacity");
  ASSERT_TRUE(f);
  auto ids = f->read_i32("ids");
  auto scores = f->read_f32("scores");
  auto want = f->read_bytes("keep", DType::U8);
  const int64_t n = shape(*f, "ids")[0], k = shape(*f, "ids")[1], cap = f->read_i32("capacity")[0], E = 6;
  std::vector<uint8_t> keep(n * k, 7);
  capacity_keep_mask(keep.data(), ids.data(), scores.data(), n, k, E, cap);
  EXPECT_EQ(keep, want);  // scores are multiples of 1/4: many exact ties, lower token first
  capacity_keep_mask(keep.data(), ids.data(), scores.data(), n, k, E, 0);
  EXPECT_EQ(keep, std::vector<uint8_t>(n * k, 0));
  capacity_keep_mask(keep.data(), ids.data(), scores.data(), n, k, E, n * k);
  EXPECT_EQ(keep, std::vector<uint8_t>(n * k, 1));
}

static void moe_composite_test(const std::string& op, bool with_capacity) {
  auto f = oracle(op);
  ASSERT_TRUE(f);
  auto x = f->read_f32("x"), gates = f->read_f32("gates"), w_gu = f->read_f32("w_gu"), w_down = f->read_f32("w_down"),
       dy = f->read_f32("dy");
  auto ids = f->read_i32("ids");
  const int64_t n = shape(*f, "x")[0], H = shape(*f, "x")[1], k = shape(*f, "ids")[1];
  const int64_t E = shape(*f, "w_gu")[0], I = shape(*f, "w_gu")[1] / 2;
  std::vector<uint8_t> keep;
  if (with_capacity) {
    keep.assign(n * k, 7);
    // The mask itself: our capacity_keep_mask vs the oracle's simple reference (scores = gates).
    capacity_keep_mask(keep.data(), ids.data(), gates.data(), n, k, E, f->read_i32("capacity")[0]);
    EXPECT_EQ(keep, f->read_bytes("keep", DType::U8));
  }
  auto pre_dx = prefill(n * H), pre_dg = prefill(n * k), pre_gu = prefill(E * 2 * I * H), pre_dn = prefill(E * H * I);
  MoeRun m = run_moe(x, ids, gates, with_capacity ? keep.data() : nullptr, w_gu, w_down, dy, n, k, E, H, I, pre_dx,
                     pre_dg, pre_gu, pre_dn);
  // Experts 0, 5, 7 receive no token (the oracle excludes them).
  for (int64_t e : {0, 5, 7}) EXPECT_EQ(m.plan.offsets[e + 1], m.plan.offsets[e]) << "expert " << e;

  // Magnitudes: x, dy ~ N(0,1); weights ~ N(0, 1/fan_in), so gu, act, ys, y are O(1).
  // y: gu is an H=32 dot, ys an I=16 dot, y a k=3 sum; each stage's absolute error is
  // <= m u sum|terms| with sum|terms| <= ~sqrt(m)*|row| ~ 5 for m=32, propagated with O(1) gain:
  // ~ (32*5 + 16*4 + 3*3) u ~ 1.4e-5 worst case -> atol 1e-5, rtol 1e-5 (typical is ~1e-6).
  EXPECT_TRUE(test::all_close("y", m.y, f->read_f32("y"), {n, H}, 1e-5, 1e-5));
  // dx: dys (gate * dy), dact (H=32 dot), swiglu backward, dxs (2I=32 dot), sum over k=3 slots:
  // the same count of roundings as y -> same tolerance.
  EXPECT_TRUE(test::all_close("dx (+= prefill)", m.dx, plus(pre_dx, f->read_f32("dx")), {n, H}, 1e-5, 1e-5));
  // dgates = <dy, ys>: a 32-term dot of O(1) values on top of ys' error: 32*u*~25 + |dy| * 1e-5*sqrt(32)
  // ~ 5e-5 worst case -> atol 3e-5, rtol 1e-5.
  EXPECT_TRUE(test::all_close("dgates (+= prefill)", m.dgates, plus(pre_dg, f->read_f32("dgates")), {n, k}, 3e-5, 1e-5));
  // Weight gradients sum over the expert's rows (<= n*k/5*2 ~ 30 rows) of O(1) products: <= 30 u * 30
  // plus the upstream error of dgu/dys (~1e-5 relative each, summed over 30 rows -> ~3e-5 worst case)
  // -> atol 3e-5, rtol 1e-5.
  EXPECT_TRUE(test::all_close("dw_gu (+= prefill)", m.dw_gu, plus(pre_gu, f->read_f32("dw_gu")), {E, 2 * I, H}, 3e-5,
                              1e-5));
  EXPECT_TRUE(test::all_close("dw_down (+= prefill)", m.dw_down, plus(pre_dn, f->read_f32("dw_down")), {E, H, I},
                              3e-5, 1e-5));
  // Experts without tokens: their weight gradients stay exactly the pre-filled values.
  for (int64_t e : {0, 5, 7}) {
    EXPECT_EQ(0, std::memcmp(m.dw_gu.data() + e * 2 * I * H, pre_gu.data() + e * 2 * I * H, 4 * 2 * I * H));
    EXPECT_EQ(0, std::memcmp(m.dw_down.data() + e * H * I, pre_dn.data() + e * H * I, 4 * H * I));
  }
  if (with_capacity)  // a dropped slot has no influence on y: its gate gradient is exactly zero
    for (int64_t s = 0; s < n * k; ++s)
      if (!keep[s]) EXPECT_EQ(m.dgates[s], pre_dg[s]) << "slot " << s;
}

TEST(MoeOps, DispatchExpertsCombineDropless) { moe_composite_test("moe", false); }
TEST(MoeOps, DispatchExpertsCombineCapacity) { moe_composite_test("moe_cap", true); }

static void balance_test(const std::string& op, bool seq_aux) {
  auto f = oracle(op);
  ASSERT_TRUE(f);
  auto sh = f->read_i32("shape");
  auto sc = f->read_f32("scalars");
  BalanceShape s{sh[0], sh[1], sh[2], sh[3], sh[5] != 0};
  ASSERT_EQ(s.seq_aux, seq_aux);
  const int64_t D = sh[4], G = s.groups(), N = s.n_experts, BT = s.batch * s.seq;
  const float alpha1 = sc[0], alpha2 = sc[1], dloss = sc[2];
  auto probs = f->read_f32("probs");
  auto ids = f->read_i32("ids");

  std::vector<float> fr(G * N, NAN);
  balance_frequencies(fr.data(), ids.data(), s);
  // f = (N / (K T)) * count: one rounding of an exact count ratio -> rtol 2u (plus the read's 0.5 ulp).
  EXPECT_TRUE(test::all_close("f", fr, f->read_f32("f"), {G, N}, 0, 2 * kU));

  // Losses: P is accumulated in double from the fp32 probs (exact inputs), so the only fp32 roundings
  // are f's (2u relative, all terms positive: no cancellation) and the final cast -> rtol 4u.
  float le = expert_balance_forward(fr.data(), probs.data(), s, alpha1);
  float ld = device_balance_forward(fr.data(), probs.data(), s, D, alpha2);
  EXPECT_NEAR(le, f->read_f32("loss_exp")[0], 4 * kU * std::fabs(le));
  EXPECT_NEAR(ld, f->read_f32("loss_dev")[0], 4 * kU * std::fabs(ld));

  // Gradients: constants dloss * alpha * f / (T G), computed in double from fp32 f, one cast, then
  // added to the prefill (values ~1, gradient ~1e-5): the add's rounding is <= 0.5 ulp(~1) = 6e-8
  // absolute -> atol 1.2e-7, rtol 4u for the gradient part.
  auto pre = prefill(BT * N);
  auto de = pre;
  expert_balance_backward(de.data(), fr.data(), s, alpha1, dloss);
  EXPECT_TRUE(test::all_close("dprobs expert (+= prefill)", de, plus(pre, f->read_f32("dprobs_exp")), {BT, N}, 1.2e-7,
                              4 * kU));
  auto dd = pre;
  device_balance_backward(dd.data(), fr.data(), s, D, alpha2, dloss);
  EXPECT_TRUE(test::all_close("dprobs device (+= prefill)", dd, plus(pre, f->read_f32("dprobs_dev")), {BT, N}, 1.2e-7,
                              4 * kU));
  // Without the prefill the gradients are tiny (~1e-5): check them with a relative tolerance too.
  std::vector<float> z(BT * N, 0.0f);
  expert_balance_backward(z.data(), fr.data(), s, alpha1, dloss);
  EXPECT_TRUE(test::all_close("dprobs expert", z, f->read_f32("dprobs_exp"), {BT, N}, 0, 4 * kU));
  std::fill(z.begin(), z.end(), 0.0f);
  device_balance_backward(z.data(), fr.data(), s, D, alpha2, dloss);
  EXPECT_TRUE(test::all_close("dprobs device", z, f->read_f32("dprobs_dev"), {BT, N}, 0, 4 * kU));
}

TEST(MoeOps, BalanceLossSeqAux) { balance_test("balance_seq", true); }
TEST(MoeOps, BalanceLossAllTokens) { balance_test("balance_all", false); }

TEST(MoeOps, BalanceUniformRoutingIsAlpha) {
  // Every expert selected exactly T*K/N times per sequence, every probability 1/N: f_i = 1,
  // P_i = 1/N, so the expert loss is exactly alpha1 and the device loss (f'_d = 1, P'_d = 1/D)
  // exactly alpha2. With N a power of two every intermediate is exact in fp32 and in double.
  for (bool seq_aux : {true, false}) {
    for (int64_t N : {8, 6}) {
      const int64_t B = 2, K = 2, T = N * 2;  // T*K/N = 4 selections per expert per sequence
      BalanceShape s{B, T, N, K, seq_aux};
      std::vector<int32_t> ids(B * T * K);
      for (int64_t t = 0; t < B * T; ++t)
        for (int64_t j = 0; j < K; ++j) ids[t * K + j] = (int32_t)((t * K + j) % N);
      std::vector<float> probs(B * T * N, 1.0f / (float)N), fr(s.groups() * N);
      balance_frequencies(fr.data(), ids.data(), s);
      for (float v : fr) EXPECT_EQ(v, 1.0f);
      const float a1 = 0.001f, a2 = 0.05f;
      float le = expert_balance_forward(fr.data(), probs.data(), s, a1);
      float ld = device_balance_forward(fr.data(), probs.data(), s, 2, a2);
      if (N == 8) {
        EXPECT_EQ(le, a1) << "seq_aux " << seq_aux;
        EXPECT_EQ(ld, a2) << "seq_aux " << seq_aux;
      } else {  // 1/6 is inexact in fp32: N terms of (1/N rounded) in double -> within 1 ulp of alpha
        EXPECT_FLOAT_EQ(le, a1) << "seq_aux " << seq_aux;
        EXPECT_FLOAT_EQ(ld, a2) << "seq_aux " << seq_aux;
      }
    }
  }
}

TEST(MoeOps, DeterministicRepeat) {
  // The same inputs (and thread count) must give bit-identical results, run after run.
  std::mt19937_64 rng(test::test_seed());
  std::normal_distribution<float> nd;
  const int64_t n = 300, E = 8, k = 2, H = 48, I = 24;
  auto randn = [&](int64_t m, float scale) {
    std::vector<float> v(m);
    for (auto& x : v) x = nd(rng) * scale;
    return v;
  };
  auto logits = randn(n * E, 1.0f), x = randn(n * H, 1.0f), dy = randn(n * H, 1.0f);
  auto w_gu = randn(E * 2 * I * H, 1.0f / std::sqrt((float)H)), w_down = randn(E * H * I, 1.0f / std::sqrt((float)I));
  auto run_all = [&]() {
    Route r = route(logits, n, E, k, true);
    std::vector<uint8_t> keep(n * k);
    capacity_keep_mask(keep.data(), r.ids.data(), r.gates.data(), n, k, E, n * k / E);
    MoeRun m = run_moe(x, r.ids, r.gates, keep.data(), w_gu, w_down, dy, n, k, E, H, I, std::vector<float>(n * H),
                       std::vector<float>(n * k), std::vector<float>(E * 2 * I * H), std::vector<float>(E * H * I));
    std::vector<float> dvals(n * k, 0.f), dprobs(n * E, 0.f), dlogits(n * E, 0.f);
    gate_norm_backward(dvals.data(), m.dgates.data(), r.vals.data(), n, k, true);
    BalanceShape s{3, n / 3, E, k, true};
    std::vector<float> fr(s.groups() * E);
    balance_frequencies(fr.data(), r.ids.data(), s);
    float l = expert_balance_forward(fr.data(), r.probs.data(), s, 0.01f) +
              device_balance_forward(fr.data(), r.probs.data(), s, 4, 0.05f);
    expert_balance_backward(dprobs.data(), fr.data(), s, 0.01f, 1.0f);
    device_balance_backward(dprobs.data(), fr.data(), s, 4, 0.05f, 1.0f);
    topk_backward(dprobs.data(), dvals.data(), r.ids.data(), n, E, k);
    softmax_backward(dlogits.data(), dprobs.data(), r.probs.data(), n, E);
    std::vector<float> all = m.y;
    for (auto* v : {&m.dx, &m.dgates, &m.dw_gu, &m.dw_down, &dlogits}) all.insert(all.end(), v->begin(), v->end());
    all.push_back(l);
    return std::make_pair(all, keep);
  };
  auto a = run_all(), b = run_all();
  ASSERT_EQ(a.first.size(), b.first.size());
  EXPECT_EQ(0, std::memcmp(a.first.data(), b.first.data(), a.first.size() * sizeof(float)));
  EXPECT_EQ(a.second, b.second);
}
