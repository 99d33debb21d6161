// dsmoe experiment: train a suite of models on the same data and budget (configs/paper/suite.json
// reproduces the paper's comparisons), run the expert-specialization analyses and write a report.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/options.h"
#include "core/error.h"
#include "experiment/report.h"
#include "experiment/runner.h"
#include "experiment/suite.h"
#include "io/safetensors.h"

namespace dsmoe::cli {

void add_experiment_commands(CLI::App& app) {
  auto* c = app.add_subcommand("experiment", "train a suite of models on the same data and budget, analyse, report");
  auto suite = std::make_shared<std::string>("configs/paper/suite.json");
  auto out = std::make_shared<std::string>();
  auto data = std::make_shared<std::string>();
  auto quick = std::make_shared<bool>(false);
  auto report_only = std::make_shared<bool>(false);
  auto quiet = std::make_shared<bool>(false);
  auto no_verify = std::make_shared<bool>(false);
  CLI::Option* suite_option =
      c->add_option("--suite", *suite, "suite JSON (models, seeds, analyses)")->capture_default_str();
  c->add_option("--out", *out, "output folder: runs/, results.json, report.md and its images")->required();
  c->add_option("--data", *data, "prepared data folder (overrides the suite's \"data\")");
  c->add_flag("--quick", *quick, "the suite's quick variant: tiny models, a few steps (a smoke run)");
  c->add_flag("--report-only", *report_only, "redraw the report from OUT/results.json without training");
  c->add_flag("--quiet", *quiet, "no progress lines");
  auto shard = std::make_shared<std::string>();
  c->add_option("--shard", *shard,
                "I/N: train only every N-th run of the plan, starting at run I (0 <= I < N <= 64), in one of N "
                "processes run side by side (each with its share of the threads); no analyses or report: run the "
                "suite once more without --shard afterwards, which reuses every checkpoint");
  auto seeds = std::make_shared<std::vector<long long>>();
  c->add_option("--seeds", *seeds,
                "train and report only these of the suite's seeds, comma-separated (a partial suite: e.g. the first "
                "seed of every model; a later run with more seeds reuses these runs)")
      ->delimiter(',');
  auto no_train = std::make_shared<bool>(false);
  c->add_flag("--no-train", *no_train,
              "train nothing: analyse, record and report the runs already finished (checkpoints or records); the "
              "others are listed as missing (before a machine goes away, or to look at a suite half-way)");
  add_no_verify_flag(c, *no_verify);
  c->callback([=] {
    namespace fs = std::filesystem;
    nlohmann::json results;
    if (*report_only && !shard->empty()) usage_error("--shard trains runs; it cannot go with --report-only");
    long long shard_index = 0, shard_count = 1;  // flags are checked before the suite is read
    if (!shard->empty()) {
      char tail = 0;
      if (std::sscanf(shard->c_str(), "%lld/%lld%c", &shard_index, &shard_count, &tail) != 2 || shard_count < 1 ||
          shard_count > 64 || shard_index < 0 || shard_index >= shard_count)
        usage_error("--shard: expected I/N with 0 <= I < N <= 64, got '{}'", *shard);
    }
    if (*no_train && (*report_only || !shard->empty()))
      usage_error("--no-train cannot go with {}", *report_only ? "--report-only (which trains nothing already)"
                                                                  : "--shard (a shard only trains)");
    if (*report_only && !seeds->empty()) usage_error("--seeds selects runs to train; it cannot go with --report-only");
    std::vector<uint64_t> keep;
    for (long long seed : *seeds) {
      if (seed < 0) usage_error("--seeds: {} is not a non-negative integer", seed);
      keep.push_back((uint64_t)seed);
    }
    if (*report_only) {
      const std::string p = (fs::path(*out) / "results.json").string();
      try {
        results = nlohmann::json::parse(read_text_file(p));
      } catch (const nlohmann::json::exception& e) {
        fail("{}: not a results file: {}", p, e.what());
      }
      if (!results.is_object()) fail("{}: not a results file: not a JSON object", p);
      // A --suite given with --report-only must be the suite of those results: otherwise the
      // report would silently be another suite's (the flag is not needed to redraw).
      if (suite_option->count() > 0) {
        const experiment::Suite s = experiment::load_suite(*suite, *quick, *data);
        // (read as strings only when they are: a hand-edited file must not throw a JSON type error)
        const auto text = [&](const char* key, const std::string& otherwise) {
          const auto it = results.find(key);
          return it != results.end() && it->is_string() ? it->get<std::string>() : otherwise;
        };
        const std::string recorded = text("suite", "");
        if (s.name != recorded)
          fail("{} is the results of suite \"{}\" ({}), not of --suite {} (\"{}\"); leave --suite out to redraw them", p,
               recorded, text("suite_file", "file not recorded"), *suite, s.name);
      }
    } else {
      experiment::Suite s = experiment::load_suite(*suite, *quick, *data);
      if (!keep.empty()) experiment::restrict_seeds(s, keep);
      experiment::RunOptions o;
      o.out_dir = *out;
      o.progress = !*quiet;
      o.checksums = checksums_of(*no_verify, "the suite's run checkpoints");
      o.shard_index = shard_index;
      o.shard_count = shard_count;
      o.train = !*no_train;
      results = experiment::run_suite(s, o);
      if (o.shard_count > 1) {
        std::printf("trained shard %lld/%lld of the suite; run it again without --shard to analyse and report\n",
                    (long long)o.shard_index, (long long)o.shard_count);
        return;
      }
    }
    const std::string report = experiment::write_report(results, *out);
    std::printf("report: %s\n", report.c_str());
  });
}

}  // namespace dsmoe::cli
