// The paper-reproduction suite (src/experiment): the quick mode of configs/paper/suite.json as a
// smoke test (every model trains, every analysis runs, the report and its images exist and every
// number is finite: not which model wins), reuse of finished runs, the suite's validation errors,
// config inheritance ("extends"), and the report's verdict rule on synthetic results whose answer
// is known by construction.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "experiment/report.h"
#include "experiment/runner.h"
#include "experiment/suite.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/params.h"
#include "test_util.h"
#include "train/data.h"

using namespace dsmoe;
using namespace dsmoe::experiment;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::string kSuite = std::string(DSMOE_SOURCE_DIR) + "/configs/paper/suite.json";

std::string fresh_dir(const std::string& name) {
  const std::string d = test::tmp_path("experiment_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Byte-level text of a few words (the suite's models have a 2K vocabulary; bytes fit in it).
std::string make_dataset(const std::string& dir) { return test::make_word_dataset(dir, 20000, 4000); }

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Every number in `j` is finite; `where` names the first one that is not.
void expect_all_finite(const json& j, const std::string& where) {
  if (j.is_number_float()) {
    EXPECT_TRUE(std::isfinite(j.get<double>())) << where << " = " << j.dump();
  } else if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) expect_all_finite(*it, where + "." + it.key());
  } else if (j.is_array()) {
    for (size_t i = 0; i < j.size(); ++i) expect_all_finite(j[i], where + "[" + std::to_string(i) + "]");
  }
}

std::string write_json(const std::string& path, const json& j) {
  std::ofstream(path) << j.dump(2);
  return path;
}

// configs/paper/suite.json with only the models `ids` (config paths made absolute) and no analyses;
// with one_seed > 0, the suite and each model have that seed only.
json paper_suite_with(const std::set<std::string>& ids, int64_t one_seed = 0) {
  json suite = json::parse(slurp(kSuite));
  json models = json::array();
  for (const auto& m : suite["models"])
    if (ids.count(m["id"].get<std::string>())) {
      json c = m;
      c["config"] = std::string(DSMOE_SOURCE_DIR) + "/configs/paper/" + m["config"].get<std::string>();
      models.push_back(c);
    }
  suite["models"] = models;
  suite["analyses"] = json::object();
  if (one_seed > 0) {
    for (auto& m : suite["models"]) m["seeds"] = json::array({one_seed});
    suite["seeds"] = json::array({one_seed});
  }
  return suite;
}

}  // namespace

TEST(Experiment, QuickSuiteTrainsEveryModelRunsEveryAnalysisAndWritesTheReport) {
  const std::string dir = fresh_dir("quick");
  const std::string data = make_dataset(dir + "/data");
  const Suite s = load_suite(kSuite, true, data);
  RunOptions o;
  o.out_dir = dir + "/out";
  o.progress = false;
  const json res = run_suite(s, o);
  const std::string report = write_report(res, o.out_dir);

  // Every (model, seed) of the plan ran and gave a finite held-out loss.
  size_t planned = 0;
  for (const auto& m : s.models) planned += m.seeds.size();
  ASSERT_EQ(res["runs"].size(), planned);
  expect_all_finite(res, "results");
  for (const auto& run : res["runs"]) ASSERT_TRUE(run["val_loss"].is_number()) << run.dump().substr(0, 300);
  // results.json on disk is the returned object.
  EXPECT_EQ(json::parse(slurp(o.out_dir + "/results.json")), res);

  // The analyses ran on the models the suite names, with the expected points.
  auto runs_of = [&](const std::string& id) {
    std::vector<json> r;
    for (const auto& run : res["runs"])
      if (run["model"] == id) r.push_back(run);
    return r;
  };
  for (const auto& run : runs_of("deepseekmoe")) {
    ASSERT_EQ(run["disable_top"].size(), s.disable_top.ratios.size()) << run["disable_top"].dump();
    EXPECT_EQ(run["disable_top"][1]["disabled"], 4);  // 1/16 of 63 routed experts, rounded
    ASSERT_EQ(run["top_k"].size(), 7u);
    // The override at the config's own k (7) is the unmodified model: the same loss.
    EXPECT_EQ(run["top_k"][6]["loss"].get<double>(), run["val_loss"].get<double>());
    EXPECT_EQ(run["disable_top"][0]["loss"].get<double>(), run["val_loss"].get<double>());
    EXPECT_EQ(run["drop_shared"]["top_k"], 8);
  }
  ASSERT_FALSE(runs_of("gshard-x1.5").empty());
  EXPECT_EQ(runs_of("gshard-x1.5")[0]["disable_top"][1]["disabled"], 1);  // 1/16 of 16
  EXPECT_TRUE(runs_of("deepseekmoe")[0].contains("routing"));
  EXPECT_FALSE(runs_of("deepseekmoe")[1].contains("routing"));  // first seed only
  EXPECT_TRUE(runs_of("hash")[0].contains("routing"));

  // The report exists, has its sections, and every image it embeds exists and is an SVG document.
  const std::string md = slurp(report);
  for (const char* section : {"## Which of the paper's claims hold at this scale", "## Models and held-out loss",
                              "## Disabling the top routed experts", "## Activating fewer routed experts",
                              "## Routing statistics", "## Routing entropy over training", "Quick mode"})
    EXPECT_NE(md.find(section), std::string::npos) << "missing section '" << section << "' in " << report;
  EXPECT_FALSE(std::regex_search(md, std::regex(R"(\b(nan|inf)\b)", std::regex::icase))) << report;
  std::regex img(R"(!\[[^\]]*\]\(([^)]+)\))");
  std::set<std::string> images;
  for (auto it = std::sregex_iterator(md.begin(), md.end(), img); it != std::sregex_iterator(); ++it)
    images.insert((*it)[1].str());
  EXPECT_GE(images.size(), 10u);
  for (const auto& name : images) {
    const std::string svg = slurp(o.out_dir + "/" + name);
    ASSERT_FALSE(svg.empty()) << name << " missing";
    EXPECT_EQ(svg.rfind("<svg", 0), 0u) << name;
    EXPECT_NE(svg.find("</svg>"), std::string::npos) << name;
    EXPECT_FALSE(std::regex_search(svg, std::regex(R"(\b(nan|inf)\b)", std::regex::icase))) << name << " has a NaN coordinate";
  }

  // Each run's thread count comes from its own metrics (a suite may be trained in shards with another
  // count than the process that draws the report); a run without it is counted, not guessed.
  const int64_t threads = omp_get_max_threads();
  for (const auto& run : res["runs"]) EXPECT_EQ(run.value("train_threads", int64_t(-1)), threads) << run["dir"];
  EXPECT_NE(md.find(fmt::format("Threads: trained with {} thread{} per run, analysed with {};", threads,
                                threads == 1 ? "" : "s", threads)),
            std::string::npos)
      << report;
  json partial = res;
  partial["runs"][0].erase("train_threads");
  partial["threads"] = threads + 1;
  const std::string md_partial = slurp(write_report(partial, dir + "/partial_report"));
  EXPECT_NE(md_partial.find(fmt::format("Threads: trained with {} thread{} per run (1 run did not record it), "
                                        "analysed with {};",
                                        threads, threads == 1 ? "" : "s", threads + 1)),
            std::string::npos)
      << md_partial.substr(0, 2000);

  // Running the suite again reuses every finished run: the same losses, bit for bit.
  const json again = run_suite(s, o);
  ASSERT_EQ(again["runs"].size(), res["runs"].size());
  for (size_t i = 0; i < res["runs"].size(); ++i) {
    EXPECT_EQ(again["runs"][i]["val_loss"], res["runs"][i]["val_loss"]) << i;
    EXPECT_EQ(again["runs"][i].value("disable_top", json()), res["runs"][i].value("disable_top", json())) << i;
  }
}

TEST(Experiment, ConfigExtendsMergesTrainingAndReportsMissingOrCyclicBases) {
  const std::string dir = fresh_dir("extends");
  write_json(dir + "/base.json", {{"model_type", "deepseek"}, {"vocab_size", 64}, {"hidden_size", 32},
                                  {"intermediate_size", 64}, {"num_hidden_layers", 1}, {"num_attention_heads", 2},
                                  {"training", {{"lr", 0.01}, {"steps", 20}, {"warmup_steps", 2}}}});
  write_json(dir + "/child.json", {{"extends", "base.json"}, {"hidden_size", 48}, {"training", {{"steps", 30}}}});
  const Config c = load_config(dir + "/child.json");
  EXPECT_EQ(c.model.hidden_size, 48);      // replaced
  EXPECT_EQ(c.model.vocab_size, 64);       // inherited
  EXPECT_EQ(c.train.steps, 30);            // training merged key by key
  EXPECT_DOUBLE_EQ(c.train.lr, 0.01);

  write_json(dir + "/orphan.json", {{"extends", "nope.json"}});
  try {
    load_config(dir + "/orphan.json");
    FAIL() << "missing base accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("orphan.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("nope.json"), std::string::npos) << e.what();
  }
  write_json(dir + "/a.json", {{"extends", "b.json"}});
  write_json(dir + "/b.json", {{"extends", "a.json"}});
  try {
    load_config(dir + "/a.json");
    FAIL() << "cyclic extends accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cycle"), std::string::npos) << e.what();
  }
}

TEST(Experiment, SuiteErrorsNameTheFileAndField) {
  const std::string dir = fresh_dir("errors");
  write_json(dir + "/base.json", {{"model_type", "deepseek"}, {"vocab_size", 64}, {"hidden_size", 32},
                                  {"intermediate_size", 64}, {"moe_intermediate_size", 16}, {"num_hidden_layers", 1},
                                  {"num_attention_heads", 2}, {"training", {{"steps", 20}, {"warmup_steps", 2}}}});
  write_json(dir + "/moe.json", {{"extends", "base.json"}, {"n_routed_experts", 8}, {"num_experts_per_tok", 2}});
  write_json(dir + "/longer.json", {{"extends", "base.json"}, {"training", {{"steps", 40}}}});
  const json good = {{"data", "d"},
                     {"seeds", {1, 2}},
                     {"models", {{{"id", "a"}, {"config", "base.json"}}, {{"id", "m"}, {"config", "moe.json"}}}}};
  EXPECT_NO_THROW(load_suite(write_json(dir + "/good.json", good), false));

  auto expect_error = [&](const std::string& name, const json& suite, std::vector<std::string> needles) {
    const std::string path = write_json(dir + "/" + name + ".json", suite);
    try {
      load_suite(path, false);
      ADD_FAILURE() << name << ": accepted";
    } catch (const Error& e) {
      needles.push_back(path);
      for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << name << ": " << e.what();
    }
  };
  json j = good;
  j["colour"] = 1;
  expect_error("unknown_key", j, {"colour"});
  j = good;
  j["models"][1]["config"] = "missing.json";
  expect_error("missing_config", j, {"missing.json"});
  j = good;
  j["models"][1]["config"] = "longer.json";
  expect_error("unequal_budget", j, {"'m'", "only the seed varies"});
  j = good;
  j["models"][1]["id"] = "a";
  expect_error("duplicate_id", j, {"duplicate id 'a'"});
  j = good;
  j["analyses"] = {{"top_k", {{"models", {"zz"}}}}};
  expect_error("unknown_model", j, {"analyses.top_k", "zz"});
  j = good;
  j["analyses"] = {{"disable_top", {{"models", {"a"}}, {"ratios", {0.0, 0.1}}}}};
  expect_error("dense_disable", j, {"disable_top", "'a'", "no learned router"});
  j = good;
  j["analyses"] = {{"disable_top", {{"models", {"m"}}, {"ratios", {1.5}}}}};
  expect_error("bad_ratio", j, {"ratios", "1.5"});
  j = good;
  j["seeds"] = json::array();
  expect_error("no_seeds", j, {"seeds"});
  try {
    load_suite(dir + "/good.json", true);
    ADD_FAILURE() << "--quick without a quick section accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("quick"), std::string::npos) << e.what();
  }
}

// Synthetic results: the verdict of each claim is known by construction.
TEST(Experiment, VerdictsFollowThePairedTest) {
  const std::string dir = fresh_dir("verdicts");
  auto model = [](const std::string& id, const std::string& label) {
    return json{{"id", id},           {"label", label},        {"groups", {"table1"}}, {"config", id + ".json"},
                {"seeds", {1, 2, 3}}, {"total_params", 1e6},   {"activated_params", 3e5}, {"ffn_params", 5e5},
                {"train_flops_per_token", 2e6}, {"flops_per_2k_tokens", 4e9}, {"shared_experts", 0},
                {"routed_experts", 16}, {"active_routed", 2}, {"expert_width", 64}};
  };
  auto run = [](const std::string& id, int seed, double loss) {
    return json{{"model", id}, {"seed", seed}, {"val_loss", loss}, {"dir", "x"}, {"train_s", 1.0},
                {"curve", {{"steps", {1, 2}}, {"tokens", {10, 20}}, {"train_loss", {5.0, loss}}, {"val_steps", {2}},
                           {"val_tokens", {20}}, {"val_loss", {loss}}}}};
  };
  json res = {{"suite", "synthetic"}, {"suite_file", "s.json"}, {"quick", false}, {"data", "d"}, {"seeds", {1, 2, 3}},
              {"threads", 2}, {"unigram_baseline", 6.0}, {"tokens_per_model", 1000}, {"steps", 10},
              {"batch_tokens", 100}, {"seq_len", 10}, {"eval_tokens", 100}, {"hidden_size", 8}, {"layers", 1},
              {"wall_s", 1.0}, {"models", json::array()}, {"runs", json::array()}};
  for (const auto& [id, label] : std::vector<std::pair<std::string, std::string>>{
           {"deepseekmoe", "DSM"}, {"gshard", "GS"}, {"switch", "SW"}, {"hash", "HL"}})
    res["models"].push_back(model(id, label));
  // DeepSeekMoE lower than GShard on every seed by 0.1 +- 0.01: t = 0.1 / (0.01/sqrt(3)) >> 2.92.
  // GShard vs Switch: differences +0.05, -0.05, +0.01: mean 0.0033, not significant.
  // Switch vs Hash: Switch HIGHER on every seed by about 0.2: the claim (Switch lower) is reversed.
  const double gs[] = {3.00, 3.10, 3.05};
  const double ds_off[] = {-0.10, -0.11, -0.09};
  const double sw_off[] = {0.05, -0.05, 0.01};
  for (int s = 0; s < 3; ++s) {
    res["runs"].push_back(run("gshard", s + 1, gs[s]));
    res["runs"].push_back(run("deepseekmoe", s + 1, gs[s] + ds_off[s]));
    res["runs"].push_back(run("switch", s + 1, gs[s] - sw_off[s]));
    res["runs"].push_back(run("hash", s + 1, gs[s] - sw_off[s] - 0.2 + 0.01 * s));
  }
  const std::string md = slurp(write_report(res, dir));
  auto row = [&](const std::string& start) {
    const size_t at = md.find("| " + start);
    EXPECT_NE(at, std::string::npos) << "no row starting '" << start << "' in\n" << md;
    return at == std::string::npos ? std::string() : md.substr(at, md.find('\n', at) - at);
  };
  EXPECT_NE(row("DeepSeekMoE beats GShard").find("**holds**: DSM lower by 0.1000"), std::string::npos)
      << row("DeepSeekMoE beats GShard");
  EXPECT_NE(row("GShard (top-2) beats Switch").find("**not resolved**"), std::string::npos) << row("GShard (top-2)");
  EXPECT_NE(row("Switch (learned top-1) beats Hash").find("**does not hold at this scale**: HL lower"), std::string::npos)
      << row("Switch (learned top-1)");
  // Claims about models that were not run are left out rather than guessed.
  EXPECT_EQ(md.find("GShard x1.5"), std::string::npos);
}

// The "fewer activated experts" claim names the smallest k not significantly worse than the reference,
// and with one seed (no spread, nothing tested) it stays open instead of reading "untested" as "not worse".
TEST(Experiment, FewerActivatedExpertsVerdictNeedsATest) {
  auto suite_results = [](const std::vector<int>& seeds) {
    json res = {{"suite", "synthetic"}, {"suite_file", "s.json"}, {"quick", false}, {"data", "d"}, {"seeds", seeds},
                {"threads", 2}, {"unigram_baseline", 6.0}, {"tokens_per_model", 1000}, {"steps", 10},
                {"batch_tokens", 100}, {"seq_len", 10}, {"eval_tokens", 100}, {"hidden_size", 8}, {"layers", 1},
                {"wall_s", 1.0}, {"top_k_reference", "gshard"}, {"models", json::array()}, {"runs", json::array()}};
    for (const char* id : {"deepseekmoe", "gshard"})
      res["models"].push_back({{"id", id}, {"label", id}, {"groups", {"table1"}}, {"config", std::string(id) + ".json"},
                               {"seeds", seeds}, {"total_params", 1e6}, {"activated_params", 3e5}, {"ffn_params", 5e5},
                               {"train_flops_per_token", 2e6}, {"flops_per_2k_tokens", 4e9}, {"shared_experts", 0},
                               {"routed_experts", 16}, {"active_routed", 3}, {"expert_width", 64}});
    // GShard 3.00 / 3.10 / 3.05. DeepSeekMoE at k = 1 worse by 0.3 on every seed (significant), at k = 2 by
    // +0.02, -0.03, +0.01 (mean 0: not significant), at k = 3 lower by 0.1.
    const double gs[] = {3.00, 3.10, 3.05};
    const double k2_off[] = {0.02, -0.03, 0.01};
    for (int seed : seeds) {
      const int i = seed - 1;
      auto curve = [](double loss) {
        return json{{"steps", {1, 2}}, {"tokens", {10, 20}}, {"train_loss", {5.0, loss}}, {"val_steps", {2}},
                    {"val_tokens", {20}}, {"val_loss", {loss}}};
      };
      const double ds = gs[i] - 0.1;
      res["runs"].push_back({{"model", "gshard"}, {"seed", seed}, {"val_loss", gs[i]}, {"dir", "x"}, {"train_s", 1.0},
                             {"curve", curve(gs[i])}});
      res["runs"].push_back({{"model", "deepseekmoe"}, {"seed", seed}, {"val_loss", ds}, {"dir", "x"},
                             {"train_s", 1.0}, {"curve", curve(ds)},
                             {"top_k", {{{"k", 1}, {"loss", gs[i] + 0.3 + 0.01 * i}},
                                        {{"k", 2}, {"loss", gs[i] + k2_off[i]}},
                                        {{"k", 3}, {"loss", ds}}}}});
    }
    return res;
  };
  auto verdict = [](const std::string& md) {
    const size_t at = md.find("| deepseekmoe with fewer activated routed experts");
    EXPECT_NE(at, std::string::npos) << md;
    return at == std::string::npos ? std::string() : md.substr(at, md.find('\n', at) - at);
  };
  const std::string three = verdict(slurp(write_report(suite_results({1, 2, 3}), fresh_dir("topk3"))));
  EXPECT_NE(three.find("from **2** routed experts on it is not significantly worse"), std::string::npos) << three;
  const std::string one = verdict(slurp(write_report(suite_results({1}), fresh_dir("topk1"))));
  EXPECT_NE(one.find("**not resolved**: the differences were not tested (k = 1: +0.3000)"), std::string::npos) << one;
  EXPECT_EQ(one.find("not significantly worse than"), std::string::npos) << one;
}

namespace {

// The quick suite's data with domain labels: documents of 500 tokens, labelled "a" and "b" in turn.
std::string make_labelled_dataset(const std::string& dir) {
  make_dataset(dir);
  for (const char* split : {"train", "val"}) {
    TokenSplit s = load_split(dir, split);
    s.domains = {"a", "b"};
    for (size_t end = 500, i = 0;; end += 500, ++i) {
      s.doc_ends.push_back((int32_t)std::min(end, s.tokens.size()));
      s.doc_domains.push_back((int32_t)(i % 2));
      if (end >= s.tokens.size()) break;
    }
    save_split(dir, split, s);
  }
  return dir;
}

}  // namespace

TEST(Experiment, PerDomainAnalysisRunsOnEverySeedAndReachesTheReport) {
  const std::string dir = fresh_dir("per_domain");
  // The paper suite's quick section and two of its models, with the per-domain analysis added; model
  // configs by absolute path (this suite file lives elsewhere).
  json suite = json::parse(slurp(kSuite));
  json models = json::array();
  for (const auto& m : suite["models"])
    if (m["id"] == "gshard" || m["id"] == "deepseekmoe") {
      json c = m;
      c["config"] = std::string(DSMOE_SOURCE_DIR) + "/configs/paper/" + m["config"].get<std::string>();
      models.push_back(c);
    }
  suite["models"] = models;
  suite["analyses"] = {{"per_domain", {{"models", {"gshard", "deepseekmoe"}}}}};
  const std::string path = write_json(dir + "/suite.json", suite);
  const Suite s = load_suite(path, true, make_labelled_dataset(dir + "/data"));
  RunOptions o;
  o.out_dir = dir + "/out";
  o.progress = false;
  const json res = run_suite(s, o);
  expect_all_finite(res, "results");
  size_t with = 0;
  for (const auto& run : res["runs"]) {
    ASSERT_TRUE(run.contains("per_domain")) << run["model"];
    ++with;
    const json& pd = run["per_domain"];
    EXPECT_EQ(pd["domains"], (json{"a", "b"}));
    ASSERT_FALSE(pd["layers"].empty());
    for (const auto& L : pd["layers"]) EXPECT_TRUE(L["mutual_information_normalised"].is_number()) << L.dump();
  }
  EXPECT_EQ(with, res["runs"].size());
  // The shared experts' role per domain: only DeepSeekMoE has one; without it every domain's loss
  // is a different (finite) number than with it.
  for (const auto& run : res["runs"]) {
    const json& pd = run["per_domain"];
    if (run["model"] == "gshard") {
      EXPECT_FALSE(pd.contains("loss_without_shared"));
      continue;
    }
    ASSERT_TRUE(pd.contains("loss_without_shared")) << run["model"];
    for (const char* d : {"a", "b"}) {
      ASSERT_TRUE(pd["loss_without_shared"][d].is_number()) << pd["loss_without_shared"].dump();
      EXPECT_NE(pd["loss_without_shared"][d].get<double>(), pd["loss"][d].get<double>()) << d;
    }
  }
  const std::string md = slurp(write_report(res, o.out_dir));
  for (const char* section : {"## Held-out loss per domain", "## The shared experts per domain",
                              "## Specialisation per domain", "_domain_load_layer"})
    EXPECT_NE(md.find(section), std::string::npos) << section;
  EXPECT_FALSE(std::regex_search(md, std::regex(R"(\b(nan|inf)\b)", std::regex::icase)));

  // Without domain labels the analysis is refused before any training, naming the analysis.
  const Suite plain = load_suite(path, true, make_dataset(dir + "/plain"));
  o.out_dir = dir + "/out2";
  try {
    run_suite(plain, o);
    ADD_FAILURE() << "per_domain on unlabelled data accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("analyses.per_domain needs data with domain labels"), std::string::npos)
        << e.what();
  }
}

// `--shard I/N`: N processes train disjoint parts of the plan; the unsharded pass after them reuses
// every checkpoint (trains nothing) and gives exactly the results of a suite run in one process.
TEST(Experiment, ShardsTrainDisjointRunsAndTheLastPassReusesThem) {
  const std::string dir = fresh_dir("shards");
  const std::string data = make_dataset(dir + "/data");
  const json suite = paper_suite_with({"dense", "switch", "deepseekmoe"});
  const Suite s = load_suite(write_json(dir + "/suite.json", suite), true, data);
  size_t planned = 0;
  for (const auto& m : s.models) planned += m.seeds.size();
  ASSERT_GE(planned, 4u);

  RunOptions o;
  o.progress = false;
  o.out_dir = dir + "/one";
  const json one = run_suite(s, o);

  o.out_dir = dir + "/sharded";
  o.shard_count = 2;
  std::map<std::string, fs::file_time_type> trained_by;  // checkpoint -> its time after its shard
  for (int64_t i = 0; i < 2; ++i) {
    o.shard_index = i;
    EXPECT_TRUE(run_suite(s, o).is_null());
    EXPECT_FALSE(fs::exists(o.out_dir + "/results.json")) << "a shard wrote the results";
    size_t now = 0;
    for (const auto& e : fs::recursive_directory_iterator(o.out_dir + "/runs"))
      if (e.path().filename() == "checkpoint.safetensors") {
        ++now;
        const std::string k = e.path().string();
        if (trained_by.count(k)) EXPECT_EQ(trained_by[k], fs::last_write_time(e.path())) << k << " trained twice";
        trained_by[k] = fs::last_write_time(e.path());
      }
    EXPECT_EQ(now, i == 0 ? (planned + 1) / 2 : planned) << "shard " << i;
  }
  o.shard_index = 0;
  o.shard_count = 1;
  const json merged = run_suite(s, o);
  for (const auto& [k, t] : trained_by) EXPECT_EQ(fs::last_write_time(k), t) << k << " retrained by the last pass";
  ASSERT_EQ(merged["runs"].size(), one["runs"].size());
  for (size_t i = 0; i < one["runs"].size(); ++i) {
    EXPECT_EQ(merged["runs"][i]["model"], one["runs"][i]["model"]);
    EXPECT_EQ(merged["runs"][i]["val_loss"].get<double>(), one["runs"][i]["val_loss"].get<double>())
        << one["runs"][i]["model"] << " seed " << one["runs"][i]["seed"];
  }
  o.shard_index = 2;
  o.shard_count = 2;
  EXPECT_TRUE(test::error_mentions([&] { run_suite(s, o); }, {"shard 2/2"}));
}

// configs/paper-mixed (issue 16's suite): the comparison's premises hold in the files themselves.
TEST(Experiment, MixedSuiteKeepsThePapersParameterMatches) {
  const Suite s = load_suite(std::string(DSMOE_SOURCE_DIR) + "/configs/paper-mixed/suite.json", false, "");
  const Suite brown = load_suite(kSuite, false, "");
  auto stats = [&](const std::string& id) {
    const SuiteModel* m = s.find(id);
    EXPECT_NE(m, nullptr) << id;
    return model_stats(m->config.model, m->config.train.seq_len);
  };
  // DeepSeekMoE 1+7/63, the ablation ladder and the shared-expert variants: GShard's total and
  // activated parameters, up to the router's rows (one per routed expert).
  const ModelStats g = stats("gshard");
  for (const char* id : {"deepseekmoe", "ablation-1s-1of15", "ablation-1s-3of31", "shared-2of64", "shared-4of64"}) {
    const ModelStats x = stats(id);
    EXPECT_NEAR((double)x.total_params, (double)g.total_params, 64.0 * 4 * 64) << id;
    EXPECT_NEAR((double)x.activated_params, (double)g.activated_params, 64.0 * 4 * 64) << id;
  }
  // Dense x16 has the 16-expert models' FFN parameters, all active; the seeds and budget the issue
  // asks for: 3 seeds of the main comparison, 2 of the rest, 10x the Brown suite's tokens.
  EXPECT_EQ(stats("dense-x16").total_params, stats("hash").total_params);
  for (const auto& m : s.models) {
    const bool main = std::find(m.groups.begin(), m.groups.end(), "table1") != m.groups.end() ||
                      std::find(m.groups.begin(), m.groups.end(), "upper") != m.groups.end();
    EXPECT_EQ(m.seeds.size(), main ? 3u : 2u) << m.id;
  }
  const auto tokens = [](const Suite& x) {
    const TrainConfig& t = x.models.front().config.train;
    return t.steps * t.batch_size * t.seq_len * t.grad_accum;
  };
  EXPECT_EQ(tokens(s), 10 * tokens(brown));
  EXPECT_EQ(s.models.front().config.model.vocab_size, 8192);
}

// `dsmoe experiment --seeds`: a partial suite keeps the listed seeds of the suite and of each model,
// and refuses a seed no model trains or a model it would leave without runs.
TEST(Experiment, RestrictSeedsKeepsTheListedSeedsOfEveryModel) {
  const std::string mixed = std::string(DSMOE_SOURCE_DIR) + "/configs/paper-mixed/suite.json";
  Suite s = load_suite(mixed, false);
  ASSERT_EQ(s.seeds, (std::vector<uint64_t>{1, 2, 3}));
  restrict_seeds(s, {1});
  EXPECT_EQ(s.seeds, (std::vector<uint64_t>{1}));
  for (const auto& m : s.models) EXPECT_EQ(m.seeds, (std::vector<uint64_t>{1})) << m.id;

  s = load_suite(mixed, false);
  restrict_seeds(s, {3, 2});
  EXPECT_EQ(s.seeds, (std::vector<uint64_t>{2, 3}));  // the suite's order, not the flag's
  EXPECT_EQ(s.find("dense")->seeds, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(s.find("ablation-1s-1of15")->seeds, (std::vector<uint64_t>{2}));  // trained with [1, 2] only

  s = load_suite(mixed, false);
  EXPECT_TRUE(test::error_mentions([&] { restrict_seeds(s, {3}); }, {"ablation-1s-1of15", "[1,2]"}));
  s = load_suite(mixed, false);
  EXPECT_TRUE(test::error_mentions([&] { restrict_seeds(s, {1, 9}); }, {"seed 9"}));
}

// A run's record (suite_run.json) stands in for its checkpoint: a suite whose checkpoints are gone
// (another machine, a clone of the committed report) reports the same runs without training, and a
// changed analysis makes the record stale, so that run is analysed again.
TEST(Experiment, RunRecordsReplaceCheckpointsUntilTheirKeyChanges) {
  const std::string dir = fresh_dir("records");
  const std::string data = make_dataset(dir + "/data");
  json suite = paper_suite_with({"dense", "deepseekmoe"}, 1);
  suite["analyses"] = {{"top_k", {{"models", {"deepseekmoe"}}, {"k", {1, 2}}, {"reference", "dense"}}}};
  Suite s = load_suite(write_json(dir + "/suite.json", suite), true, data);
  RunOptions o;
  o.progress = false;
  o.out_dir = dir + "/out";
  const json first = run_suite(s, o);
  ASSERT_EQ(first["runs"].size(), 2u);
  auto checkpoints = [&] {
    std::vector<std::string> v;
    for (const auto& e : fs::recursive_directory_iterator(o.out_dir + "/runs"))
      if (e.path().filename() == "checkpoint.safetensors") v.push_back(e.path().string());
    return v;
  };
  ASSERT_EQ(checkpoints().size(), 2u);
  for (const auto& c : checkpoints()) fs::remove(c);

  const json again = run_suite(s, o);  // nothing to train: every run is recorded
  EXPECT_TRUE(checkpoints().empty()) << "a recorded run was trained again";
  ASSERT_EQ(again["runs"].size(), 2u);
  for (size_t i = 0; i < 2; ++i)  // the same entry, curve and analyses included
    EXPECT_EQ(again["runs"][i], first["runs"][i]) << first["runs"][i]["model"];
  // A sharded pass does not train recorded runs either.
  o.shard_count = 2;
  for (int64_t i = 0; i < 2; ++i) {
    o.shard_index = i;
    run_suite(s, o);
  }
  EXPECT_TRUE(checkpoints().empty()) << "a shard trained a recorded run";
  o.shard_index = 0;
  o.shard_count = 1;

  suite["analyses"]["top_k"]["k"] = {1, 2, 3};  // deepseekmoe's record is stale now, dense's is not
  s = load_suite(write_json(dir + "/suite.json", suite), true, data);
  const json changed = run_suite(s, o);
  const auto left = checkpoints();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_NE(left[0].find("deepseekmoe"), std::string::npos) << left[0];
  EXPECT_EQ(changed["runs"][1]["top_k"].size(), 3u);
  EXPECT_EQ(changed["runs"][0]["val_loss"], first["runs"][0]["val_loss"]);
  EXPECT_EQ(changed["runs"][1]["val_loss"], first["runs"][1]["val_loss"]) << "retraining is deterministic";

  // A damaged record is an error naming it, not a silent retrain.
  std::ofstream(o.out_dir + "/runs/dense/seed-1/suite_run.json") << "{\"key\": 1";
  EXPECT_TRUE(test::error_mentions([&] { run_suite(s, o); }, {"dense/seed-1/suite_run.json", "not a suite run record"}));
}

// `--no-train`: the finished runs are analysed, recorded and reported; an unfinished one is listed
// as missing (the report says so), and nothing is trained.
TEST(Experiment, NoTrainReportsTheFinishedRunsAndListsTheOthers) {
  const std::string dir = fresh_dir("no_train");
  const std::string data = make_dataset(dir + "/data");
  json suite = paper_suite_with({"dense", "deepseekmoe"}, 1);
  const Suite s = load_suite(write_json(dir + "/suite.json", suite), true, data);
  RunOptions o;
  o.progress = false;
  o.out_dir = dir + "/out";
  o.shard_count = 2;  // shard 0 of the plan [dense, deepseekmoe]: dense only
  run_suite(s, o);
  o.shard_count = 1;
  o.train = false;
  const json r = run_suite(s, o);
  ASSERT_EQ(r["runs"].size(), 1u);
  EXPECT_EQ(r["runs"][0]["model"], "dense");
  ASSERT_EQ(r["missing_runs"].size(), 1u);
  EXPECT_EQ(r["missing_runs"][0]["model"], "deepseekmoe");
  EXPECT_FALSE(fs::exists(o.out_dir + "/runs/deepseekmoe/seed-1/checkpoint.safetensors")) << "--no-train trained";
  EXPECT_TRUE(fs::exists(o.out_dir + "/runs/dense/seed-1/suite_run.json"));
  const std::string md = slurp(write_report(r, o.out_dir));
  EXPECT_NE(md.find("1 run is not trained yet"), std::string::npos) << md.substr(0, 2000);
  EXPECT_NE(md.find("deepseekmoe seed 1"), std::string::npos);
  // Seeds left out by --seeds are named too, and the reproduce line carries the flag.
  suite["seeds"] = json::array({1, 2});
  Suite two = load_suite(write_json(dir + "/suite.json", suite), true, data);
  restrict_seeds(two, {1});
  const std::string md1 = slurp(write_report(run_suite(two, o), o.out_dir));
  EXPECT_NE(md1.find("Partial suite: seeds [1] of the suite's [1,2]"), std::string::npos) << md1.substr(0, 2000);
  EXPECT_NE(md1.find("--seeds 1 --out"), std::string::npos) << md1.substr(0, 2000);
  o.shard_count = 2;
  EXPECT_TRUE(test::error_mentions([&] { run_suite(s, o); }, {"cannot go without training"}));
}
