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
// The trajectory compounds 10 Adam steps: Adam normalises each update, so fp32 rounding of small
// gradient elements moves weights by up to ~lr * 1e-4 relative; the losses get a 1e-4 budget.
constexpr double kTrajRel = 1e-4;

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

  model.zero_grads();
  model.backward(1.0f / (float)(B * T), true);
  for (const auto& t : model.layout().hf_tensors()) {
    auto ref = f.read_f32("grad." + t.name, t.shape);
    EXPECT_TRUE(test::all_close(name + " grad " + t.name, model.grads().data() + t.offset, ref.data(), t.numel,
                                t.shape, kRel * max_abs(ref) + 1e-12, kRel));
  }

  // --- The LM-loss gradients by both cross-entropy paths: the training forward's fused pass (lm_head
  // and loss gradient in row blocks, the loss scale applied as the GEMM alpha) and an evaluation
  // forward followed by the separate backward op. Same math, fp32 rounding only: kRel as above. ---
  {
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
  load_weights(f, model);  // same start as the oracle's trajectory
  AdamW opt(model.layout(), cfg.train);
  auto traj_tokens = f.read_i32("traj.tokens", {steps, accum, B, T + 1});
  auto lm_ref = f.read_f32("traj.lm_loss", {steps});
  auto gn_ref = f.read_f32("traj.grad_norm", {steps});
  auto lr_ref = f.read_f32("traj.lr", {steps});
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
    // The loss at step s reflects s-1 updates; Adam's normalised steps keep fp32/fp64 differences
    // of the weights at ~lr * 1e-4 relative, so 1e-4 relative on the loss is the same budget.
    EXPECT_NEAR(sr.lm_loss, lm_ref[s - 1], kTrajRel * std::fabs(lm_ref[s - 1])) << name << " step " << s;
    EXPECT_NEAR(sr.grad_norm, gn_ref[s - 1], 1e-3 * gn_ref[s - 1]) << name << " step " << s;
    EXPECT_NEAR(sr.lr, lr_ref[s - 1], 1e-7 * lr_ref[s - 1]) << name << " step " << s;
  }
  // Final parameters. Adam divides by sqrt(v): where a gradient element is tiny (|g| ~ eps) its
  // update direction is ill-conditioned, so compare against the tensor scale with lr * steps slack.
  const double lr_max = cfg.train.lr;
  for (const auto& t : model.layout().hf_tensors()) {
    auto ref = f.read_f32("traj.param." + t.name, t.shape);
    EXPECT_TRUE(test::all_close(name + " param after 10 steps " + t.name, model.params().data() + t.offset,
                                ref.data(), t.numel, t.shape, 1e-2 * lr_max * steps, kTrajRel));
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, ModelVsTorch,
                         ::testing::Values("deepseekmoe", "deepseekmoe_norm_tokaux", "device_aux", "hash", "switch",
                                           "gshard", "dense"),
                         [](const auto& info) { return info.param; });

}  // namespace
