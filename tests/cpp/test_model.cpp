// The whole model against the independent PyTorch implementation of the official semantics
// (tests/oracle/model_ref.py), llm.c style: for a fixed batch and weights written by PyTorch, the
// logits, the LM and aux losses and EVERY parameter gradient must match; then a 10-step AdamW
// trajectory (with gradient accumulation, clipping and the LR schedule) and the final parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/model.h"
#include "test_util.h"
#include "train/optimizer.h"
#include "train/trainer.h"

using namespace dsmoe;
namespace fs = std::filesystem;

namespace {

// Tolerances. dsmoe computes in fp32, the oracle in fp64 from the same fp32 weights, so the
// difference is dsmoe's own rounding: each value passes through ~10 ops per layer, each a sum of
// at most ~100 terms (hidden, sequence, vocab), giving a relative error of order
// sqrt(100) * 6e-8 * (layers * ops ~ 30) ~ 2e-5 of the tensor's scale (measured: <= 3e-7).
// Tolerance = 2e-5 * (max |reference| of the tensor) absolute, plus 2e-5 relative per element.
// Scaling atol by the tensor's magnitude matters for gradients, whose scales differ by orders of
// magnitude between tensors (router vs lm_head).
constexpr double kRel = 2e-5;

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, (double)std::fabs(x));
  return m;
}

double scalar(const SafeTensorsFile& f, const std::string& name) { return f.read_f32(name).at(0); }
double scalar64(const SafeTensorsFile& f, const std::string& name) {
  const auto& t = f.get(name);
  double v;
  std::memcpy(&v, t.data, 8);
  return v;
}

void load_weights(const SafeTensorsFile& f, Model& model) {
  for (const auto& t : model.layout().hf_tensors())
    f.read_f32_into(t.name, model.params().data() + t.offset, t.shape);
}

struct OracleCase {
  std::string name;
};

class ModelVsTorch : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelVsTorch, LossLogitsGradientsAndTrajectory) {
  const std::string name = GetParam();
  const std::string cfg_path = test::source_dir() + "/tests/oracle/configs/" + name + ".json";
  const std::string out = test::tmp_path("model_" + name + ".safetensors");
  const int64_t B = 2, T = 16, steps = 10, accum = 2;
  const uint64_t seed = test::test_seed();
  ASSERT_TRUE(test::run_oracle("model_oracle.py", {"--config", cfg_path, "--out", out, "--seed", std::to_string(seed),
                                                   "--batch", std::to_string(B), "--seq", std::to_string(T),
                                                   "--steps", std::to_string(steps), "--accum",
                                                   std::to_string(accum)}));
  SafeTensorsFile f(out);
  Config cfg = load_config(cfg_path);
  cfg.train.batch_size = B;
  cfg.train.seq_len = T;
  cfg.train.grad_accum = accum;
  const ModelConfig& m = cfg.model;
  const int64_t V = m.vocab_size;

  Model model(m);
  // Every HF tensor the oracle wrote must be one of ours and vice versa.
  int64_t oracle_params = 0;
  for (const auto& [k, t] : f.tensors())
    if (k.rfind("model.", 0) == 0 || k == "lm_head.weight") {
      ++oracle_params;
      EXPECT_NE(model.layout().find_hf(k), nullptr) << "oracle tensor " << k << " has no dsmoe counterpart";
    }
  EXPECT_EQ(oracle_params, (int64_t)model.layout().hf_tensors().size());
  load_weights(f, model);

  // --- One batch: logits, losses, every gradient ---
  auto tokens = f.read_i32("tokens", {B, T + 1});
  std::vector<int32_t> x(B * T), y(B * T);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      x[b * T + t] = tokens[b * (T + 1) + t];
      y[b * T + t] = tokens[b * (T + 1) + t + 1];
    }
  ForwardResult r = model.forward(x.data(), y.data(), B, T, true);
  auto logits_ref = f.read_f32("logits64", {B, T, V});
  EXPECT_TRUE(test::all_close(name + " logits", model.logits(), logits_ref.data(), B * T * V, {B, T, V},
                              kRel * max_abs(logits_ref), kRel));
  // Losses are means of O(1) terms: fp32 rounding gives ~1e-6 relative.
  EXPECT_NEAR(r.lm_loss, scalar64(f, "loss.lm"), 1e-5 * std::fabs(scalar64(f, "loss.lm")));
  EXPECT_NEAR(r.expert_aux, scalar64(f, "loss.expert_aux"), 1e-5 * std::fabs(scalar64(f, "loss.expert_aux")) + 1e-9);
  EXPECT_NEAR(r.device_aux, scalar64(f, "loss.device_aux"), 1e-5 * std::fabs(scalar64(f, "loss.device_aux")) + 1e-9);
  EXPECT_NEAR(r.comm_aux, scalar64(f, "loss.comm_aux"), 1e-5 * std::fabs(scalar64(f, "loss.comm_aux")) + 1e-9);
  // The routing itself: the oracle draws its batch so that every discrete decision (top-k, the kept
  // groups of device-limited routing, the capacity boundary) has a score gap >= 1e-5, far above fp32
  // rounding (~1e-8): ids and the dropped set must be equal; gates within kRel like every value.
  int64_t total_dropped = 0;
  for (int64_t l = 0; l < m.num_hidden_layers; ++l) {
    const MoeActivations* a = model.moe_activations(l);
    if (!a || !f.has("route.idx." + std::to_string(l))) continue;
    const std::string L = std::to_string(l);
    const int64_t k = m.num_experts_per_tok;
    const auto ids = f.read_i32("route.idx." + L, {B * T, k});
    const auto gates = f.read_f32("route.weight." + L, {B * T, k});
    for (int64_t i = 0; i < B * T * k; ++i) {
      ASSERT_EQ(a->ids[i], ids[i]) << name << " layer " << l << ": routed expert of token " << i / k << " slot " << i % k;
      EXPECT_NEAR(a->gates[i], gates[i], kRel * std::fabs(gates[i]) + 1e-9) << name << " layer " << l << " gate " << i;
    }
    if (m.capacity_factor > 0) {
      const auto keep = f.read_i32("route.keep." + L, {B * T, k});
      ASSERT_EQ((int64_t)a->keep.size(), B * T * k) << name << " layer " << l;
      int64_t dropped = 0;
      for (int64_t i = 0; i < B * T * k; ++i) {
        dropped += keep[i] == 0;
        EXPECT_EQ((int)a->keep[i], keep[i]) << name << " layer " << l << ": capacity decision of token " << i / k
                                            << " slot " << i % k << " (expert " << ids[i] << ")";
      }
      EXPECT_EQ(model.moe_stats()[l].dropped, dropped) << name << " layer " << l;
      total_dropped += dropped;
      std::printf("[ stats    ] %s layer %lld: %lld of %lld slots dropped by the capacity\n", name.c_str(), (long long)l,
                  (long long)dropped, (long long)(B * T * k));
    }
  }
  if (m.capacity_factor > 0) EXPECT_GT(total_dropped, 0) << name << ": the capacity must bind for the test to mean anything";

  model.zero_grads();
  model.backward(1.0f / (float)(B * T), true);
  for (const auto& t : model.layout().hf_tensors()) {
    auto ref = f.read_f32("grad." + t.name, t.shape);
    EXPECT_TRUE(test::all_close(name + " grad " + t.name, model.grads().data() + t.offset, ref.data(), t.numel,
                                t.shape, kRel * max_abs(ref) + 1e-12, kRel));
  }

  // --- The LM-loss gradients by both cross-entropy paths: the training forward's fused pass (lm_head
  // and loss gradient in row blocks, the loss scale applied as the GEMM alpha) and an evaluation
  // forward followed by the separate backward op. Same math, fp32 rounding only: kRel as above.
  // (Not with a capacity: the evaluation forward is dropless by design, a different function.) ---
  if (m.capacity_factor == 0) {
    model.forward(x.data(), y.data(), B, T, true);
    model.zero_grads();
    model.backward(1.0f / (float)(B * T), false);
    const std::vector<float> fused = model.grads();
    model.forward(x.data(), y.data(), B, T, false);
    model.zero_grads();
    model.backward(1.0f / (float)(B * T), false);
    for (const auto& t : model.layout().hf_tensors()) {
      const std::vector<float> a(fused.begin() + t.offset, fused.begin() + t.offset + t.numel);
      EXPECT_TRUE(test::all_close(name + " lm-only grad (eval forward) " + t.name, model.grads().data() + t.offset,
                                  a.data(), t.numel, t.shape, kRel * max_abs(a) + 1e-12, kRel));
    }
  }

  // --- 10 optimizer steps with accumulation, clipping and the schedule ---
  //
  // Tolerances of the trajectory, derived per element and per step rather than one slack for all:
  // one slack large enough for the worst element (an element whose gradient is ~0 can flip its Adam
  // step by 2 lr) would be far larger than weight decay's whole effect on a typical element
  // (sum_s lr_s * wd * |p| ~ 8e-3 * 0.1 * 0.02 = 1.5e-5), and could not tell a missing decay.
  //
  // Gradients: step 1's gradients match the oracle to kRel * (max |g| of the tensor + |g|) (checked
  // above), so |dg| <= G_t = 2 kRel max|g_t| per element of HF tensor t at every step (the later
  // steps' gradients are taken at weights that differ by the budget below, a relative change of
  // <= 1e-6 for almost every element: second order against kRel = 2e-5, which is itself ~60x the
  // measured fp32 error; so it is folded into G_t). m and v are averages of past gradients, so their
  // errors are bounded by the largest G_t so far.
  // Adam's direction r = m^/(sqrt(v^) + eps), m^ = m/bc1, v^ = v/bc2: to first order
  // |dr| <= (1 + |r|) G_t / (sqrt(v^) + eps) (dm^ <= G_t; dv^ <= 2 |g| G_t moves sqrt(v^) by <= G_t),
  // and never more than 2 R_s, where R_s = max |r| over all gradient histories (Cauchy-Schwarz:
  // R_s = (1-b1)/bc1 sqrt(sum_k<s (b1^2/b2)^k) sqrt(bc2/(1-b2)), ~1.0 here). Element i's weight
  // error grows per step by lr_s |dr| plus the fp32 rounding of the update itself (decay product,
  // sqrt, two divisions, add, multiply, subtract: 2u |p| + 6u lr_s |r|; the oracle is fp64).
  // Summed over the steps: tol_i. Elements with well-conditioned gradients get ~1e-8; the few with
  // tiny gradients get up to ~2 sum lr_s. The engine's own m, v and gradients set the budget (they
  // agree with the oracle's to within it).
  load_weights(f, model);  // same start as the oracle's trajectory
  const std::vector<float> p0 = model.params();
  AdamW opt(model.layout(), cfg.train);
  auto traj_tokens = f.read_i32("traj.tokens", {steps, accum, B, T + 1});
  const auto lm_ref = test::read_f64(f, "traj.lm_loss");
  const auto gn_ref = test::read_f64(f, "traj.grad_norm");
  const auto lr_ref = test::read_f64(f, "traj.lr");
  const auto& hf = model.layout().hf_tensors();
  test::AdamTrajectoryBudget budget(model, cfg.train);
  const std::vector<double>& tol = budget.tol();
  double lr_sum = 0, decay_keep = 1;  // sum of lr_s; prod (1 - lr_s wd): the decay's factor on a matrix
  for (int64_t s = 1; s <= steps; ++s) {
    StepResult sr = train_step(model, opt, cfg.train, s, [&](int64_t micro, std::vector<int32_t>& xi, std::vector<int32_t>& yi) {
      xi.resize(B * T);
      yi.resize(B * T);
      const int32_t* src = traj_tokens.data() + ((s - 1) * accum + micro) * B * (T + 1);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t) {
          xi[b * T + t] = src[b * (T + 1) + t];
          yi[b * T + t] = src[b * (T + 1) + t + 1];
        }
    });
    // model.grads() now holds step s's clipped gradient; undo the clip to get dL/dp at these weights.
    const double clip = test::clip_factor(cfg.train, sr.grad_norm);
    // Loss at step s is taken at weights carrying the budget of steps < s: first order,
    // |dL| <= sum_i |dL/dp_i| tol_i, plus the loss's own fp32 budget (1e-5 relative, as above).
    // (dL/dp here is of lm + aux; the aux terms are small, alpha <= 0.05, so this bounds the lm part.)
    const double drift = budget.loss_drift(model.grads(), clip);
    EXPECT_NEAR(sr.lm_loss, lm_ref[s - 1], 1e-5 * std::fabs(lm_ref[s - 1]) + drift) << name << " step " << s;
    // The gradient norm (before clipping): | ||g + dg|| - ||g|| | <= ||dg||, and the per-step gradient
    // budget is kRel of the gradient's scale (step 1's check above; the later steps' weight drift is
    // second order, as for G_t below): kRel relative, the same budget as every gradient element.
    EXPECT_NEAR(sr.grad_norm, gn_ref[s - 1], kRel * gn_ref[s - 1]) << name << " step " << s << " (lm loss drift bound " << drift << ")";
    // lr: the schedule is exact arithmetic in double on both sides; 1e-12 relative.
    EXPECT_NEAR(sr.lr, lr_ref[s - 1], 1e-12 * lr_ref[s - 1]) << name << " step " << s;

    budget.add_step(model, opt, s, sr.lr, clip, 2 * kRel);  // G_t = 2 kRel max |g_t| (above)
    lr_sum += sr.lr;
    decay_keep *= 1 - sr.lr * cfg.train.weight_decay;
  }
  // Final parameters against the oracle's (read rounded to fp32: 0.5 ulp, inside the budget's
  // 2u |p| per step), each element against its own budget; and the budget
  // must resolve weight decay: dropping it would move a matrix element by |p0| (1 - prod(1 - lr_s wd))
  // (~8e-4 relative here), which fails the check wherever that exceeds twice the budget. Required for
  // at least a quarter of the matrix elements (measured: 45-65% per config; the rest have tiny |p0|
  // or gradients small against their tensor's error floor), so a missing or wrong decay fails on
  // thousands of elements and cannot pass.
  int64_t decayed = 0, resolvable = 0;
  double worst_ratio = 0;  // max |error| / tol_i: how much of its budget the worst element uses
  for (const auto& t : hf) {
    auto ref = f.read_f32("traj.param." + t.name, t.shape);
    for (int64_t i = 0; i < t.numel; ++i)
      worst_ratio = std::max(worst_ratio, std::fabs((double)model.params()[t.offset + i] - ref[i]) / tol[t.offset + i]);
    EXPECT_TRUE(test::all_close_each(name + " param after 10 steps " + t.name, model.params().data() + t.offset,
                                     ref.data(), tol.data() + t.offset, t.numel, t.shape));
    if (t.shape.size() < 2) continue;  // norm weights do not decay
    for (int64_t i = 0; i < t.numel; ++i) {
      ++decayed;
      resolvable += std::fabs(p0[t.offset + i]) * (1 - decay_keep) > 2 * tol[t.offset + i];
    }
  }
  std::printf("[ stats    ] %s: weight decay's effect resolvable on %lld of %lld matrix elements (sum lr %.3g); "
              "the worst parameter uses %.2g of its budget\n",
              name.c_str(), (long long)resolvable, (long long)decayed, lr_sum, worst_ratio);
  EXPECT_GE(resolvable, decayed / 4) << name << ": the trajectory budget is too loose to detect a missing weight decay";
}

INSTANTIATE_TEST_SUITE_P(Configs, ModelVsTorch,
                         ::testing::Values("deepseekmoe", "deepseekmoe_norm_tokaux", "device_aux", "group_limited",
                                           "group_limited_norm_tokaux", "device_capacity", "hash", "switch",
                                           "gshard", "dense"),
                         [](const auto& info) { return info.param; });

}  // namespace
