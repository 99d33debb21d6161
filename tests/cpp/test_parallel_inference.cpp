// Inference with the routed experts spread over processes (`mpirun -np P dsmoe score|generate|eval`)
// against one process, on a small trained DeepSeekMoE run folder (1 shared + 8 routed experts, top-2,
// first layer dense): score log-probs, greedy generations, the evaluation loss and eval's routing and
// per-domain analyses at P = 2 and 4 (expert-parallel 2 and 4, and 2 x data-parallel 2; the
// analyses also data-parallel only), and the loader that reads only a rank's experts.
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
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "cli_runner.h"
#include "infer/engine.h"
#include "infer/hf_checkpoint.h"
#include "test_util.h"
#include "train/data.h"

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

// The fixture's data with its val split relabelled as documents of three domains (each drawn from
// its own few words, so that the domains differ in their bytes), for `eval --per-domain`.
std::string domain_dataset(const Fixture& f) {
  const std::string dir = (fs::path(f.dir) / "domains").string();
  if (fs::exists(dir)) return dir;
  fs::create_directories(dir);
  fs::copy_file(fs::path(f.data) / "train.safetensors", fs::path(dir) / "train.safetensors");
  static const std::vector<std::vector<std::string>> words = {
      {"the ", "cat ", "sat ", "on ", "a ", "mat. "}, {"dogs ", "run ", "fast ", "and "}, {"birds ", "sing\n", "a "}};
  Rng rng(7);
  TokenSplit val;
  val.vocab_size = 256;
  val.tokenizer = "bytes";
  val.domains = {"cats", "dogs", "birds"};
  for (int doc = 0; doc < 12; ++doc) {
    const auto& w = words[doc % 3];
    while (val.tokens.size() < (size_t)(doc + 1) * 300)
      for (const char* c = w[rng.below(w.size())].c_str(); *c; ++c) val.tokens.push_back((unsigned char)*c);
    val.doc_ends.push_back((int64_t)val.tokens.size());
    val.doc_domains.push_back(doc % 3);
  }
  save_split(dir, "val", val);
  return dir;
}

// Walks two JSON documents of the same shape: integers (counts) equal, floats within tol(path, b)
// of b, everything else equal; a difference names its path.
void expect_json_close(const json& a, const json& b, const std::function<double(const std::string&, double)>& tol,
                       const std::string& path = "") {
  if (b.is_number_float() || a.is_number_float()) {
    ASSERT_TRUE(a.is_number() && b.is_number()) << path << ": " << a.dump() << " vs " << b.dump();
    EXPECT_NEAR(a.get<double>(), b.get<double>(), tol(path, b.get<double>())) << path;
  } else if (b.is_object()) {
    ASSERT_TRUE(a.is_object()) << path;
    ASSERT_EQ(a.size(), b.size()) << path << ": " << a.dump().substr(0, 200);
    for (const auto& [k, v] : b.items()) {
      ASSERT_TRUE(a.contains(k)) << path << "." << k << " is missing";
      expect_json_close(a[k], v, tol, path + "." + k);
    }
  } else if (b.is_array()) {
    ASSERT_TRUE(a.is_array() && a.size() == b.size()) << path << ": " << a.dump().substr(0, 200);
    for (size_t i = 0; i < b.size(); ++i) expect_json_close(a[i], b[i], tol, path + "[" + std::to_string(i) + "]");
  } else {
    EXPECT_EQ(a, b) << path;
  }
}

// `eval --routing-stats` and `--per-domain` under mpirun: every rank routes its rows of each batch
// and the counts are summed, so every count (expert load, co-occurrence, repeats, tokens per domain,
// the tokens whose expert outputs were compared) equals the one-process run exactly, as do the
// figures computed from counts alone (mutual information, top-domain fractions). The sums of
// values (routing entropies, output norms, cosines) are sums of functions of the MoE layer's input
// and output, which differ between layouts by the reduction order of the routed experts' products
// only: 1e-5 of their scale, the budget of the logits (above). A norm moves by that relative, a ratio
// of two norms by twice it, a cosine by 2e-5 absolute (its scale is 1); entropies (sums of positive
// terms) get the ratios' 2e-5 relative. Measured: at most 7e-8 relative on any field. Losses:
// the evaluation loss's tolerance. --output-sample-every 3 does not divide a rank's share of a
// batch (2 rows of 32 tokens), so each rank must sample the tokens one process would.
TEST(ParallelEval, RoutingStatsAndPerDomainEqualOneProcess) {
  const Fixture& f = fixture();
  const std::string data = domain_dataset(f), out = (fs::path(f.dir) / "analyses").string();
  fs::create_directories(out);
  auto run = [&](int np, const std::string& tag, const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"eval", "--model", f.run, "--data", data, "--batches", "2", "--routing-stats",
                                     out + "/rs-" + tag + ".json", "--per-domain", out + "/pd-" + tag + ".json",
                                     "--output-sample-every", "3"};
    args.insert(args.end(), extra.begin(), extra.end());
    return np == 1 ? run_cli(args) : run_mpi(np, args);
  };
  auto read = [&](const std::string& name) {
    json j = json::parse(slurp(out + "/" + name));
    j.erase("model");
    return j;
  };
  auto tol = [&](const std::string& path, double want) {
    const bool loss = path.find("loss") != std::string::npos && path.find("layers") == std::string::npos;
    if (loss) return 2e-5 * f.logit_scale + 1e-6 * std::fabs(want);
    if (path.find("perplexity") != std::string::npos) return (2e-5 * f.logit_scale + 1e-6) * std::fabs(want);
    // A cosine moves by at most 2 delta when its vectors move by delta relative: 2e-5 of its scale,
    // which is 1 (its mean over tokens, near 0 for unrelated experts, has no relative bound).
    if (path.find("cosine") != std::string::npos) return 2e-5;
    return 2e-5 * std::fabs(want) + 1e-12;  // sums of positive terms (entropies, norms) and their ratios
  };
  Proc one = run(1, "P1", {});
  ASSERT_TRUE(one.ok()) << one.describe();
  one = run(1, "P1-no-outputs", {"--no-expert-outputs"});
  ASSERT_TRUE(one.ok()) << one.describe();
  const json rs1 = read("rs-P1.json"), pd1 = read("pd-P1.json"), pd1_no = read("pd-P1-no-outputs.json");
  ASSERT_FALSE(pd1["layers"].empty());
  EXPECT_GT(pd1["layers"][0]["output_sampled_tokens"].get<int64_t>(), 0);
  struct Layout {
    int np, ep;
    bool outputs;
  };
  for (const Layout& l : {Layout{2, 1, true}, Layout{4, 1, true}, Layout{2, 2, false}, Layout{4, 2, false}}) {
    const std::string tag = fmt::format("P{}-EP{}", l.np, l.ep);
    std::vector<std::string> extra = {"--ep", std::to_string(l.ep)};
    if (!l.outputs) extra.push_back("--no-expert-outputs");
    const Proc many = run(l.np, tag, extra);
    ASSERT_TRUE(many.ok()) << tag << ": " << many.describe();
    SCOPED_TRACE(tag);
    expect_json_close(read("rs-" + tag + ".json"), rs1, tol);
    expect_json_close(read("pd-" + tag + ".json"), l.outputs ? pd1 : pd1_no, tol);
  }
  // Expert parallelism cannot compare every expert's output on one token: a usage error saying what to do.
  const Proc refused = run(2, "refused", {"--ep", "2"});
  EXPECT_EQ(refused.exit_code, 2) << refused.describe();
  EXPECT_TRUE(contains(refused.err, "add --no-expert-outputs, or run with --ep 1")) << refused.err;
  EXPECT_FALSE(fs::exists(out + "/pd-refused.json"));
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
