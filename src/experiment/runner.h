// Runs a suite: trains every (model, seed) on the suite's data with the normal trainer (one run
// folder each, under OUT/runs/<id>/seed-<s>), evaluates the held-out loss, runs the analyses on the
// trained models (evaluation-time routing overrides and routing statistics) and writes everything to
// OUT/results.json, from which report.h draws the report. A finished run whose folder holds a
// checkpoint of the same config is reused, and an interrupted one resumes, so re-running a suite after
// a crash or after adding a model trains only what is missing. Each analysed run also leaves its
// entry of results.json in its folder (suite_run.json, keyed by its config, its analyses and the
// data's fingerprint): with that record a run needs neither retraining nor its checkpoint, so a suite
// can be finished in several sittings on machines that keep only the committed records.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "experiment/suite.h"
#include "io/safetensors.h"

namespace dsmoe::experiment {

struct RunOptions {
  std::string out_dir;
  bool progress = true;  // the trainer's progress line and one line per run
  Checksums checksums = Checksums::Verify;  // of the run checkpoints reused or resumed (Skip: --no-verify)
  // Training in several processes at once (`dsmoe experiment --shard I/N`): this process trains only
  // the runs whose place in the plan is I modulo N, and neither analyses nor writes results.json;
  // a last pass without a shard reuses every checkpoint, analyses and reports. 0/1 = everything.
  int64_t shard_index = 0, shard_count = 1;
  // false (`--no-train`): analyse, record and report only the runs already trained (a finished
  // checkpoint or a record); the others are listed in results.json "missing_runs" and left out.
  bool train = true;
};

// Returns the results JSON (also written atomically to OUT/results.json):
// {suite, quick, data, seeds, unigram_baseline, threads, wall_s, tokens_per_model, eval_tokens,
//  models: [{id, label, groups, config, seeds, total_params, activated_params, flops_per_2k_tokens, ...}],
//  runs: [{model, seed, dir, val_loss, train_s, curve: {steps, tokens, train_loss, val_steps, val_tokens,
//          val_loss}, disable_top: [{ratio, disabled, loss}], top_k: [{k, loss}],
//          drop_shared: {top_k, loss}, routing: {...}}]}
nlohmann::json run_suite(const Suite& suite, const RunOptions& opt);

}  // namespace dsmoe::experiment
