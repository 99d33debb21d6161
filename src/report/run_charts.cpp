#include "report/run_charts.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "model/config.h"
#include "report/chart.h"

namespace dsmoe::report {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A numeric column: absent or null (the trainer writes NaN as null) reads as NaN.
double number(const json& row, const char* key, const std::string& path, size_t line) {
  auto it = row.find(key);
  if (it == row.end() || it->is_null()) return NAN;
  if (!it->is_number()) fail("{}:{}: '{}' must be a number, got {}", path, line, key, it->dump());
  return it->get<double>();
}

std::vector<std::vector<double>> load_matrix(const json& v, const std::string& path, size_t line) {
  std::vector<std::vector<double>> out;
  if (!v.is_array()) fail("{}:{}: 'expert_load' must be an array (one array of numbers per MoE layer)", path, line);
  for (const auto& layer : v) {
    if (!layer.is_array()) fail("{}:{}: 'expert_load' must hold one array of numbers per MoE layer", path, line);
    auto& row = out.emplace_back();
    for (const auto& x : layer) {
      if (!x.is_number() && !x.is_null()) fail("{}:{}: 'expert_load' holds a non-number {}", path, line, x.dump());
      row.push_back(x.is_null() ? NAN : x.get<double>());
    }
  }
  return out;
}

LineChart line_chart(const std::string& title, const std::string& x_label, const std::string& y_label) {
  LineChart c;
  c.x_integer = true;  // steps and tokens are whole numbers
  c.title = title;
  c.x_label = x_label;
  c.y_label = y_label;
  return c;
}

std::vector<double> number_list(const json& v, const char* key, const std::string& path, size_t line) {
  if (!v.is_array()) fail("{}:{}: '{}' must be an array of numbers (one per MoE layer)", path, line, key);
  std::vector<double> out;
  for (const auto& x : v) {
    if (!x.is_number() && !x.is_null()) fail("{}:{}: '{}' holds a non-number {}", path, line, key, x.dump());
    out.push_back(x.is_null() ? NAN : x.get<double>());
  }
  return out;
}

}  // namespace

MetricsLog read_metrics(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open (a dsmoe run folder holds metrics.jsonl once training has logged a step)", path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  MetricsLog m;
  size_t pos = 0, line = 0;
  while (pos < text.size()) {
    ++line;
    size_t end = text.find('\n', pos);
    const bool terminated = end != std::string::npos;
    if (!terminated) end = text.size();
    const std::string s = text.substr(pos, end - pos);
    pos = end + 1;
    if (s.find_first_not_of(" \t\r") == std::string::npos) continue;
    json row = json::parse(s, nullptr, false);
    if (row.is_discarded()) {
      if (!terminated) break;  // torn last line
      fail("{}:{}: not valid JSON (expected one JSON object per line)", path, line);
    }
    if (!row.is_object() || !row.contains("step") || !row["step"].is_number_integer())
      fail("{}:{}: expected a JSON object with an integer \"step\"", path, line);
    const double step = row["step"].get<double>(), tokens = number(row, "tokens", path, line);
    m.step.push_back(step);
    m.tokens.push_back(tokens);
    m.lm_loss.push_back(number(row, "lm_loss", path, line));
    m.lr.push_back(number(row, "lr", path, line));
    m.max_load.push_back(number(row, "max_load", path, line));
    if (row.contains("val_loss")) {
      m.val_step.push_back(step);
      m.val_tokens.push_back(tokens);
      m.val_loss.push_back(number(row, "val_loss", path, line));
    }
    if (row.contains("expert_load")) {
      m.expert_load = load_matrix(row["expert_load"], path, line);
      m.load_step = (int64_t)step;
    }
    if (row.contains("routing_entropy")) {
      m.entropy_step.push_back(step);
      m.entropy_tokens.push_back(tokens);
      m.routing_entropy.push_back(number_list(row["routing_entropy"], "routing_entropy", path, line));
    }
  }
  return m;
}

RunChartOptions run_chart_options(const std::string& run_dir, const ModelConfig* mc) {
  RunChartOptions o;
  // "runs/a/" and "runs/a/." both name "a".
  fs::path p = fs::absolute(run_dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  o.name = p.filename().string();
  if (mc)
    for (int64_t l = 0; l < mc->num_hidden_layers; ++l)
      if (mc->is_moe_layer(l)) o.moe_layer_ids.push_back(l);
  return o;
}

std::vector<std::string> write_run_charts(const MetricsLog& m, const std::string& out_dir, const RunChartOptions& o) {
  fs::create_directories(out_dir);
  std::vector<std::string> written;
  auto save = [&](const std::string& file, const std::string& svg) {
    const std::string path = (fs::path(out_dir) / file).string();
    write_svg(path, svg);
    written.push_back(path);
  };
  const std::string suffix = o.name.empty() ? "" : " (" + o.name + ")";
  const std::vector<double>& x = o.x_tokens ? m.tokens : m.step;
  const std::string x_label = o.x_tokens ? "tokens seen" : "step";

  LineChart loss = line_chart("loss" + suffix, x_label, "cross-entropy (nats / token)");
  loss.series.push_back({"train LM loss", x, m.lm_loss, {}});
  loss.series.push_back({"validation loss", o.x_tokens ? m.val_tokens : m.val_step, m.val_loss, {}});
  save("loss.svg", to_svg(loss));

  LineChart lr = line_chart("learning rate" + suffix, x_label, "learning rate");
  lr.series.push_back({"lr", x, m.lr, {}});
  save("lr.svg", to_svg(lr));

  if (!m.expert_load.empty()) {
    LineChart bal = line_chart("expert load imbalance" + suffix, x_label, "max / mean expert load (worst MoE layer)");
    bal.series.push_back({"max / mean", x, m.max_load, {}});
    save("load_balance.svg", to_svg(bal));

    Heatmap h;
    h.title = fmt::format("expert load at step {}{}", m.load_step, suffix);
    h.x_label = "routed expert";
    h.y_label = "layer";
    h.value_label = "load / mean load (1 = balanced)";
    h.rows = (int64_t)m.expert_load.size();
    for (const auto& row : m.expert_load) h.cols = std::max<int64_t>(h.cols, (int64_t)row.size());
    // Layers with fewer experts (not produced by dsmoe, but possible in a hand-edited file) pad with NaN.
    for (const auto& row : m.expert_load) {
      h.values.insert(h.values.end(), row.begin(), row.end());
      h.values.insert(h.values.end(), (size_t)h.cols - row.size(), NAN);
    }
    for (int64_t l = 0; l < h.rows; ++l)
      h.row_labels.push_back((size_t)h.rows == o.moe_layer_ids.size() ? std::to_string(o.moe_layer_ids[l])
                                                                       : fmt::format("MoE {}", l));
    save("expert_load.svg", to_svg(h));
  }
  if (!m.routing_entropy.empty()) {
    LineChart ent = line_chart("routing entropy over training" + suffix, x_label,
                               "routing entropy / ln(routed experts) (1 = uniform)");
    size_t layers = 0;
    for (const auto& row : m.routing_entropy) layers = std::max(layers, row.size());
    for (size_t l = 0; l < layers; ++l) {
      Series s;
      s.name = layers == o.moe_layer_ids.size() ? fmt::format("layer {}", o.moe_layer_ids[l]) : fmt::format("MoE {}", l);
      s.x = o.x_tokens ? m.entropy_tokens : m.entropy_step;
      for (const auto& row : m.routing_entropy) s.y.push_back(l < row.size() ? row[l] : NAN);
      ent.series.push_back(std::move(s));
    }
    save("routing_entropy.svg", to_svg(ent));
  }
  return written;
}

}  // namespace dsmoe::report
