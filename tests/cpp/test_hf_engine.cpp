// The inference engine against the training forward, and the HF export/import round trip:
//   * KV-cache decoding (prefill, then one token per step) equals full recomputation (Model::forward);
//   * a batch of prompts of different lengths equals each prompt alone (greedy and sampled);
//   * score_tokens windows;
//   * import(export(m)) is exact (F32), BF16 export is the round-to-nearest-even of the weights and
//     re-exporting is byte-identical; F16 tensors load exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "infer/engine.h"
#include "infer/hf_checkpoint.h"
#include "io/safetensors.h"
#include "test_util.h"

using namespace dsmoe;
namespace fs = std::filesystem;

namespace {

Config tiny_config(int64_t max_pos = 160) {
  Config c;
  ModelConfig& m = c.model;
  m.vocab_size = 80;
  m.hidden_size = 32;
  m.intermediate_size = 48;
  m.moe_intermediate_size = 12;
  m.num_hidden_layers = 3;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.n_shared_experts = 1;
  m.n_routed_experts = 8;
  m.num_experts_per_tok = 2;
  m.first_k_dense_replace = 1;
  m.max_position_embeddings = max_pos;
  m.bos_token_id = 0;
  m.eos_token_id = 1;
  c.train.seq_len = std::min<int64_t>(64, max_pos);
  validate(c, "tiny");
  return c;
}

double max_abs(const float* p, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, (double)std::fabs(p[i]));
  return m;
}

// Both sides are fp32 with the same ops; they differ only in GEMM shapes (one row vs many, so
// BLAS may sum in another order) and in the MoE path (token-major for decode steps, grouped for
// the full forward): a few fp32 roundings per op, well inside the 2e-5-of-scale budget that
// ModelVsTorch derives for fp32 against fp64.
constexpr double kRel = 2e-5;

TEST(HfEngine, KvCacheDecodingEqualsFullRecomputation) {
  const Config cfg = tiny_config();
  Model model(cfg.model);
  Rng rng(test::test_seed());
  model.init_weights(rng, 0.2);
  const int64_t V = cfg.model.vocab_size, T = 90, prefill = 70;  // > 64: several attention row blocks
  auto tokens = test::random_tokens(rng, T, V);
  model.forward(tokens.data(), nullptr, 1, T, false);
  std::vector<float> full(model.logits(), model.logits() + T * V);
  const double scale = max_abs(full.data(), T * V);

  InferenceEngine eng(model);
  KvCache cache(cfg.model, T);
  std::vector<float> logits;
  Segment seg{&cache, tokens.data(), prefill};
  eng.step(std::span<const Segment>(&seg, 1), true, logits);
  EXPECT_TRUE(test::all_close("prefill logits", logits.data(), full.data(), prefill * V, {prefill, V}, kRel * scale, kRel));
  for (int64_t t = prefill; t < T; ++t) {
    seg = Segment{&cache, tokens.data() + t, 1};
    eng.step(std::span<const Segment>(&seg, 1), false, logits);
    ASSERT_TRUE(test::all_close("decode logits at position " + std::to_string(t), logits.data(), full.data() + t * V, V,
                                {V}, kRel * scale, kRel));
  }
  EXPECT_EQ(cache.len, T);
  // Chunked prefill (several tokens per step after a prefix) is the same computation.
  KvCache c2(cfg.model, T);
  for (int64_t s = 0; s < T; s += 13) {
    const int64_t n = std::min<int64_t>(13, T - s);
    seg = Segment{&c2, tokens.data() + s, n};
    eng.step(std::span<const Segment>(&seg, 1), true, logits);
    ASSERT_TRUE(test::all_close("chunk at " + std::to_string(s), logits.data(), full.data() + s * V, n * V, {n, V},
                                kRel * scale, kRel));
  }
}

TEST(HfEngine, BatchedGenerationEqualsOneByOne) {
  const Config cfg = tiny_config();
  Model model(cfg.model);
  Rng rng(test::test_seed() + 1);
  model.init_weights(rng, 0.3);
  const int64_t V = cfg.model.vocab_size;
  std::vector<std::vector<int32_t>> prompts = {test::random_tokens(rng, 9, V), test::random_tokens(rng, 1, V),
                                               test::random_tokens(rng, 30, V), test::random_tokens(rng, 4, V)};
  InferenceEngine eng(model);
  for (double temp : {0.0, 1.0}) {
    SamplingOptions o;
    o.temperature = temp;
    o.top_k = temp > 0 ? 20 : 0;
    o.top_p = temp > 0 ? 0.9 : 1.0;
    o.max_new_tokens = 12;
    o.eos_token = 1;
    std::vector<std::vector<int32_t>> streamed(prompts.size());
    auto batch = generate_batch(eng, prompts, o, 77, [&](int64_t i, int32_t t) {
      streamed[i].push_back(t);
      return true;
    });
    for (size_t i = 0; i < prompts.size(); ++i) {
      auto alone = generate_batch(eng, {prompts[i]}, o, 77);
      EXPECT_EQ(batch[i].tokens, alone[0].tokens) << "prompt " << i << " temperature " << temp;
      EXPECT_EQ(batch[i].finish, alone[0].finish) << "prompt " << i;
      EXPECT_EQ(streamed[i], batch[i].tokens) << "streamed tokens differ from the result";
      EXPECT_TRUE(batch[i].finish == FinishReason::Eos ? batch[i].tokens.back() == 1
                                                       : (int64_t)batch[i].tokens.size() == o.max_new_tokens);
    }
  }
  // A stop request from the callback ends only that sequence.
  SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = 10;
  auto r = generate_batch(eng, prompts, o, 0, [&](int64_t i, int32_t) { return i != 2; });
  EXPECT_EQ(r[2].finish, FinishReason::Stop);
  EXPECT_EQ(r[2].tokens.size(), 1u);
  EXPECT_EQ(r[0].tokens.size(), 10u);
}

TEST(HfEngine, GenerationStopsAtTheContextLimit) {
  const Config cfg = tiny_config(24);
  Model model(cfg.model);
  Rng rng(5);
  model.init_weights(rng, 0.3);
  InferenceEngine eng(model);
  SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = 100;
  auto r = generate_batch(eng, {test::random_tokens(rng, 20, cfg.model.vocab_size)}, o, 0);
  EXPECT_EQ(r[0].finish, FinishReason::Length);
  EXPECT_EQ(r[0].tokens.size(), 4u) << "20 prompt tokens + 4 = max_position_embeddings 24";
  try {
    generate_batch(eng, {test::random_tokens(rng, 25, cfg.model.vocab_size)}, o, 0);
    FAIL() << "a prompt longer than max_position_embeddings must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than max_position_embeddings (24)"), std::string::npos) << e.what();
  }
}

TEST(HfEngine, ScoreWindowsOverlapByOneToken) {
  const Config cfg = tiny_config(32);
  Model model(cfg.model);
  Rng rng(test::test_seed() + 2);
  model.init_weights(rng, 0.3);
  InferenceEngine eng(model);
  auto tokens = test::random_tokens(rng, 70, cfg.model.vocab_size);
  auto lp = score_tokens(eng, tokens, 32);
  ASSERT_EQ(lp.size(), 69u);
  // Windows [0, 32), [31, 63), [62, 70): the second window's scores are those of that slice alone.
  std::vector<int32_t> w2(tokens.begin() + 31, tokens.begin() + 63);
  auto lp2 = score_tokens(eng, w2, 32);
  for (int i = 0; i < 31; ++i) EXPECT_DOUBLE_EQ(lp[31 + i], lp2[i]) << i;
  for (double v : lp) EXPECT_TRUE(v <= 0 && std::isfinite(v));
}

TEST(HfExportImport, F32RoundTripIsExactAndBf16IsStable) {
  const Config cfg = tiny_config(64);
  Model model(cfg.model);
  Rng rng(test::test_seed() + 3);
  model.init_weights(rng, 0.05);
  const std::string d32 = test::tmp_path("hf_rt_f32");
  fs::remove_all(d32);
  ExportOptions o;
  o.max_shard_bytes = 30000;
  const int64_t n = export_hf(d32, cfg, model, o);
  EXPECT_GT(n, 1);
  EXPECT_TRUE(fs::exists(d32 + "/model.safetensors.index.json"));
  LoadedModel a = load_model_dir(d32);
  ASSERT_EQ(a.model->params().size(), model.params().size());
  EXPECT_EQ(std::memcmp(a.model->params().data(), model.params().data(), model.params().size() * 4), 0);
  EXPECT_EQ(to_json(a.config).dump(), to_json(Config{cfg.model, a.config.train}).dump()) << "config round trip";

  // Re-export into the same folder as ONE file: stale shards and index must go.
  o.max_shard_bytes = 1LL << 40;
  EXPECT_EQ(export_hf(d32, cfg, model, o), 1);
  EXPECT_FALSE(fs::exists(d32 + "/model.safetensors.index.json"));
  LoadedModel a1 = load_model_dir(d32);
  EXPECT_EQ(std::memcmp(a1.model->params().data(), model.params().data(), model.params().size() * 4), 0);

  // BF16: each weight rounds to nearest even; export(import(export)) is byte-identical.
  const std::string d16 = test::tmp_path("hf_rt_bf16"), d16b = test::tmp_path("hf_rt_bf16_again");
  fs::remove_all(d16);
  fs::remove_all(d16b);
  o.dtype = DType::BF16;
  export_hf(d16, cfg, model, o);
  LoadedModel b = load_model_dir(d16);
  for (size_t i = 0; i < model.params().size(); ++i)
    ASSERT_EQ(b.model->params()[i], bf16_to_f32(f32_to_bf16(model.params()[i]))) << "param " << i;
  export_hf(d16b, b.config, *b.model, o);
  EXPECT_EQ(read_text_file(d16 + "/model.safetensors"), read_text_file(d16b + "/model.safetensors"));
  EXPECT_EQ(read_text_file(d16 + "/config.json"), read_text_file(d16b + "/config.json"));
  auto j = nlohmann::json::parse(read_text_file(d16 + "/config.json"));
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_EQ(j["architectures"][0], "DeepseekForCausalLM");
  EXPECT_FALSE(j.contains("training"));

  // F16 tensors (as some conversions ship them) load exactly.
  const std::string d16h = test::tmp_path("hf_rt_f16");
  fs::remove_all(d16h);
  fs::create_directories(d16h);
  fs::copy_file(d16 + "/config.json", d16h + "/config.json");
  SafeTensorsWriter w;
  std::vector<uint16_t> h;
  std::vector<float> want(model.params().size());
  for (const auto& t : model.layout().hf_tensors()) {
    h.resize(t.numel);
    for (int64_t i = 0; i < t.numel; ++i) {
      // f32 -> f16 for values in the normal range (|w| < 1, no subnormal concerns at this scale):
      // keep 10 mantissa bits by truncation; the expected value is that truncation.
      float x = model.params()[t.offset + i];
      uint32_t u;
      std::memcpy(&u, &x, 4);
      const uint32_t sign = (u >> 16) & 0x8000;
      const int32_t e = (int32_t)((u >> 23) & 0xff) - 127 + 15;
      uint16_t v = e <= 0 ? (uint16_t)sign : (uint16_t)(sign | (e << 10) | ((u >> 13) & 0x3ff));
      h[i] = v;
      want[t.offset + i] = f16_to_f32(v);
    }
    w.add(t.name, DType::F16, t.shape, h.data());
  }
  w.write(d16h + "/model.safetensors");
  LoadedModel c = load_model_dir(d16h);
  EXPECT_EQ(c.report.f16, c.report.tensors);
  EXPECT_EQ(std::memcmp(c.model->params().data(), want.data(), want.size() * 4), 0);
}

}  // namespace

namespace {

// log p(tokens[i+1] | tokens[..i]) from the training forward's logits (the grouped MoE path).
std::vector<double> training_path_logprobs(Model& model, const std::vector<int32_t>& tokens) {
  const int64_t T = (int64_t)tokens.size(), V = model.config().vocab_size;
  model.forward(tokens.data(), nullptr, 1, T, false);
  std::vector<double> lp;
  for (int64_t t = 0; t + 1 < T; ++t) {
    const float* z = model.logits() + t * V;
    double mx = z[0], sum = 0;
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, (double)z[v]);
    for (int64_t v = 0; v < V; ++v) sum += std::exp((double)z[v] - mx);
    lp.push_back((double)z[tokens[t + 1]] - mx - std::log(sum));
  }
  return lp;
}

}  // namespace

// DeepSeek-V2 device-limited routing survives export and import (HF config.json keys topk_method,
// n_group, topk_group), and the inference engine routes as the training forward does: its log-probs
// equal the training path's to fp32 rounding, and differ from the same weights routed greedily (so the
// check can see a routing that ignores the groups).
TEST(HfExportImport, DeviceLimitedRoutingRoundTripsAndInferenceRoutesTheSame) {
  Config cfg = tiny_config(64);
  cfg.model.num_experts_per_tok = 3;
  cfg.model.topk_method = TopkMethod::GroupLimitedGreedy;
  cfg.model.n_group = 2;
  cfg.model.topk_group = 1;  // a token's 3 experts lie in ONE group of 4 (greedy often spans both)
  cfg.model.comm_aux_alpha = 0.02;
  validate(cfg, "tiny group-limited");
  Model model(cfg.model);
  Rng rng(test::test_seed() + 4);
  model.init_weights(rng, 0.3);
  const std::string dir = test::tmp_path("hf_rt_group_limited");
  fs::remove_all(dir);
  export_hf(dir, cfg, model, ExportOptions{});
  LoadedModel loaded = load_model_dir(dir);
  EXPECT_TRUE(loaded.config.model.group_limited());
  EXPECT_EQ(loaded.config.model.n_group, 2);
  EXPECT_EQ(loaded.config.model.topk_group, 1);
  EXPECT_EQ(loaded.config.model.comm_aux_alpha, 0.02);
  const auto tokens = test::random_tokens(rng, 40, cfg.model.vocab_size);
  InferenceEngine eng(*loaded.model);
  const auto lp_infer = score_tokens(eng, tokens, 64);
  const auto lp_train = training_path_logprobs(model, tokens);
  Config greedy_cfg = cfg;
  greedy_cfg.model.topk_method = TopkMethod::Greedy;
  Model greedy(greedy_cfg.model);
  greedy.params() = model.params();
  const auto lp_greedy = training_path_logprobs(greedy, tokens);
  ASSERT_EQ(lp_infer.size(), lp_train.size());
  double worst = 0, moved = 0;
  for (size_t i = 0; i < lp_train.size(); ++i) {
    worst = std::max(worst, std::fabs(lp_infer[i] - lp_train[i]));
    moved = std::max(moved, std::fabs(lp_greedy[i] - lp_train[i]));
  }
  // fp32 rounding of two summation orders over ~100-term sums: ~1e-5 of log-probs of size ~5.
  EXPECT_LT(worst, 1e-4) << "inference and training route differently";
  EXPECT_GT(moved, 1e-2) << "greedy routing gives the same log-probs: the test cannot see the groups";
}
