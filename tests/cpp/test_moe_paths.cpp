// The training-path MoE (expert-major: sort by expert, grouped GEMM, combine) and the inference
// path (token-major: each token runs its own experts) must give the same output — the official code
// also has two paths, and a parity test between them catches dispatch bugs cheaply.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "model/model.h"
#include "model/moe_layer.h"
#include "model/token_dispatcher.h"
#include "test_util.h"

using namespace dsmoe;

namespace {

struct Variant {
  const char* name;
  int64_t shared, experts, k;
  bool norm;
  RouterType router;
  int64_t n_group = 1, topk_group = 1;  // > 1: DeepSeek-V2 device-limited routing (group_limited_greedy)
};

class MoePaths : public ::testing::TestWithParam<Variant> {};

// One MoE layer (hidden 40, experts of 24) with `shared` + `experts` experts, top-k.
ModelConfig one_moe_layer(int64_t shared, int64_t experts, int64_t k) {
  ModelConfig m;
  m.vocab_size = 97;
  m.hidden_size = 40;
  m.num_hidden_layers = 1;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 4;
  m.moe_intermediate_size = 24;
  m.n_shared_experts = shared;
  m.n_routed_experts = experts;
  m.num_experts_per_tok = k;
  m.max_position_embeddings = 64;
  return m;
}

TEST_P(MoePaths, TrainingAndInferenceDispatchAgree) {
  const Variant v = GetParam();
  ModelConfig m = one_moe_layer(v.shared, v.experts, v.k);
  m.norm_topk_prob = v.norm;
  m.router_type = v.router;
  if (v.n_group > 1) {
    m.topk_method = TopkMethod::GroupLimitedGreedy;
    m.n_group = v.n_group;
    m.topk_group = v.topk_group;
  }
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
                                           Variant{"hash", 0, 8, 1, false, RouterType::Hash},
                                           Variant{"group_limited", 2, 16, 4, false, RouterType::SoftmaxTopK, 4, 2},
                                           Variant{"group_limited_norm", 0, 12, 3, true, RouterType::SoftmaxTopK, 3, 1}),
                         [](const auto& info) { return std::string(info.param.name); });

// The all-to-all dispatcher over a one-rank group does the local dispatcher's arithmetic on the same
// rows in the same order (its exchanges are copies and its regrouping the identity): forward output
// and every gradient bit-identical. (Several ranks: test_parallel_training.)
TEST(MoePaths, AllToAllDispatcherOnOneRankIsTheLocalOne) {
  ModelConfig m = one_moe_layer(1, 16, 4);
  m.aux_loss_alpha = 0.01;
  Model model(m);
  Rng rng(test::test_seed());
  model.init_weights(rng, 0.2);
  const LayerView& P = model.weights().layers[0];
  Model grads_local(m), grads_a2a(m);
  grads_local.zero_grads();
  grads_a2a.zero_grads();
  const int64_t B = 2, T = 19, N = B * T, H = m.hidden_size;
  std::vector<float> x(N * H), dout(N * H);
  for (auto& e : x) e = (float)rng.normal();
  for (auto& e : dout) e = (float)rng.normal();
  std::vector<int32_t> tokens(N);
  for (auto& t : tokens) t = (int32_t)rng.below(m.vocab_size);
  SingleProcessCommunicator alone;
  AllToAllTokenDispatcher a2a(alone, m.n_routed_experts);
  const MoeParallel par{&a2a, nullptr};
  MoeActivations acts_local, acts_a2a;
  MoeStats st_local, st_a2a;
  MoeScratch scratch_local, scratch_a2a;
  std::vector<float> y_local(N * H), y_a2a(N * H), dx_local(N * H, 0.0f), dx_a2a(N * H, 0.0f);
  moe_forward(m, P, x.data(), tokens.data(), B, T, true, y_local.data(), acts_local, st_local);
  moe_forward(m, P, x.data(), tokens.data(), B, T, true, y_a2a.data(), acts_a2a, st_a2a, RoutingOverride{}, par);
  EXPECT_TRUE(test::all_close("output", y_a2a.data(), y_local.data(), N * H, {N, H}, 0, 0));
  EXPECT_EQ(st_a2a.expert_aux, st_local.expert_aux);
  const ModelView G_local = grads_local.layout().view(grads_local.grads().data());
  const ModelView G_a2a = grads_a2a.layout().view(grads_a2a.grads().data());
  moe_backward(m, P, G_local.layers[0], x.data(), dout.data(), B, T, true, dx_local.data(), acts_local,
               scratch_local);
  moe_backward(m, P, G_a2a.layers[0], x.data(), dout.data(), B, T, true, dx_a2a.data(), acts_a2a,
               scratch_a2a, par);
  EXPECT_TRUE(test::all_close("dx", dx_a2a.data(), dx_local.data(), N * H, {N, H}, 0, 0));
  const int64_t n = (int64_t)grads_local.grads().size();
  EXPECT_TRUE(test::all_close("parameter gradients", grads_a2a.grads().data(), grads_local.grads().data(), n, {n}, 0, 0));
}

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
