#include "report/domain_charts.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fmt/format.h>

#include "core/error.h"
#include "report/chart.h"

namespace dsmoe::report {

namespace fs = std::filesystem;

namespace {

// Row-normalised load of one layer against uniform routing: E * load[d][e] / sum_e load[d][e] (1 =
// the domain uses expert e as often as uniform routing would), comparable between models with
// different numbers of experts.
std::vector<double> load_share(const nlohmann::json& layer, size_t D, size_t E, const std::string& who) {
  const nlohmann::json& load = layer.at("load");
  if (!load.is_array() || load.size() != D) fail("{}: layer {}: 'load' must hold {} rows", who, layer.at("layer").dump(), D);
  std::vector<double> v(D * E, NAN);
  for (size_t d = 0; d < D; ++d) {
    if (!load[d].is_array() || load[d].size() != E)
      fail("{}: layer {}: load row {} must hold {} experts", who, layer.at("layer").dump(), d, E);
    double sum = 0;
    for (size_t e = 0; e < E; ++e) sum += load[d][e].get<double>();
    for (size_t e = 0; e < E; ++e) v[d * E + e] = sum > 0 ? (double)E * load[d][e].get<double>() / sum : NAN;
  }
  return v;
}

std::string file_safe(const std::string& s) {
  std::string r;
  for (char c : s) r += std::isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.' ? c : '_';
  return r.empty() ? "model" : r;
}

}  // namespace

std::vector<std::string> write_domain_load_charts(const std::vector<std::pair<std::string, nlohmann::json>>& models,
                                                  const std::string& out_dir) {
  struct Map {
    std::string model;
    int64_t layer;
    size_t E;
    std::vector<std::string> domains;
    std::vector<double> share;
  };
  std::vector<Map> maps;
  double hi = 0;
  for (const auto& [name, j] : models) {
    try {
      const std::vector<std::string> domains = j.at("domains").get<std::vector<std::string>>();
      for (const nlohmann::json& layer : j.at("layers")) {
        const size_t E = layer.at("experts").get<size_t>();
        Map m{name, layer.at("layer").get<int64_t>(), E, domains, load_share(layer, domains.size(), E, name)};
        for (double v : m.share)
          if (std::isfinite(v)) hi = std::max(hi, v);
        maps.push_back(std::move(m));
      }
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not a `dsmoe eval --per-domain` result ({})", name, e.what());
    }
  }
  std::vector<std::string> paths;
  if (maps.empty()) return paths;
  fs::create_directories(out_dir);
  for (const Map& m : maps) {
    Heatmap h;
    h.title = fmt::format("{}: expert load per domain, layer {} (1 = uniform)", m.model, m.layer);
    h.x_label = "routed expert";
    h.y_label = "domain";
    h.value_label = "share of the domain's selections x experts";
    h.rows = (int64_t)m.domains.size();
    h.cols = (int64_t)m.E;
    h.values = m.share;
    h.row_labels = m.domains;
    h.scale_lo = 0;
    h.scale_hi = hi > 0 ? hi : 1;  // shared by every model and layer drawn together
    h.cell_decimals = 1;
    const std::string path = (fs::path(out_dir) / fmt::format("{}_domain_load_layer{}.svg", file_safe(m.model), m.layer)).string();
    write_svg(path, to_svg(h));
    paths.push_back(path);
  }
  return paths;
}

}  // namespace dsmoe::report
