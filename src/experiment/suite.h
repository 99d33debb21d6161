// A reproduction suite (configs/paper/suite.json): the models to compare (config files, usually
// extending one shared base), the seeds, the analyses to run on the trained models, and a "quick"
// variant that shrinks everything to a smoke run. Loading validates that the comparison is fair:
// every model trains on the same data with the same token budget and schedule, only the seed varies.
//
//   {"name": "...", "data": "data/brown-bpe2k", "seeds": [1, 2, 3],
//    "models": [{"id": "gshard", "label": "GShard", "config": "gshard.json", "groups": ["table1"],
//                "seeds": "all" | "first" | [1, 2]}, ...],
//    "analyses": {"disable_top": {"models": [...], "ratios": [0, 0.0625, ...]},
//                 "top_k": {"models": [...], "k": [1, 2, ...], "reference": "gshard"},
//                 "drop_shared": {"models": [...]}, "routing": {"models": [...]},
//                 "per_domain": {"models": [...]}},
//    "quick": {"seeds": [1], "model": {config keys}, "training": {training keys}}}
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace dsmoe::experiment {

struct SuiteModel {
  std::string id, label;
  std::string config_path;          // resolved against the suite file's folder
  std::vector<std::string> groups;  // e.g. "table1", "ablation", "shared", "upper"
  std::vector<uint64_t> seeds;      // seeds this model is trained with
  Config config;                    // as loaded (quick overrides applied); training.seed is set per run
};

struct AnalysisSpec {
  std::vector<std::string> models;  // model ids it runs on
  std::vector<double> ratios;       // disable_top: fractions of the routed experts disabled per token
  std::vector<int64_t> k;           // top_k: routed experts activated at inference
  std::string reference;            // top_k: the model whose full loss the curve is compared with
};

struct Suite {
  std::string name, path, data_dir;
  bool quick = false;
  std::vector<uint64_t> seeds;
  std::vector<uint64_t> suite_seeds;  // the file's seeds (seeds is a subset after restrict_seeds)
  std::vector<SuiteModel> models;
  AnalysisSpec disable_top, top_k, drop_shared, routing;
  AnalysisSpec per_domain;  // evaluate_domains (experiment/domain_eval.h) on every seed; needs labelled data

  const SuiteModel* find(const std::string& id) const;  // null if absent
  bool in_group(const SuiteModel& m, const std::string& group) const;
};

// Loads and validates the suite; errors name the file and the field. `quick` applies the "quick"
// section. data_override (if not empty) replaces "data".
Suite load_suite(const std::string& path, bool quick, const std::string& data_override = "");

// Keeps only the given seeds of the suite and of each model (a partial suite: the first seed of every
// model, say, when the whole one does not fit the time there is). Fails, naming it, on a seed no model
// trains and on a model left without a seed.
void restrict_seeds(Suite& s, const std::vector<uint64_t>& keep);

}  // namespace dsmoe::experiment
