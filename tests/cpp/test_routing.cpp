// Evaluation-time routing overrides (the paper's expert-specialization analyses) and routing
// statistics: the whole model under each override against the PyTorch oracle (tests/oracle/
// model_ref.py, where the override is written independently: mask the top-`disable_top` softmax
// scores with -inf, then torch.topk), the statistics against counts derived from the oracle's own
// routing, the errors for invalid overrides and for training with one, and `dsmoe eval` flags.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/model.h"
#include "model/routing_stats.h"
#include "ops/router.h"
#include "test_util.h"
#include "train/data.h"

using namespace dsmoe;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Same budget as ModelVsTorch (test_model.cpp): fp32 engine vs fp64 oracle on the same fp32 weights,
// ~10 ops per layer of sums of <= ~100 terms -> ~2e-5 of the tensor's scale. An override changes
// which experts run, not the depth or width of any sum, so the bound is unchanged. The tokens are
// drawn so that, under every override, both rank boundaries of the chosen set (disable_top and
// disable_top + k) have a softmax-score gap >= 1e-5, far above fp32 rounding of the scores (~1e-8):
// the engine must pick exactly the oracle's experts, checked exactly through the statistics below.
// (A wrong expert moves the logits by 3e-3 .. 3e-2 here, >= 300x the tolerance.)
constexpr double kRel = 2e-5;

struct Ovr {
  int64_t disable_top, top_k;
  bool drop_shared;
};

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, (double)std::fabs(x));
  return m;
}

double scalar64(const SafeTensorsFile& f, const std::string& name) {
  const auto& t = f.get(name);
  double v;
  std::memcpy(&v, t.data, 8);
  return v;
}

struct OracleCase {
  std::string name;       // test name
  std::string config;     // tests/oracle/configs/<config>.json
  json patch;             // merged into the config (e.g. shared experts for the hash router)
  std::vector<Ovr> overrides;
};

void PrintTo(const OracleCase& c, std::ostream* os) { *os << c.name; }

class RoutingOverrideVsTorch : public ::testing::TestWithParam<OracleCase> {};

TEST_P(RoutingOverrideVsTorch, LogitsLossAndRoutingStatistics) {
  const OracleCase& c = GetParam();
  json cj = json::parse(std::ifstream(test::source_dir() + "/tests/oracle/configs/" + c.config + ".json"));
  cj.merge_patch(c.patch);
  const std::string cfg_path = test::tmp_path("routing_" + c.name + ".json");
  std::ofstream(cfg_path) << cj.dump(2);
  const std::string out = test::tmp_path("routing_" + c.name + ".safetensors");
  const int64_t B = 2, T = 16, N = B * T;
  json ovr_json = json::array();
  for (const Ovr& o : c.overrides) ovr_json.push_back({o.disable_top, o.top_k, o.drop_shared});
  ASSERT_TRUE(test::run_oracle("model_oracle.py", {"--config", cfg_path, "--out", out, "--seed",
                                                   std::to_string(test::test_seed()), "--batch", std::to_string(B),
                                                   "--seq", std::to_string(T), "--overrides", ovr_json.dump()}));
  SafeTensorsFile f(out);
  const ModelConfig m = load_config(cfg_path).model;
  const int64_t V = m.vocab_size, E = m.n_routed_experts;
  Model model(m);
  for (const auto& t : model.layout().hf_tensors())
    f.read_f32_into(t.name, model.params().data() + t.offset, t.shape);
  auto tokens = f.read_i32("tokens", {B, T + 1});
  std::vector<int32_t> x(N), y(N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      x[b * T + t] = tokens[b * (T + 1) + t];
      y[b * T + t] = tokens[b * (T + 1) + t + 1];
    }

  for (size_t o = 0; o < c.overrides.size(); ++o) {
    const Ovr& ov = c.overrides[o];
    const std::string what = c.name + " override " + std::to_string(o) + " (disable_top " +
                             std::to_string(ov.disable_top) + ", top_k " + std::to_string(ov.top_k) + ", drop_shared " +
                             std::to_string(ov.drop_shared) + ")";
    SCOPED_TRACE(what);
    const std::string p = "ovr." + std::to_string(o) + ".";
    model.set_routing_override(RoutingOverride{ov.disable_top, ov.top_k, ov.drop_shared});
    RoutingStats stats;
    model.set_routing_stats(&stats);
    ForwardResult r = model.forward(x.data(), y.data(), B, T, false);
    model.set_routing_stats(nullptr);
    auto logits_ref = f.read_f32(p + "logits64", {B, T, V});
    EXPECT_TRUE(test::all_close(what + " logits", model.logits(), logits_ref.data(), N * V, {B, T, V},
                                kRel * max_abs(logits_ref), kRel));
    EXPECT_NEAR(r.lm_loss, scalar64(f, p + "loss.lm"), 1e-5 * std::fabs(scalar64(f, p + "loss.lm")));

    // Statistics vs the oracle's routing: ids by descending score, so column 0 is the top-1.
    const int64_t k = ov.top_k > 0 ? ov.top_k : m.num_experts_per_tok;
    int64_t moe_layers = 0;
    for (int64_t l = 0; l < m.num_hidden_layers; ++l) {
      if (!m.is_moe_layer(l)) continue;
      ASSERT_LT(moe_layers, (int64_t)stats.layers.size());
      const RoutingLayerStats& s = stats.layers[moe_layers++];
      SCOPED_TRACE("layer " + std::to_string(l));
      EXPECT_EQ(s.layer, l);
      ASSERT_EQ(s.top_k, k);
      EXPECT_EQ(s.tokens, N);
      auto idx = f.read_i32(p + "route.idx." + std::to_string(l), {N, k});
      std::vector<int64_t> load(E, 0), top1(E, 0), cooc(E * E, 0);
      int64_t repeats = 0, overlap = 0;
      for (int64_t t = 0; t < N; ++t) {
        top1[idx[t * k]]++;
        for (int64_t i = 0; i < k; ++i) {
          load[idx[t * k + i]]++;
          for (int64_t j = 0; j < k; ++j)
            if (i != j) cooc[idx[t * k + i] * E + idx[t * k + j]]++;
        }
        if (t % T == 0) continue;
        repeats += idx[t * k] == idx[(t - 1) * k];
        for (int64_t i = 0; i < k; ++i)
          for (int64_t j = 0; j < k; ++j) overlap += idx[t * k + i] == idx[(t - 1) * k + j];
      }
      EXPECT_EQ(s.load, load);
      EXPECT_EQ(s.cooc, cooc);
      EXPECT_EQ(s.adjacent_pairs, B * (T - 1));
      // The oracle's batch keeps the chosen SET >= 1e-5 from any rounding flip, not the order inside
      // it: a token whose two best chosen scores are closer than that (fp32 rounding is ~1e-8) may
      // have either as its top-1. Each such token moves at most one top-1 count from one expert to
      // another (2 in the sum of differences) and two adjacent-pair repeats; none: exact equality.
      // The oracle's fp64 scores, for the top-1 gaps here and the entropy below (learned router only).
      const std::vector<double> sc = m.router_type == RouterType::SoftmaxTopK
                                         ? test::read_f64(f, p + "route.scores." + std::to_string(l))
                                         : std::vector<double>();
      int64_t ambiguous_top1 = 0;
      if (m.router_type == RouterType::SoftmaxTopK && k > 1) {
        for (int64_t t = 0; t < N; ++t)
          ambiguous_top1 += std::fabs(sc[t * E + idx[t * k]] - sc[t * E + idx[t * k + 1]]) < 1e-5;
      }
      int64_t top1_moved = 0;
      for (int64_t e = 0; e < E; ++e) top1_moved += std::llabs(s.top1_load[e] - top1[e]);
      EXPECT_LE(top1_moved, 2 * ambiguous_top1) << "top-1 loads: dsmoe " << ::testing::PrintToString(s.top1_load)
                                                << ", oracle " << ::testing::PrintToString(top1) << "; "
                                                << ambiguous_top1 << " tokens with a top-1 gap < 1e-5";
      EXPECT_LE(std::llabs(s.top1_repeats - repeats), 2 * ambiguous_top1)
          << "top-1 repeats: dsmoe " << s.top1_repeats << ", oracle " << repeats;
      EXPECT_EQ(s.overlap_sum, overlap);
      // Invariants: k selections per token; co-occurrence symmetric, zero diagonal, row e sums to
      // load_e * (k - 1) (each selection of e pairs with the token's k - 1 other experts).
      int64_t total = 0;
      for (int64_t e = 0; e < E; ++e) {
        total += s.load[e];
        int64_t row = 0;
        for (int64_t j = 0; j < E; ++j) {
          EXPECT_EQ(s.cooc[e * E + j], s.cooc[j * E + e]);
          row += s.cooc[e * E + j];
        }
        EXPECT_EQ(s.cooc[e * E + e], 0);
        EXPECT_EQ(row, s.load[e] * (k - 1));
      }
      EXPECT_EQ(total, N * k);
      // Entropy from the oracle's fp64 scores. Ours is from fp32 probs: each term p ln p carries a
      // relative error of a few u (~1e-7) of |p ln p| <= 0.37, summed over E * N terms.
      if (m.router_type == RouterType::SoftmaxTopK) {
        ASSERT_TRUE(s.has_entropy);
        double h = 0;
        for (double q : sc)
          if (q > 0) h -= q * std::log(q);
        EXPECT_NEAR(s.entropy_sum, h, 1e-5 * h);
      } else {
        EXPECT_FALSE(s.has_entropy);
      }
    }
    EXPECT_EQ(moe_layers, (int64_t)stats.layers.size());
  }
}

// disable_top in {1, 2}, top_k in {1, K+1}, drop_shared, combinations; the first entry (no override)
// checks that the eval path equals the official routing.
const std::vector<Ovr> kMoeOverrides = {{0, 0, false}, {1, 0, false}, {2, 0, false}, {0, 1, false}, {0, 4, false},
                                        {0, 0, true},  {0, 4, true},  {2, 2, false}, {1, 4, true}};
INSTANTIATE_TEST_SUITE_P(
    Configs, RoutingOverrideVsTorch,
    ::testing::Values(
        // K = 3 of 8, 2 shared, no gate renormalisation.
        OracleCase{"deepseekmoe", "deepseekmoe", json::object(), kMoeOverrides},
        // Same with norm_topk_prob: renormalised over the chosen experts when k > 1 (not for top_k 1).
        OracleCase{"deepseekmoe_norm", "deepseekmoe_norm_tokaux", json::object(), kMoeOverrides},
        // GShard top-2 with renormalisation, no shared experts; the paper's "one shared expert out,
        // one more routed in" on a 1-shared model (device_aux: K = 2).
        OracleCase{"gshard", "gshard", json::object(), {{1, 0, false}, {2, 0, false}, {0, 1, false}, {0, 3, false}, {3, 1, false}}},
        OracleCase{"one_shared", "device_aux", json::object(), {{0, 3, true}, {1, 0, false}, {6, 2, false}}},
        // Hash Layer with a shared expert: only drop_shared applies.
        OracleCase{"hash_shared", "hash", json{{"n_shared_experts", 1}}, {{0, 0, false}, {0, 0, true}}}),
    [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------- errors

ModelConfig tiny_moe() {
  ModelConfig m;
  m.vocab_size = 64;
  m.hidden_size = 16;
  m.intermediate_size = 32;
  m.moe_intermediate_size = 8;
  m.num_hidden_layers = 2;
  m.num_attention_heads = 2;
  m.num_key_value_heads = 2;
  m.n_shared_experts = 1;
  m.n_routed_experts = 8;
  m.num_experts_per_tok = 2;
  m.max_position_embeddings = 32;
  return m;
}

void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no dsmoe::Error thrown (expected one mentioning '" << needles[0] << "')";
  } catch (const Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(RoutingOverride, InvalidOverridesAreRefusedNamingTheField) {
  Model moe(tiny_moe());
  expect_error([&] { moe.set_routing_override({-1, 0, false}); }, {"disable_top", ">= 0"});
  expect_error([&] { moe.set_routing_override({0, -2, false}); }, {"top_k", ">= 1"});
  expect_error([&] { moe.set_routing_override({7, 0, false}); }, {"disable_top (7) + top_k (2)", "n_routed_experts (8)"});
  expect_error([&] { moe.set_routing_override({0, 9, false}); }, {"top_k (9)", "n_routed_experts (8)"});
  expect_error([&] { moe.set_routing_override({3, 6, false}); }, {"disable_top (3) + top_k (6)"});
  moe.set_routing_override({6, 2, false});  // exactly E: allowed
  moe.set_routing_override({0, 8, false});
  EXPECT_TRUE(moe.routing_override().active());
  // A refused override leaves the previous one in place.
  expect_error([&] { moe.set_routing_override({8, 0, false}); }, {"disable_top"});
  EXPECT_EQ(moe.routing_override().top_k, 8);

  ModelConfig ns = tiny_moe();
  ns.n_shared_experts = 0;
  Model no_shared(ns);
  expect_error([&] { no_shared.set_routing_override({0, 0, true}); }, {"drop_shared", "no shared experts"});

  ModelConfig hc = tiny_moe();
  hc.router_type = RouterType::Hash;
  hc.num_experts_per_tok = 1;
  Model hash(hc);
  expect_error([&] { hash.set_routing_override({1, 0, false}); }, {"disable_top", "hash"});
  expect_error([&] { hash.set_routing_override({0, 1, false}); }, {"top_k", "hash"});
  hash.set_routing_override({0, 0, true});  // shared experts exist: fine

  ModelConfig dc = tiny_moe();
  dc.n_routed_experts = dc.num_experts_per_tok = dc.n_shared_experts = 0;
  Model dense(dc);
  expect_error([&] { dense.set_routing_override({0, 0, true}); }, {"dense"});
  dense.set_routing_override({});  // inactive: a no-op everywhere
}

TEST(RoutingOverride, TrainingWithAnOverrideIsRefused) {
  Model model(tiny_moe());
  Rng rng(test::test_seed());
  model.init_weights(rng, 0.02);
  const int64_t B = 2, T = 8;
  std::vector<int32_t> x(B * T), y(B * T);
  for (int64_t i = 0; i < B * T; ++i) {
    x[i] = (int32_t)rng.below(64);
    y[i] = (int32_t)rng.below(64);
  }
  for (const RoutingOverride& o : {RoutingOverride{1, 0, false}, RoutingOverride{0, 3, false}, RoutingOverride{0, 0, true}}) {
    model.set_routing_override(o);
    expect_error([&] { model.forward(x.data(), y.data(), B, T, true); }, {"compute_aux", "evaluation only"});
    // An evaluation forward with targets is fine, but its activations cannot be backpropagated.
    model.forward(x.data(), y.data(), B, T, false);
    expect_error([&] { model.backward(1.0f, false); }, {"backward", "routing override", "evaluation only"});
  }
  // Cleared: training works again, and the result equals a model that never had an override.
  model.set_routing_override({});
  EXPECT_FALSE(model.routing_override().active());
  ForwardResult r = model.forward(x.data(), y.data(), B, T, true);
  model.zero_grads();
  model.backward(1.0f, true);
  Model fresh(tiny_moe());
  std::copy(model.params().begin(), model.params().end(), fresh.params().begin());
  ForwardResult r2 = fresh.forward(x.data(), y.data(), B, T, true);
  EXPECT_EQ(r.lm_loss, r2.lm_loss);
  EXPECT_EQ(r.expert_aux, r2.expert_aux);
}

// ---------------------------------------------------------------- statistics

// Attaching statistics must not change the computation (the default grouped path is unchanged).
TEST(RoutingStatsTest, CollectingDoesNotChangeTheForward) {
  Model model(tiny_moe());
  Rng rng(test::test_seed());
  model.init_weights(rng, 0.1);
  const int64_t B = 3, T = 12, V = 64;
  std::vector<int32_t> x(B * T), y(B * T);
  for (int64_t i = 0; i < B * T; ++i) {
    x[i] = (int32_t)rng.below(64);
    y[i] = (int32_t)rng.below(64);
  }
  ForwardResult a = model.forward(x.data(), y.data(), B, T, false);
  std::vector<float> la(model.logits(), model.logits() + B * T * V);
  RoutingStats s;
  model.set_routing_stats(&s);
  ForwardResult b = model.forward(x.data(), y.data(), B, T, false);
  ForwardResult c = model.forward(x.data(), y.data(), B, T, false);
  EXPECT_EQ(a.lm_loss, b.lm_loss);
  EXPECT_EQ(b.lm_loss, c.lm_loss);
  EXPECT_EQ(std::memcmp(la.data(), model.logits(), la.size() * 4), 0);
  ASSERT_EQ(s.layers.size(), 2u);
  EXPECT_EQ(s.layers[0].tokens, 2 * B * T) << "two forwards accumulated";
  // Changing k without a reset is refused (mixed counts would be meaningless); reset clears.
  model.set_routing_override({0, 3, false});
  expect_error([&] { model.forward(x.data(), y.data(), B, T, false); }, {"top_k 2", "top_k 3", "reset()"});
  s.reset();
  model.forward(x.data(), y.data(), B, T, false);
  EXPECT_EQ(s.layers[0].top_k, 3);
  EXPECT_EQ(s.layers[0].tokens, B * T);
}

// Summaries on hand-made routing: E = 4, k = 2, one sequence of 4 tokens.
TEST(RoutingStatsTest, SummaryFiguresOnAKnownRouting) {
  const int64_t E = 4, k = 2, T = 4;
  const std::vector<int32_t> ids = {0, 1, 0, 1, 0, 2, 3, 1};  // tokens: {0,1} {0,1} {0,2} {3,1}
  std::vector<float> probs(T * E, 0.25f);                    // uniform: entropy ln 4 per token
  RoutingStats st;
  st.accumulate(5, ids.data(), probs.data(), 1, T, E, k);
  ASSERT_EQ(st.layers.size(), 1u);
  const RoutingLayerStats& s = st.layers[0];
  EXPECT_EQ(s.load, (std::vector<int64_t>{3, 3, 1, 1}));
  EXPECT_EQ(s.top1_load, (std::vector<int64_t>{3, 0, 0, 1}));
  EXPECT_EQ(s.cooc[0 * E + 1], 2);
  EXPECT_EQ(s.cooc[0 * E + 2], 1);
  EXPECT_EQ(s.cooc[1 * E + 3], 1);
  EXPECT_EQ(s.adjacent_pairs, 3);
  EXPECT_EQ(s.top1_repeats, 2);  // 0->0, 0->0, 0->3
  EXPECT_EQ(s.overlap_sum, 2 + 1 + 0);
  RoutingLayerSummary r = summarize(s, 2);
  EXPECT_EQ(r.layer, 5);
  EXPECT_DOUBLE_EQ(r.load_max_over_mean, 3.0 / 2.0);
  EXPECT_DOUBLE_EQ(r.load_cv, 1.0 / 2.0);  // loads 3,3,1,1: std 1, mean 2
  EXPECT_NEAR(r.entropy_mean, std::log(4.0), 1e-6);
  EXPECT_NEAR(r.entropy_normalised, 1.0, 1e-6);
  EXPECT_DOUBLE_EQ(r.top1_repeat_fraction, 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(r.top1_repeat_chance, (9.0 + 1.0) / 16.0);
  EXPECT_DOUBLE_EQ(r.overlap_mean, 1.0);
  ASSERT_EQ(r.top_pairs.size(), 2u);
  EXPECT_EQ(r.top_pairs[0].a, 0);
  EXPECT_EQ(r.top_pairs[0].b, 1);
  EXPECT_EQ(r.top_pairs[0].count, 2);
  EXPECT_DOUBLE_EQ(r.top_pairs[0].lift, 2.0 * 4 / (3.0 * 3.0));
  EXPECT_EQ(r.top_pairs[1].a, 0);  // count 1 ties with (1,3): lower ids first
  EXPECT_EQ(r.top_pairs[1].b, 2);
  EXPECT_DOUBLE_EQ(r.top_pairs[1].lift, 1.0 * 4 / (3.0 * 1.0));

  // Merge adds; JSON carries raw counts and summaries; no probabilities (hash) -> null entropy.
  RoutingStats twice = st;
  twice.merge(st);
  EXPECT_EQ(twice.layers[0].tokens, 8);
  EXPECT_EQ(twice.layers[0].cooc[1], 4);
  json j = routing_stats_json(twice, 1);
  ASSERT_EQ(j["layers"].size(), 1u);
  EXPECT_EQ(j["layers"][0]["cooccurrence"][0][1], 4);
  EXPECT_EQ(j["layers"][0]["summary"]["top_pairs"].size(), 1u);
  EXPECT_NEAR(j["layers"][0]["summary"]["entropy_normalised"].get<double>(), 1.0, 1e-6);
  RoutingStats hash;
  hash.accumulate(0, ids.data(), nullptr, 1, T, E, k);
  json h = routing_stats_json(hash);
  EXPECT_TRUE(h["layers"][0]["entropy_sum"].is_null());
  EXPECT_TRUE(h["layers"][0]["summary"]["entropy_mean"].is_null());
}

// ---------------------------------------------------------------- CLI

// stdout only (progress and notices go to stderr), or both for the error messages.
std::string run_capture(const std::string& cmd, int* rc, bool with_stderr = false) {
  FILE* p = popen((cmd + (with_stderr ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *rc = pclose(p);
  return out;
}

TEST(RoutingCli, EvalFlagsPrintTheOverrideAndWriteStats) {
  const std::string dir = test::tmp_path("routing_cli");
  fs::remove_all(dir);
  fs::create_directories(dir);
  Rng rng(test::test_seed());
  for (const char* split : {"train", "val"}) {
    TokenSplit s;
    s.vocab_size = 64;
    s.tokenizer = "bytes";
    for (int i = 0; i < 4000; ++i) s.tokens.push_back((int32_t)rng.below(64));
    save_split(dir + "/data", split, s);
  }
  json cfg = {{"model_type", "deepseek"}, {"vocab_size", 64}, {"hidden_size", 16}, {"intermediate_size", 32},
              {"moe_intermediate_size", 8}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
              {"n_shared_experts", 1}, {"n_routed_experts", 8}, {"num_experts_per_tok", 2},
              {"max_position_embeddings", 32}, {"bos_token_id", 1}, {"eos_token_id", 2},
              {"training", {{"steps", 2}, {"warmup_steps", 1}, {"batch_size", 2}, {"seq_len", 16}, {"eval_batches", 2}}}};
  std::ofstream(dir + "/config.json") << cfg.dump();
  const std::string bin = DSMOE_BINARY;
  int rc;
  std::string out = run_capture(bin + " train --config " + dir + "/config.json --data " + dir + "/data --out " + dir +
                                    "/run --quiet --sample-tokens 0",
                                &rc);
  ASSERT_EQ(rc, 0) << out;
  const std::string eval = bin + " eval --model " + dir + "/run --data " + dir + "/data --batches 2";
  out = run_capture(eval, &rc);
  ASSERT_EQ(rc, 0) << out;
  json base = json::parse(out);
  EXPECT_FALSE(base.contains("routing_override")) << "plain eval output unchanged";

  out = run_capture(eval + " --disable-top 1 --top-k 3 --drop-shared --routing-stats " + dir + "/stats.json", &rc);
  ASSERT_EQ(rc, 0) << out;
  json j = json::parse(out);
  EXPECT_EQ(j["routing_override"], (json{{"disable_top", 1}, {"top_k", 3}, {"drop_shared", true}})) << out;
  EXPECT_NE(j["loss"].get<double>(), base["loss"].get<double>());
  json s = json::parse(std::ifstream(dir + "/stats.json"));
  EXPECT_EQ(s["loss"], j["loss"]);
  EXPECT_EQ(s["routing_override"], j["routing_override"]);
  ASSERT_EQ(s["routing"]["layers"].size(), 2u);
  for (const json& l : s["routing"]["layers"]) {
    EXPECT_EQ(l["top_k"], 3);
    EXPECT_EQ(l["tokens"], 2 * 2 * 16);
    int64_t total = 0;
    for (const json& v : l["load"]) total += v.get<int64_t>();
    EXPECT_EQ(total, 2 * 2 * 16 * 3);
    EXPECT_TRUE(l["summary"]["entropy_normalised"].is_number());
  }

  out = run_capture(eval + " --disable-top 7", &rc, true);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("disable_top (7) + top_k (2) must be <= n_routed_experts (8)"), std::string::npos) << out;
}

}  // namespace

// The routing entropy op: exact cases (uniform rows: ln E each; one-hot rows: 0, with 0 ln 0 = 0),
// random rows against a plain fp64 sum, and the same bits at 1, 2 and 3 threads (fixed blocks).
TEST(RoutingEntropy, ExactCasesAndThreadIndependence) {
  const int64_t E = 16, n = 1000;
  std::vector<float> uniform((size_t)(n * E), 1.0f / E), onehot((size_t)(n * E), 0.0f), rnd((size_t)(n * E));
  for (int64_t t = 0; t < n; ++t) onehot[(size_t)(t * E + t % E)] = 1.0f;
  // 1/16 is exact in fp32, so each row is exactly ln 16 up to fp64 rounding of the 16 terms.
  EXPECT_NEAR(ops::routing_entropy_sum(uniform.data(), n, E), (double)n * std::log(16.0), 1e-9 * n);
  EXPECT_EQ(ops::routing_entropy_sum(onehot.data(), n, E), 0.0);
  Rng rng(3);
  for (int64_t t = 0; t < n; ++t) {
    double z = 0;
    for (int64_t e = 0; e < E; ++e) z += rnd[(size_t)(t * E + e)] = (float)std::exp(3 * rng.normal());
    for (int64_t e = 0; e < E; ++e) rnd[(size_t)(t * E + e)] = (float)(rnd[(size_t)(t * E + e)] / z);
  }
  double want = 0;
  for (float p : rnd)
    if (p > 0) want -= (double)p * std::log((double)p);
  // fp64 sums of 16000 terms of size <= 1 in another order: well inside 1e-9 relative.
  const double got = ops::routing_entropy_sum(rnd.data(), n, E);
  EXPECT_NEAR(got, want, 1e-9 * std::abs(want));
  const int was = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    EXPECT_EQ(ops::routing_entropy_sum(rnd.data(), n, E), got) << threads << " threads";
  }
  omp_set_num_threads(was);
}
