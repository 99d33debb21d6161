// Inference with the routed experts spread over processes (`mpirun -np P dsmoe score|generate|eval`)
// against one process, on a small trained DeepSeekMoE run folder (1 shared + 8 routed experts, top-2,
// first layer dense): score log-probs, greedy generations and the evaluation loss at P = 2 and 4
// (expert-parallel 2 and 4, and 2 x data-parallel 2), and the loader that reads only a rank's experts.
//
// Tolerance of the log-probs. A window's arithmetic is the same on every layout but for the routed
// experts' products, which run on the rows of every rank that chose the expert (one process: the
// rows of one window): another blocking of the same length-H and length-I fp32 dot products. The
// MoePaths tests bound such a difference by 1e-5 of the logits' scale (max |logit|), the budget used
// for every reduction-order-only comparison of logits here. log p(t) = x_t - logsumexp(x) moves by
// at most |dx_t| + max_j |dx_j| <= 2 max |dx| (logsumexp is 1-Lipschitz in the max norm), so the
// log-probs get 2e-5 max |logit| (the fp64 log-softmax itself adds ~1e-15, nothing at this scale).
// The evaluation loss is a mean of such terms: the same 2e-5 max |logit|, plus 1e-6 of the loss for
// its fp32 sums over each rank's tokens taken in another grouping (gamma_n, n <= 64 tokens per row).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "cli_runner.h"
#include "infer/engine.h"
#include "infer/hf_checkpoint.h"
#include "test_util.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace test::cli;

struct Fixture {
  std::string dir, data, run, ids;
  double logit_scale = 0;  // max |logit| over the scored windows' first one (the tolerances' scale)
  std::vector<std::vector<int32_t>> seqs;
};

const Fixture& fixture() {
  static Fixture f;
  if (!f.run.empty()) return f;
  f.dir = test::tmp_path("parallel_inference_" + std::to_string(getpid()));
  fs::remove_all(f.dir);
  fs::create_directories(f.dir);
  f.data = make_dataset((fs::path(f.dir) / "data").string());
  // init_std 0.2: sharp routers, so no token's k-th and (k+1)-th experts are near-tied (a tie within
  // the layouts' rounding difference could flip a choice: see test_parallel_training).
  const std::string cfg = write_config(f.dir, "config.json",
                                       json{{"training", {{"init_std", 0.2}, {"steps", 3}, {"batch_size", 4}}}});
  f.run = (fs::path(f.dir) / "run").string();
  const Proc p = run_cli(train_args(cfg, f.data, f.run), 120);
  EXPECT_TRUE(p.ok()) << p.describe();
  // Sequences of several lengths: with --ctx 16 they make 10 windows of uneven sizes, so every
  // layout has rounds where some ranks have no window left (their empty steps still serve experts).
  Rng rng(test::test_seed());
  std::ofstream ids((fs::path(f.dir) / "ids.jsonl").string());
  for (int64_t n : {40, 17, 2, 31, 23}) {
    f.seqs.push_back(test::random_tokens(rng, n, 256));
    ids << json(f.seqs.back()).dump() << "\n";
  }
  f.ids = (fs::path(f.dir) / "ids.jsonl").string();
  LoadedModel lm = load_model_dir(f.run);
  InferenceEngine eng(*lm.model);
  for (const auto& s : f.seqs) {
    KvCache cache(lm.config.model, 16);
    std::vector<float> logits;
    const Segment seg{&cache, s.data(), std::min<int64_t>(16, (int64_t)s.size())};
    eng.step(std::span<const Segment>(&seg, 1), true, logits);
    for (float v : logits) f.logit_scale = std::max(f.logit_scale, (double)std::fabs(v));
  }
  return f;
}

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& extra) {
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

json score(const Fixture& f, int np, const std::vector<std::string>& extra = {}) {
  const auto args = with({"score", "--model", f.run, "--ids-jsonl", f.ids, "--ctx", "16"}, extra);
  const Proc p = np == 1 ? run_cli(args) : run_mpi(np, args);
  EXPECT_TRUE(p.ok()) << p.describe();
  return p.ok() ? json::parse(p.out) : json();
}

class ParallelScore : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(ParallelScore, LogprobsEqualOneProcess) {
  const auto [np, ep] = GetParam();
  const Fixture& f = fixture();
  const json one = score(f, 1);
  const json many = score(f, np, ep > 0 ? std::vector<std::string>{"--ep", std::to_string(ep)} : std::vector<std::string>{});
  ASSERT_TRUE(one.is_object() && many.is_object());
  ASSERT_EQ(one["sequences"].size(), f.seqs.size());
  ASSERT_EQ(many["sequences"].size(), f.seqs.size());
  const double tol = 2e-5 * f.logit_scale;
  double worst = 0;
  for (size_t q = 0; q < f.seqs.size(); ++q) {
    const auto a = one["sequences"][q]["logprobs"].get<std::vector<double>>();
    const auto b = many["sequences"][q]["logprobs"].get<std::vector<double>>();
    ASSERT_EQ(a.size(), f.seqs[q].size() - 1) << "sequence " << q;
    ASSERT_EQ(b.size(), a.size()) << "sequence " << q;
    for (size_t i = 0; i < a.size(); ++i) {
      worst = std::max(worst, std::fabs(a[i] - b[i]));
      EXPECT_NEAR(b[i], a[i], tol) << "P" << np << " sequence " << q << " token " << i + 1;
    }
  }
  EXPECT_NEAR(many["mean_nll"].get<double>(), one["mean_nll"].get<double>(), tol);
  EXPECT_EQ(many["tokens_scored"], one["tokens_scored"]);
  std::printf("[ stats    ] P%d: worst log-prob difference %.3g (budget %.3g)\n", np, worst, tol);
}

INSTANTIATE_TEST_SUITE_P(Layouts, ParallelScore,
                         ::testing::Values(std::pair{2, 0}, std::pair{4, 0}, std::pair{4, 2}),
                         [](const auto& info) {
                           return "P" + std::to_string(info.param.first) +
                                  (info.param.second ? "_EP" + std::to_string(info.param.second) : "_EPall");
                         });

// Greedy generation of three prompts (spread over the ranks: a rank may hold none) gives the same
// tokens as one process. Greedy picks an argmax: the same unless two logits are within the layouts'
// rounding difference (2e-5 of their scale), which sharp routers and a trained head make rare.
TEST(ParallelGenerate, GreedyTokensEqualOneProcess) {
  const Fixture& f = fixture();
  const std::vector<std::string> args = {"generate", "--model", f.run, "--json", "--temperature", "0",
                                         "--max-new-tokens", "12", "--ignore-eos", "--prompt-ids", "5,6,7",
                                         "--prompt-ids", "40,41", "--prompt-ids", "100,3,9,27,81"};
  const Proc one = run_cli(args);
  ASSERT_TRUE(one.ok()) << one.describe();
  for (int np : {2, 4}) {
    const Proc many = run_mpi(np, args);
    ASSERT_TRUE(many.ok()) << many.describe();
    EXPECT_EQ(many.out, one.out) << "P" << np;  // ids, text and finish reasons, one line per prompt, from rank 0
    EXPECT_TRUE(contains(many.err, "expert-parallel " + std::to_string(np))) << many.err;
  }
}

TEST(ParallelEval, LossEqualsOneProcess) {
  const Fixture& f = fixture();
  const std::vector<std::string> args = {"eval", "--model", f.run, "--data", f.data, "--batches", "3"};
  const Proc one = run_cli(args);
  ASSERT_TRUE(one.ok()) << one.describe();
  const double loss = json::parse(one.out)["loss"].get<double>();
  for (const auto& [np, ep] : {std::pair{2, 2}, std::pair{4, 4}, std::pair{4, 2}}) {
    const Proc many = run_mpi(np, with(args, {"--ep", std::to_string(ep)}));
    ASSERT_TRUE(many.ok()) << many.describe();
    const json j = json::parse(many.out);  // rank 0 alone prints: one JSON object
    EXPECT_NEAR(j["loss"].get<double>(), loss, 2e-5 * f.logit_scale + 1e-6 * loss) << "P" << np << " EP" << ep;
  }
}

// --ep that cannot split the experts or the processes is a usage error naming the numbers.
TEST(ParallelInferenceErrors, RefusesLayoutsThatDoNotSplit) {
  const Fixture& f = fixture();
  Proc p = run_mpi(3, {"score", "--model", f.run, "--ids-jsonl", f.ids, "--ep", "3"});
  EXPECT_FALSE(p.ok()) << p.describe();
  EXPECT_TRUE(contains(p.err, "--ep (3) must divide n_routed_experts (8)")) << p.err;
  p = run_mpi(3, {"score", "--model", f.run, "--ids-jsonl", f.ids});  // the default E = P = 3
  EXPECT_FALSE(p.ok()) << p.describe();
  EXPECT_TRUE(contains(p.err, "8 routed experts cannot be split over the 3 processes")) << p.err;
  p = run_mpi(2, {"score", "--model", f.run, "--ids-jsonl", f.ids, "--ep", "4"});
  EXPECT_FALSE(p.ok()) << p.describe();
  EXPECT_TRUE(contains(p.err, "--ep 4 does not divide the 2 processes")) << p.err;
}

// A rank's load reads its routed experts only: the weights hold those (the same values as the whole
// model's), and the other experts' tensors are never read.
TEST(ExpertShardLoading, ReadsOnlyTheShardsExperts) {
  const Fixture& f = fixture();
  InferenceModel whole = load_inference_model(f.run, ops::WType::F32);
  const ExpertShard shard{4, 2};
  InferenceModel part = load_inference_model(f.run, ops::WType::F32, {}, Checksums::Verify, shard);
  const ModelConfig& m = whole.config.model;
  const int64_t H = m.hidden_size, I = m.moe_intermediate_size;
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < m.num_hidden_layers; ++l) {
    if (!m.is_moe_layer(l)) continue;
    ++moe_layers;
    const MoeWeights& a = whole.weights->layer(l).moe;
    const MoeWeights& b = part.weights->layer(l).moe;
    ASSERT_EQ(b.experts_gate_up.rows, shard.count * 2 * I);
    ASSERT_EQ(b.experts_down.rows, shard.count * H);
    const float* ga = (const float*)a.experts_gate_up.data + shard.first * 2 * I * H;
    const float* da = (const float*)a.experts_down.data + shard.first * H * I;
    EXPECT_TRUE(test::all_close("layer " + std::to_string(l) + " experts gate_up", (const float*)b.experts_gate_up.data,
                                ga, shard.count * 2 * I * H, {shard.count, 2 * I, H}, 0, 0));
    EXPECT_TRUE(test::all_close("layer " + std::to_string(l) + " experts down", (const float*)b.experts_down.data, da,
                                shard.count * H * I, {shard.count, H, I}, 0, 0));
  }
  // Each routed expert is 3 HF tensors (gate, up, down): the others' were skipped.
  EXPECT_EQ(whole.report.tensors - part.report.tensors, moe_layers * (m.n_routed_experts - shard.count) * 3);
  EXPECT_EQ(whole.weights->bytes() - part.weights->bytes(),
            moe_layers * (m.n_routed_experts - shard.count) * 3 * H * I * 4);
}

// The one-process commands refuse to run under mpirun, with exit 2 and a message, before they load
// anything or (serve) bind a port: P servers of one whole model each would not be expert parallelism.
TEST(ParallelInferenceErrors, ServeAndChatRefuseSeveralProcesses) {
  const Fixture& f = fixture();
  struct Case {
    std::vector<std::string> args;
    const char* message;
  };
  for (const Case& c : {Case{{"serve", "--model", f.run, "--port", "0"}, "serve runs in one process"},
                        Case{{"chat", "--model", f.run}, "chat runs in one process"}}) {
    const Proc p = run_mpi(2, c.args, 60);
    EXPECT_EQ(p.exit_code, 2) << p.describe();
    EXPECT_FALSE(p.signaled) << p.describe();
    EXPECT_TRUE(contains(p.err, c.message) && contains(p.err, "start it without mpirun")) << p.err;
    EXPECT_FALSE(contains(p.err, "listening on")) << p.err;
  }
}

}  // namespace
}  // namespace dsmoe
