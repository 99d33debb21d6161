// Hugging Face checkpoints against the PyTorch reference of the official modeling code
// (tests/oracle/hf_oracle.py + model_ref.py): a tiny random DeepSeekMoE written by the oracle in the
// exact HF layout (sharded BF16, single-file F32) must give the oracle's per-token log-probabilities
// and its greedy continuation; a model exported by dsmoe must be read by the oracle and give dsmoe's.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
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

// Tolerance. The oracle runs in float64 on exactly the stored weight values (BF16 values are exact
// in fp32, so dsmoe holds the same numbers); the difference is dsmoe's fp32 rounding only, the
// ModelVsTorch budget: 2e-5 of the tensor's scale for logits (~10 ops per layer, sums of <= ~100
// terms: sqrt(100) * 6e-8 * 30 ~ 2e-5). A log-prob is logit - logsumexp(logits): at most twice the
// logit error, so 4e-5 * max|logit|.
constexpr double kRel = 2e-5;

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

struct OracleOutputs {
  std::vector<std::vector<int32_t>> prompts, greedy;
  std::vector<std::vector<double>> logprob, logits;
};

OracleOutputs read_outputs(const std::string& path, int64_t n_prompts) {
  SafeTensorsFile f(path);
  OracleOutputs o;
  for (int64_t i = 0; i < n_prompts; ++i) {
    const std::string s = std::to_string(i);
    o.prompts.push_back(f.read_i32("prompt." + s));
    o.greedy.push_back(f.read_i32("greedy." + s));
    o.logprob.push_back(test::read_f64(f, "logprob." + s));
    o.logits.push_back(test::read_f64(f, "logits." + s));
  }
  return o;
}

// Everything the engine must reproduce: log-probs (scored alone), prompt logits, greedy
// continuations (all prompts in ONE batch, and each alone).
void check_against_oracle(const std::string& what, InferenceEngine& eng, const OracleOutputs& o, int64_t gen) {
  const ModelConfig& cfg = eng.config();
  const int64_t V = cfg.vocab_size;
  for (size_t i = 0; i < o.prompts.size(); ++i) {
    const auto& p = o.prompts[i];
    const double scale = max_abs(o.logits[i]);
    auto lp = score_tokens(eng, p);
    ASSERT_EQ(lp.size(), p.size() - 1);
    for (size_t t = 0; t < lp.size(); ++t)
      EXPECT_NEAR(lp[t], o.logprob[i][t], 2 * kRel * scale) << what << " prompt " << i << " log p(token " << t + 1 << ")";
    KvCache cache(cfg, (int64_t)p.size());
    std::vector<float> logits;
    Segment seg{&cache, p.data(), (int64_t)p.size()};
    eng.step(std::span<const Segment>(&seg, 1), true, logits);
    std::vector<float> want(o.logits[i].begin(), o.logits[i].end());
    EXPECT_TRUE(test::all_close(what + " logits of prompt " + std::to_string(i), logits.data(), want.data(),
                                (int64_t)want.size(), {(int64_t)p.size(), V}, kRel * scale, kRel));
  }
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = gen;
  auto batch = generate_batch(eng, o.prompts, greedy, 0);
  for (size_t i = 0; i < o.prompts.size(); ++i) {
    EXPECT_EQ(batch[i].tokens, o.greedy[i]) << what << " greedy continuation of prompt " << i << " (batched)";
    auto alone = generate_batch(eng, {o.prompts[i]}, greedy, 0);
    EXPECT_EQ(alone[0].tokens, o.greedy[i]) << what << " greedy continuation of prompt " << i << " (alone)";
  }
}

struct HfCase {
  std::string name, dtype;
  int64_t shard_bytes, expect_files;
};
void PrintTo(const HfCase& c, std::ostream* os) { *os << c.name; }

class HfVsTorch : public ::testing::TestWithParam<HfCase> {};

TEST_P(HfVsTorch, LogprobsAndGreedyMatchTheOfficialSemantics) {
  const HfCase c = GetParam();
  const std::string dir = test::tmp_path("hf_oracle_" + c.name);
  fs::remove_all(dir);
  const std::string out = test::tmp_path("hf_oracle_" + c.name + ".safetensors");
  const int64_t gen = 8;
  ASSERT_TRUE(test::run_oracle("hf_oracle.py", {"--config", test::source_dir() + "/tests/oracle/hf_tiny_config.json",
                                                "--dir", dir, "--out", out, "--seed", std::to_string(test::test_seed()),
                                                "--dtype", c.dtype, "--shard-bytes", std::to_string(c.shard_bytes),
                                                "--prompt-lens", "5,17,2", "--gen", std::to_string(gen)}));
  LoadedModel lm = load_model_dir(dir);
  if (c.expect_files < 0) EXPECT_GT(lm.report.files, 1) << "the oracle should have written shards";
  else EXPECT_EQ(lm.report.files, c.expect_files);
  EXPECT_EQ(lm.report.tensors, (int64_t)lm.model->layout().hf_tensors().size());
  EXPECT_EQ(c.dtype == "bf16" ? lm.report.bf16 : lm.report.f32, lm.report.tensors);
  // Keys absent from config.json take the HF config-class defaults.
  EXPECT_EQ(lm.config.model.aux_loss_alpha, 0.001);
  EXPECT_TRUE(lm.config.model.seq_aux);
  const OracleOutputs want = read_outputs(out, 3);
  InferenceEngine eng(*lm.model);
  check_against_oracle(c.name, eng, want, gen);
  // The inference load keeps a BF16 checkpoint in bf16 (the bf16 GEMV / tile kernels, fp32
  // accumulation on exactly the stored values): the same tolerance holds.
  InferenceModel im = load_inference_model(dir);
  EXPECT_EQ(im.weights->type(), c.dtype == "bf16" ? ops::WType::BF16 : ops::WType::F32);
  InferenceEngine native(*im.weights);
  check_against_oracle(c.name + " (native " + ops::wtype_name(im.weights->type()) + ")", native, want, gen);
}

INSTANTIATE_TEST_SUITE_P(Layouts, HfVsTorch,
                         ::testing::Values(HfCase{"bf16_sharded", "bf16", 12000, -1},
                                           HfCase{"f32_single", "f32", 1LL << 40, 1}),
                         [](const auto& info) { return info.param.name; });

// dsmoe export -> the reference loads it strictly (every tensor, every shape) and its outputs are
// dsmoe's: the exported layout is the one the official modeling code reads.
TEST(HfExport, TheReferenceLoadsAnExportAndAgrees) {
  const std::string src = test::tmp_path("hf_export_src");
  fs::remove_all(src);
  fs::create_directories(src);
  {
    auto j = nlohmann::json::parse(read_text_file(test::source_dir() + "/tests/oracle/hf_tiny_config.json"));
    j["model_type"] = "deepseek";
    write_file_atomic(src + "/config.json", j.dump());
  }
  Config cfg = load_hf_config(src);
  Model model(cfg.model);
  Rng rng(test::test_seed());
  model.init_weights(rng, 0.3);
  for (auto& p : model.params()) p = bf16_to_f32(f32_to_bf16(p));  // exact in BF16 -> no export rounding
  const std::string dir = test::tmp_path("hf_export_bf16");
  fs::remove_all(dir);
  ExportOptions o;
  o.dtype = DType::BF16;
  o.max_shard_bytes = 16000;
  const int64_t shards = export_hf(dir, cfg, model, o);
  EXPECT_GT(shards, 1);
  const std::string out = test::tmp_path("hf_export_bf16.safetensors");
  const int64_t gen = 6;
  ASSERT_TRUE(test::run_oracle("hf_oracle.py", {"--load", "--dir", dir, "--out", out, "--seed",
                                                std::to_string(test::test_seed()), "--prompt-lens", "7,3",
                                                "--gen", std::to_string(gen)}));
  LoadedModel lm = load_model_dir(dir);
  EXPECT_EQ(lm.report.files, shards);
  EXPECT_EQ(lm.report.bf16, lm.report.tensors);
  ASSERT_EQ(lm.model->params().size(), model.params().size());
  EXPECT_EQ(std::memcmp(lm.model->params().data(), model.params().data(), model.params().size() * 4), 0)
      << "import(export(m)) must be exact for BF16-representable weights";
  InferenceEngine eng(*lm.model);
  check_against_oracle("export", eng, read_outputs(out, 2), gen);
}

}  // namespace
