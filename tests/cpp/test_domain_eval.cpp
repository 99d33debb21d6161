// Multi-domain data and the per-domain specialisation analyses: evaluate_domains against the
// PyTorch oracle (tests/oracle/domain_oracle.py computes the loss, load counts, mutual information,
// norms and output cosines independently), the figures of hand-made tables, the domain labels of a
// data split (round trip, older data, hostile files), deduplication and the hash split, and the
// CLI from `prepare --manifest` to `eval --per-domain` and `plot --per-domain`.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "core/error.h"
#include "experiment/domain_eval.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/model.h"
#include "report/domain_charts.h"
#include "test_util.h"
#include "train/corpus.h"
#include "train/data.h"

using namespace dsmoe;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// fp32 engine vs fp64 oracle on the same fp32 weights: the model-level budget of test_model.cpp /
// test_routing.cpp, 2e-5 of a tensor's scale, bounds the loss and every expert output; a norm of a
// vector with relative error <= r is within r of the exact norm. A cosine of two vectors each off by
// a relative r moves by at most ~2r (1 + |cos|) <= 4r: 8e-5.
constexpr double kRel = 2e-5, kCosAbs = 8e-5;

struct DomainCase {
  std::string name, config;
};
void PrintTo(const DomainCase& c, std::ostream* os) { *os << c.name; }

class DomainEvalVsTorch : public ::testing::TestWithParam<DomainCase> {};

TEST_P(DomainEvalVsTorch, LossLoadMutualInformationNormsAndCosines) {
  const DomainCase& c = GetParam();
  const std::string cfg_path = test::source_dir() + "/tests/oracle/configs/" + c.config + ".json";
  const std::string out = test::tmp_path("domain_eval_" + c.name + ".safetensors");
  const int64_t B = 2, T = 16, D = 3, K = 4;
  ASSERT_TRUE(test::run_oracle("domain_oracle.py",
                               {"--config", cfg_path, "--out", out, "--seed", std::to_string(test::test_seed()),
                                "--batch", std::to_string(B), "--seq", std::to_string(T), "--domains",
                                std::to_string(D), "--sample-every", std::to_string(K)}));
  SafeTensorsFile f(out);
  const ModelConfig m = load_config(cfg_path).model;
  const int64_t E = m.n_routed_experts;
  Model model(m);
  for (const auto& t : model.layout().hf_tensors()) f.read_f32_into(t.name, model.params().data() + t.offset, t.shape);
  // Domain d's B rows of T + 1 tokens, one document per row: evaluate's B evenly spaced windows of a
  // subset of B (T + 1) tokens start at w (T + 1), so they are exactly the oracle's rows.
  const auto tokens = f.read_i32("tokens", {D, B, T + 1});
  TokenSplit s;
  s.vocab_size = m.vocab_size;
  s.tokenizer = "bytes";
  s.domains = {"alpha", "beta", "gamma"};
  for (int64_t d = 0; d < D; ++d)
    for (int64_t b = 0; b < B; ++b) {
      s.tokens.insert(s.tokens.end(), tokens.begin() + (d * B + b) * (T + 1), tokens.begin() + (d * B + b + 1) * (T + 1));
      s.doc_ends.push_back((int32_t)s.tokens.size());
      s.doc_domains.push_back((int32_t)d);
    }
  DomainEvalOptions o;
  o.batch = B;
  o.seq_len = T;
  o.n_batches = 1;
  o.sample_every = K;
  const json r = evaluate_domains(model, s, o);
  const std::vector<double> loss = test::read_f64(f, "loss");
  for (int64_t d = 0; d < D; ++d)
    EXPECT_NEAR(r["loss"][s.domains[d]].get<double>(), loss[d], kRel * loss[d]) << "domain " << s.domains[d];
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < m.num_hidden_layers; ++l) moe_layers += m.is_moe_layer(l);
  ASSERT_EQ((int64_t)r["layers"].size(), moe_layers);
  for (const json& layer : r["layers"]) {
    const std::string L = std::to_string(layer["layer"].get<int64_t>());
    SCOPED_TRACE("layer " + L);
    // Same experts chosen (margins >= 1e-5 >> fp32 rounding): the counts are exact.
    const auto& lt = f.get("load." + L);
    ASSERT_EQ(lt.shape, (std::vector<int64_t>{D, E}));
    std::vector<int64_t> want(D * E);
    std::memcpy(want.data(), lt.data, want.size() * 8);
    for (int64_t d = 0; d < D; ++d)
      for (int64_t e = 0; e < E; ++e)
        EXPECT_EQ(layer["load"][d][e].get<int64_t>(), want[d * E + e]) << "domain " << d << " expert " << e;
    // From equal counts, in double on both sides: only summation order differs (~1e-15).
    for (const char* key : {"mi", "h_domain", "h_expert", "mi_norm"}) {
      const std::string jkey = std::string(key) == "mi"         ? "mutual_information"
                               : std::string(key) == "h_domain" ? "domain_entropy"
                               : std::string(key) == "h_expert" ? "expert_entropy"
                                                                : "mutual_information_normalised";
      const double w = test::read_f64(f, std::string(key) + "." + L)[0];
      EXPECT_NEAR(layer[jkey].get<double>(), w, 1e-12 + 1e-12 * std::fabs(w)) << jkey;
    }
    const std::vector<double> top = test::read_f64(f, "top_frac." + L);
    for (int64_t e = 0; e < E; ++e) EXPECT_NEAR(layer["top_domain_fraction"][e].get<double>(), top[e], 1e-12) << e;
    const std::vector<double> routed = test::read_f64(f, "routed_norm." + L);
    for (int64_t d = 0; d < D; ++d)
      EXPECT_NEAR(layer["routed_norm_mean"][s.domains[d]].get<double>(), routed[d], kRel * routed[d]) << d;
    if (m.n_shared_experts > 0) {
      const std::vector<double> shared = test::read_f64(f, "shared_norm." + L);
      for (int64_t d = 0; d < D; ++d) {
        EXPECT_NEAR(layer["shared_norm_mean"][s.domains[d]].get<double>(), shared[d], kRel * shared[d]) << d;
        EXPECT_NEAR(layer["shared_over_routed"][s.domains[d]].get<double>(), shared[d] / routed[d],
                    2 * kRel * shared[d] / routed[d]) << d;
      }
    } else {
      EXPECT_TRUE(layer["shared_norm_mean"][s.domains[0]].is_null());
    }
    const std::vector<double> cos = test::read_f64(f, "cos." + L);
    for (int64_t a = 0; a < E; ++a)
      for (int64_t b = 0; b < E; ++b)
        EXPECT_NEAR(layer["output_cosine"][a][b].get<double>(), cos[a * E + b], kCosAbs) << a << "," << b;
    EXPECT_NEAR(layer["output_cosine_mean"].get<double>(), test::read_f64(f, "cos_mean." + L)[0], kCosAbs);
    EXPECT_EQ(layer["output_sampled_tokens"].get<int64_t>(), D * ((B * T + K - 1) / K));
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, DomainEvalVsTorch,
                         ::testing::Values(DomainCase{"deepseekmoe", "deepseekmoe"},  // 2 shared + 3 of 8
                                           DomainCase{"gshard", "gshard"}),           // no shared, top-2
                         [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------- figures of hand-made tables

TEST(DomainExpertFigures, IndependentTableHasZeroInformation) {
  // Every domain spreads its selections over the experts in the same proportions.
  const DomainExpertFigures f = domain_expert_figures({{10, 20, 30}, {20, 40, 60}});
  EXPECT_NEAR(f.mutual_information, 0.0, 1e-15);
  EXPECT_NEAR(f.mi_normalised, 0.0, 1e-15);
  EXPECT_NEAR(f.domain_entropy, -(1.0 / 3) * std::log(1.0 / 3) - (2.0 / 3) * std::log(2.0 / 3), 1e-15);
  EXPECT_EQ(f.top_domain, (std::vector<int32_t>{1, 1, 1}));
  for (double v : f.top_domain_fraction) EXPECT_NEAR(v, 2.0 / 3, 1e-15);
}

TEST(DomainExpertFigures, OneExpertPerDomainIsFullInformation) {
  // Domain d uses expert d only (and expert 3 nobody): I = H(domain) = ln 3, normalised 1.
  const DomainExpertFigures f = domain_expert_figures({{5, 0, 0, 0}, {0, 5, 0, 0}, {0, 0, 5, 0}});
  EXPECT_NEAR(f.mutual_information, std::log(3.0), 1e-15);
  EXPECT_NEAR(f.mi_normalised, 1.0, 1e-15);
  EXPECT_EQ(f.top_domain, (std::vector<int32_t>{0, 1, 2, -1}));
  EXPECT_TRUE(std::isnan(f.top_domain_fraction[3])) << "an expert without tokens has no top domain";
  EXPECT_EQ(f.top_domain_fraction[0], 1.0);
  // Four domains, two experts, domains 0-1 on expert 0 and 2-3 on expert 1: the expert tells the
  // domain's half (I = ln 2 = H(expert) < H(domain) = ln 4), which the min normalisation calls 1.
  const DomainExpertFigures g = domain_expert_figures({{7, 0}, {7, 0}, {0, 7}, {0, 7}});
  EXPECT_NEAR(g.mutual_information, std::log(2.0), 1e-15);
  EXPECT_NEAR(g.domain_entropy, std::log(4.0), 1e-15);
  EXPECT_NEAR(g.mi_normalised, 1.0, 1e-15);
  EXPECT_EQ(g.top_domain_fraction, (std::vector<double>{0.5, 0.5}));
  EXPECT_TRUE(test::error_mentions([] { domain_expert_figures({{1, 2}, {3}}); }, {"row 1 has 1 experts"}));
  EXPECT_TRUE(test::error_mentions([] { domain_expert_figures({{1, -2}}); }, {"C[0][1] = -2 is negative"}));
}

// ---------------------------------------------------------------- domain labels of a split

TokenSplit labelled_split() {
  TokenSplit s;
  s.vocab_size = 16;
  s.tokenizer = "bytes";
  s.tokens = {1, 2, 3, 4, 5, 6, 7};
  s.domains = {"prose", "code"};
  s.doc_ends = {3, 5, 7};
  s.doc_domains = {0, 1, 0};
  return s;
}

TEST(DomainLabels, RoundTripSubsetsAndOlderDataWithout) {
  const std::string dir = test::tmp_path("domain_labels");
  fs::remove_all(dir);
  save_split(dir, "val", labelled_split());
  const TokenSplit s = load_split(dir, "val");
  EXPECT_EQ(s.domains, (std::vector<std::string>{"prose", "code"}));
  EXPECT_EQ(s.doc_ends, (std::vector<int32_t>{3, 5, 7}));
  EXPECT_EQ(s.doc_domains, (std::vector<int32_t>{0, 1, 0}));
  EXPECT_EQ(s.domain_subset(0).tokens, (std::vector<int32_t>{1, 2, 3, 6, 7}));
  EXPECT_EQ(s.domain_subset(1).tokens, (std::vector<int32_t>{4, 5}));
  // Data prepared before domain labels existed: the same file without the three fields.
  TokenSplit old = labelled_split();
  old.domains.clear();
  old.doc_ends.clear();
  old.doc_domains.clear();
  save_split(dir, "train", old);
  const TokenSplit o = load_split(dir, "train");
  EXPECT_FALSE(o.has_domains());
  EXPECT_EQ(o.tokens, old.tokens);
}

// A split file written field by field, so that each can be made wrong.
void write_hostile(const std::string& path, const std::vector<int32_t>& ends, const std::vector<int32_t>& doms,
                   const std::string& names, bool with_ends = true, bool with_doms = true) {
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7};
  SafeTensorsWriter w;
  w.add("tokens", DType::I32, {7}, tokens.data());
  if (with_ends) w.add("doc_ends", DType::I32, {(int64_t)ends.size()}, ends.data());
  if (with_doms) w.add("doc_domains", DType::I32, {(int64_t)doms.size()}, doms.data());
  w.set_metadata("vocab_size", "16");
  w.set_metadata("tokenizer", "bytes");
  if (!names.empty()) w.set_metadata("domains", names);
  w.write(path);
}

TEST(DomainLabels, HostileLabelsAreRefusedNamingTheField) {
  const std::string dir = test::tmp_path("domain_hostile");
  fs::create_directories(dir);
  const std::string p = dir + "/val.safetensors";
  struct Case {
    std::vector<int32_t> ends, doms;
    std::string names;
    bool with_ends, with_doms;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {{3, 7}, {0, 1}, "", true, true, {"partial domain labels", "'domains' missing"}},
      {{3, 7}, {0, 1}, "[\"a\",\"b\"]", false, true, {"partial domain labels", "'doc_ends' missing"}},
      {{3, 7}, {0, 1}, "[\"a\",\"b\"]", true, false, {"'doc_domains' missing"}},
      {{3, 7}, {0, 2}, "[\"a\",\"b\"]", true, true, {"doc_domains[1] = 2 is outside [0, 2)"}},
      {{3, 7}, {0, -1}, "[\"a\",\"b\"]", true, true, {"doc_domains[1] = -1"}},
      {{3, 3, 7}, {0, 0, 1}, "[\"a\",\"b\"]", true, true, {"doc_ends[1] = 3 must be greater than the previous end 3"}},
      {{3, 6}, {0, 1}, "[\"a\",\"b\"]", true, true, {"the last doc_ends is 6, but the split holds 7 tokens"}},
      {{3, 9}, {0, 1}, "[\"a\",\"b\"]", true, true, {"the last doc_ends is 9"}},
      {{3, 7}, {0}, "[\"a\",\"b\"]", true, true, {"must have the same, non-zero length"}},
      {{3, 7}, {0, 1}, "[\"a\",\"a\"]", true, true, {"\"a\" appears twice"}},
      {{3, 7}, {0, 1}, "[\"a\",\"\"]", true, true, {"must be 1 to 256 bytes"}},
      {{3, 7}, {0, 1}, "[\"a\",\"b\\n\"]", true, true, {"without control characters"}},
      {{3, 7}, {0, 1}, "[\"a\",3]", true, true, {"holds 3, not a name"}},
      {{3, 7}, {0, 1}, "{\"a\":1}", true, true, {"must be a JSON array of 1 to 1024 names"}},
      {{3, 7}, {0, 1}, "[]", true, true, {"must be a JSON array"}},
      {{3, 7}, {0, 1}, "[\"a\",", true, true, {"must be a JSON array"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    write_hostile(p, c.ends, c.doms, c.names, c.with_ends, c.with_doms);
    std::vector<std::string> needles = c.needles;
    needles.push_back("val.safetensors");
    EXPECT_TRUE(test::error_mentions([&] { load_split(dir, "val"); }, needles)) << "case " << i;
  }
}

// ---------------------------------------------------------------- corpus: dedup and held-out split

std::string words(Rng& rng, int n) {
  static const char* kWords[] = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
                                 "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi"};
  std::string s;
  for (int i = 0; i < n; ++i) s += std::string(kWords[rng.below(16)]) + (i % 12 == 11 ? "\n" : " ");
  return s;
}

TEST(Corpus, DeduplicationRemovesExactAndNearCopiesOnly) {
  Rng rng(test::test_seed());
  LabelledCorpus c;
  const int32_t a = c.domain_index("a", "test"), b = c.domain_index("b", "test");
  const std::string base = words(rng, 400);
  std::string near = base;  // one word of 400 changed: 5 of ~396 shingles differ, Jaccard ~0.97
  near.replace(near.find("alpha"), 5, "ALPHA");
  std::string spaced = base;  // the same words, other whitespace: an exact duplicate after collapsing
  for (char& ch : spaced)
    if (ch == '\n') ch = ' ';
  c.docs = {{base, a, "0"}, {words(rng, 400), a, "1"}, {near, b, "2"}, {spaced, b, "3"}, {words(rng, 400), b, "4"},
            {base, a, "5"}};
  const DedupReport r = deduplicate(c);
  EXPECT_EQ(r.exact, 2u);
  EXPECT_EQ(r.near, 1u);
  EXPECT_EQ(r.exact_by_domain, (std::vector<size_t>{1, 1}));
  EXPECT_EQ(r.near_by_domain, (std::vector<size_t>{0, 1}));
  std::vector<std::string> kept;
  for (const auto& d : c.docs) kept.push_back(d.source);
  EXPECT_EQ(kept, (std::vector<std::string>{"0", "1", "4"})) << "the first copy is kept, independent texts stay";
}

TEST(Corpus, HeldOutByHashIndependentOfOrderWithEveryDomainCovered) {
  Rng rng(test::test_seed());
  LabelledCorpus c;
  for (int i = 0; i < 200; ++i) c.docs.push_back({words(rng, 30), c.domain_index(i < 199 ? "big" : "tiny", "t"), ""});
  c.docs.push_back({words(rng, 30), c.domain_index("tiny", "t"), ""});
  const std::vector<bool> held = choose_held_out(c, 10);
  std::vector<std::string> held_texts;
  size_t tiny_held = 0, big_held = 0;
  for (size_t i = 0; i < c.docs.size(); ++i) {
    if (held[i]) held_texts.push_back(c.docs[i].text);
    (c.docs[i].domain == 1 ? tiny_held : big_held) += held[i];
    if (c.docs[i].domain == 0) EXPECT_EQ(held[i], held_out_by_hash(c.docs[i].text, 10));
  }
  EXPECT_GE(tiny_held, 1u) << "a domain of 2 documents gets one held out";
  // ~1 in 10 of 199 random texts: binomial(199, 0.1) falls outside [2, 49] with probability < 2e-8.
  EXPECT_GE(big_held, 2u);
  EXPECT_LE(big_held, 49u);
  LabelledCorpus shuffled = c;
  std::reverse(shuffled.docs.begin(), shuffled.docs.end());
  const std::vector<bool> held2 = choose_held_out(shuffled, 10);
  std::vector<std::string> held_texts2;
  for (size_t i = 0; i < shuffled.docs.size(); ++i)
    if (held2[i]) held_texts2.push_back(shuffled.docs[i].text);
  std::sort(held_texts.begin(), held_texts.end());
  std::sort(held_texts2.begin(), held_texts2.end());
  EXPECT_EQ(held_texts, held_texts2) << "the held-out set depends on the texts, not their order";
}

TEST(Corpus, ManifestErrorsNameTheLine) {
  const std::string dir = test::tmp_path("manifest_errors");
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir + "/a.txt") << "some text\n";
  std::ofstream(dir + "/bad.txt") << std::string("caf\xe9\n");
  auto manifest = [&](const std::string& body) {
    std::ofstream(dir + "/m.tsv") << body;
    return dir + "/m.tsv";
  };
  EXPECT_TRUE(test::error_mentions([&] { read_manifest(manifest("# c\nprose\ta.txt\nnotab\n")); },
                                   {"m.tsv line 3", "expected \"domain<TAB>path\""}));
  EXPECT_TRUE(test::error_mentions([&] { read_manifest(manifest("prose\tmissing.txt\n")); },
                                   {"line 1", "missing.txt is not a readable file"}));
  EXPECT_TRUE(test::error_mentions([&] { read_manifest(manifest("prose\tbad.txt\n")); },
                                   {"line 1", "bad.txt is not UTF-8 text (invalid byte at offset 3)"}));
  EXPECT_TRUE(test::error_mentions([&] { read_manifest(manifest("\ta.txt\n")); }, {"line 1", "domain ''"}));
  EXPECT_TRUE(test::error_mentions([&] { read_manifest(manifest("# only a comment\n")); }, {"lists no documents"}));
  const LabelledCorpus c = read_manifest(manifest("code\ta.txt\nprose\t" + dir + "/a.txt\n"));
  EXPECT_EQ(c.domains, (std::vector<std::string>{"code", "prose"}));
  ASSERT_EQ(c.docs.size(), 2u);
  EXPECT_EQ(c.docs[1].domain, 1);
  EXPECT_EQ(c.docs[0].text, "some text\n");
}

// ---------------------------------------------------------------- charts

std::vector<std::string> svg_ticks(const std::string& svg) {
  std::vector<std::string> t;
  const std::string key = "class=\"tick\">";
  for (size_t p = svg.find(key); p != std::string::npos; p = svg.find(key, p + 1))
    t.push_back(svg.substr(p + key.size(), svg.find('<', p) - p - key.size()));
  return t;
}

TEST(DomainCharts, ModelsShareOneColourScaleOfLoadOverUniform) {
  // A routes uniformly (every cell 1.0); B sends each domain to one of its 2 experts (2.0 and 0).
  const json a = {{"domains", {"x", "y"}}, {"layers", {{{"layer", 1}, {"experts", 2}, {"load", {{10, 10}, {10, 10}}}}}}};
  const json b = {{"domains", {"x", "y"}}, {"layers", {{{"layer", 1}, {"experts", 2}, {"load", {{20, 0}, {0, 20}}}}}}};
  const std::string dir = test::tmp_path("domain_charts");
  fs::remove_all(dir);
  const auto paths = report::write_domain_load_charts({{"model A", a}, {"B", b}}, dir);
  ASSERT_EQ(paths.size(), 2u);
  EXPECT_EQ(fs::path(paths[0]).filename(), "model_A_domain_load_layer1.svg");
  const std::string sa = test::cli::slurp(paths[0]), sb = test::cli::slurp(paths[1]);
  EXPECT_EQ(svg_ticks(sa), svg_ticks(sb)) << "one colour scale for both";
  ASSERT_FALSE(svg_ticks(sa).empty());
  EXPECT_EQ(std::stod(svg_ticks(sa).back()), 2.0) << "the scale reaches B's maximum, 2 x uniform";
  EXPECT_TRUE(test::cli::contains(sa, ">1.0<")) << "cells labelled with one decimal";
  EXPECT_TRUE(test::cli::contains(sb, ">2.0<"));
  EXPECT_TRUE(test::error_mentions([&] { report::write_domain_load_charts({{"bad", json{{"domains", {"x"}}}}}, dir); },
                                   {"bad: not a `dsmoe eval --per-domain` result"}));
}

// ---------------------------------------------------------------- CLI

TEST(DomainCli, PrepareManifestTrainEvalPerDomainAndPlot) {
  using test::cli::run_cli;
  const std::string dir = test::cli::scratch("domains");
  Rng rng(test::test_seed());
  std::string manifest;
  for (int i = 0; i < 60; ++i) {
    const std::string name = dir + "/doc" + std::to_string(i) + ".txt";
    // Three "domains" of different letters, so that they differ in their bytes.
    std::string text = words(rng, 120);
    if (i % 3 == 1) std::transform(text.begin(), text.end(), text.begin(), ::toupper);
    if (i % 3 == 2) std::replace(text.begin(), text.end(), ' ', '_');
    std::ofstream(name) << text;
    manifest += std::string(i % 3 == 0 ? "lower" : i % 3 == 1 ? "upper" : "under") + "\t" + name + "\n";
  }
  std::ofstream(dir + "/m.tsv") << manifest;
  auto p = run_cli({"prepare", "--manifest", dir + "/m.tsv", "--val-every", "4", "--out", dir + "/data"});
  ASSERT_TRUE(p.ok()) << p.describe();
  const json corpus = json::parse(test::cli::slurp(dir + "/data/corpus.json"));
  ASSERT_EQ(corpus["domains"].size(), 3u);
  for (const json& d : corpus["domains"]) {
    EXPECT_GE(d["val_documents"].get<int64_t>(), 1) << d.dump();
    EXPECT_GT(d["train_tokens"].get<int64_t>(), 0) << d.dump();
  }
  const std::string cfg = test::cli::write_config(dir, "cfg.json");
  p = run_cli(test::cli::train_args(cfg, dir + "/data", dir + "/run"));
  ASSERT_TRUE(p.ok()) << p.describe();
  p = run_cli({"eval", "--model", dir + "/run", "--data", dir + "/data", "--batches", "2", "--per-domain",
               dir + "/pd.json", "--per-domain-charts", dir + "/charts", "--output-sample-every", "4"});
  ASSERT_TRUE(p.ok()) << p.describe();
  const json r = json::parse(test::cli::slurp(dir + "/pd.json"));
  EXPECT_EQ(r["domains"], (json{"lower", "upper", "under"}));
  for (const char* d : {"lower", "upper", "under"}) EXPECT_TRUE(std::isfinite(r["loss"][d].get<double>())) << d;
  ASSERT_FALSE(r["layers"].empty());
  for (const json& l : r["layers"]) {
    for (const char* key : {"mutual_information", "mutual_information_normalised", "output_cosine_mean"})
      EXPECT_TRUE(l[key].is_number()) << key << " " << l[key].dump();
    for (const char* d : {"lower", "upper", "under"}) {
      EXPECT_TRUE(l["routed_norm_mean"][d].is_number());
      EXPECT_TRUE(l["shared_over_routed"][d].is_number());  // the tiny config has a shared expert
    }
  }
  EXPECT_TRUE(test::cli::contains(p.out, "per_domain_loss")) << p.out;
  EXPECT_FALSE(fs::is_empty(dir + "/charts"));
  p = run_cli({"plot", "--per-domain", dir + "/pd.json", dir + "/pd.json", "--out", dir + "/plots"});
  ASSERT_TRUE(p.ok()) << p.describe();
  EXPECT_TRUE(test::cli::contains(p.out, "_domain_load_layer")) << p.out;
  // Data without labels is refused for --per-domain, naming the file; a usage error without the FILE.
  const std::string plain = test::cli::make_dataset(dir + "/plain");
  p = run_cli({"eval", "--model", dir + "/run", "--data", plain, "--per-domain", dir + "/x.json"});
  EXPECT_EQ(p.exit_code, 1) << p.describe();
  EXPECT_TRUE(test::cli::contains(p.err, "has no domain labels")) << p.err;
  p = run_cli({"eval", "--model", dir + "/run", "--data", plain, "--per-domain-charts", dir + "/c"});
  EXPECT_EQ(p.exit_code, 2) << p.describe();
  p = run_cli({"plot"});
  EXPECT_EQ(p.exit_code, 2) << p.describe();
}

}  // namespace
