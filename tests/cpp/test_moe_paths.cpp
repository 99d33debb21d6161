// The training-path MoE (expert-major: sort by expert, grouped GEMM, combine) and the inference
// path (token-major: each token runs its own experts) must give the same output — the official code
// also has two paths, and a parity test between them catches dispatch bugs cheaply.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "model/model.h"
#include "model/moe_layer.h"
#include "test_util.h"

using namespace dsmoe;

namespace {

struct Variant {
  const char* name;
  int64_t shared, experts, k;
  bool norm;
  RouterType router;
};

class MoePaths : public ::testing::TestWithParam<Variant> {};

TEST_P(MoePaths, TrainingAndInferenceDispatchAgree) {
  const Variant v = GetParam();
  ModelConfig m;
  m.vocab_size = 97;
  m.hidden_size = 40;
  m.num_hidden_layers = 1;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 4;
  m.moe_intermediate_size = 24;
  m.n_shared_experts = v.shared;
  m.n_routed_experts = v.experts;
  m.num_experts_per_tok = v.k;
  m.norm_topk_prob = v.norm;
  m.router_type = v.router;
  m.max_position_embeddings = 64;
  Model model(m);
  Rng rng(test::test_seed());
  model.init_weights(rng, 0.2);  // large router weights: sharp, non-uniform routing
  const LayerView& P = model.weights().layers[0];
  for (int64_t N : {1, 3, 37}) {
    const int64_t H = m.hidden_size;
    std::vector<float> x(N * H), y_train(N * H), y_infer(N * H);
    for (auto& e : x) e = (float)rng.normal();
    std::vector<int32_t> tokens(N);
    for (auto& t : tokens) t = (int32_t)rng.below(m.vocab_size);
    MoeActivations acts;
    MoeStats s_train, s_infer;
    moe_forward(m, P, x.data(), tokens.data(), 1, N, false, y_train.data(), acts, s_train);
    moe_forward_token_major(m, P, x.data(), tokens.data(), N, y_infer.data(), s_infer);
    EXPECT_EQ(s_train.load, s_infer.load) << v.name << " N=" << N << ": routing differs between the paths";
    // Same routing and per-row arithmetic; only the GEMM blocking order of length-H and length-I dot
    // products differs: |error| <= ~sqrt(I) * 6e-8 * |terms| ~ 1e-6 of the output scale.
    double scale = 0;
    for (float e : y_train) scale = std::max(scale, (double)std::fabs(e));
    EXPECT_TRUE(test::all_close(std::string(v.name) + " N=" + std::to_string(N), y_infer.data(), y_train.data(), N * H,
                                {N, H}, 1e-5 * scale, 1e-5));
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, MoePaths,
                         ::testing::Values(Variant{"deepseekmoe", 2, 16, 4, false, RouterType::SoftmaxTopK},
                                           Variant{"deepseekmoe_norm", 1, 15, 3, true, RouterType::SoftmaxTopK},
                                           Variant{"gshard", 0, 8, 2, true, RouterType::SoftmaxTopK},
                                           Variant{"switch", 0, 8, 1, false, RouterType::SoftmaxTopK},
                                           Variant{"hash", 0, 8, 1, false, RouterType::Hash}),
                         [](const auto& info) { return std::string(info.param.name); });

// Model-level: a decode-sized inference forward (token-major) equals the logits of the same tokens
// inside a training-style forward (expert-major), position by position.
TEST(MoePaths, ModelLogitsAgreeAcrossPaths) {
  ModelConfig m;
  m.vocab_size = 64;
  m.hidden_size = 32;
  m.num_hidden_layers = 2;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.intermediate_size = 48;
  m.moe_intermediate_size = 16;
  m.n_shared_experts = 1;
  m.n_routed_experts = 16;
  m.num_experts_per_tok = 3;
  m.first_k_dense_replace = 1;
  m.max_position_embeddings = 32;
  Model model(m);
  Rng rng(test::test_seed() + 1);
  model.init_weights(rng, 0.1);
  const std::vector<int32_t> tokens = {5, 17, 3, 60, 22};
  std::vector<int32_t> targets(tokens.size(), 0);
  model.forward(tokens.data(), targets.data(), 1, (int64_t)tokens.size(), true);  // expert-major
  std::vector<float> full(model.logits(), model.logits() + tokens.size() * m.vocab_size);
  model.forward(tokens.data(), nullptr, 1, (int64_t)tokens.size(), false);  // 5*3 < 16: token-major
  double scale = 0;
  for (float e : full) scale = std::max(scale, (double)std::fabs(e));
  EXPECT_TRUE(test::all_close("logits", model.logits(), full.data(), (int64_t)full.size(),
                              {(int64_t)tokens.size(), m.vocab_size}, 1e-5 * scale, 1e-5));
}

}  // namespace

namespace {

ModelConfig capacity_config(double cf) {
  ModelConfig m;
  m.vocab_size = 50;
  m.hidden_size = 32;
  m.num_hidden_layers = 2;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 4;
  m.moe_intermediate_size = 16;
  m.n_routed_experts = 8;
  m.num_experts_per_tok = 2;
  m.norm_topk_prob = true;
  m.max_position_embeddings = 32;
  m.capacity_factor = cf;
  return m;
}

// A capacity no expert can exceed changes nothing; a tight one drops slots (GShard/Switch-era
// setting) and the model still trains with finite gradients.
TEST(MoeCapacity, LooseEqualsDroplessTightDrops) {
  const int64_t B = 2, T = 16;
  Rng rng(test::test_seed() + 2);
  std::vector<int32_t> x(B * T), y(B * T);
  for (auto& t : x) t = (int32_t)rng.below(50);
  for (auto& t : y) t = (int32_t)rng.below(50);
  Model dropless(capacity_config(0.0)), loose(capacity_config(100.0)), tight(capacity_config(0.5));
  Rng init(7);
  dropless.init_weights(init, 0.3);
  loose.params() = dropless.params();
  tight.params() = dropless.params();
  ForwardResult a = dropless.forward(x.data(), y.data(), B, T, true);
  ForwardResult b = loose.forward(x.data(), y.data(), B, T, true);
  EXPECT_EQ(a.lm_loss, b.lm_loss) << "capacity factor 100 must not drop anything";
  for (const auto& s : loose.moe_stats()) EXPECT_EQ(s.dropped, 0);
  ForwardResult c = tight.forward(x.data(), y.data(), B, T, true);
  int64_t dropped = 0;
  for (const auto& s : tight.moe_stats()) {
    dropped += s.dropped;
    // capacity = ceil(0.5 * 32 * 2 / 8) = 4 slots per expert: at most 32 of 64 slots survive.
    int64_t kept = 0;
    for (auto l : s.load) kept += std::min<int64_t>(l, 4);
    EXPECT_EQ((int64_t)s.load.size(), 8);
    EXPECT_EQ(64 - kept, s.dropped) << "each expert keeps exactly min(load, capacity) slots";
  }
  EXPECT_GT(dropped, 0);
  EXPECT_NE(a.lm_loss, c.lm_loss);
  tight.zero_grads();
  tight.backward(1.0f / (B * T), true);
  for (float g : tight.grads()) ASSERT_TRUE(std::isfinite(g));
}

}  // namespace
