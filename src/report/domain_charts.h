// Charts of `dsmoe eval --per-domain` results: per MoE layer, a domain x expert heatmap of each
// domain's share of its routed selections going to each expert, times the number of experts (1 =
// uniform routing, so models with different expert counts compare), on one colour scale shared by
// all the models and layers drawn together.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace dsmoe::report {

// models: (name, evaluate_domains JSON). Writes <out_dir>/<name>_domain_load_layer<L>.svg for every
// model and MoE layer (names are made file-safe); returns the paths. Throws dsmoe::Error naming the
// model when its JSON lacks the fields.
std::vector<std::string> write_domain_load_charts(const std::vector<std::pair<std::string, nlohmann::json>>& models,
                                                  const std::string& out_dir);

}  // namespace dsmoe::report
