// `dsmoe plot`: the charts of a training run (loss, learning rate, expert load) as SVG files.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "model/config.h"
#include "io/safetensors.h"
#include "report/domain_charts.h"
#include "report/run_charts.h"
#include "train/checkpoint.h"

namespace dsmoe::cli {

namespace {

namespace fs = std::filesystem;

void cmd_plot(const std::string& run, const std::string& out, bool x_tokens) {
  if (!fs::is_directory(run)) fail("--run {}: not a folder (expected a dsmoe run folder with metrics.jsonl)", run);
  const report::MetricsLog m = report::read_metrics((fs::path(run) / "metrics.jsonl").string());
  // The run's config (written with the first checkpoint) names the model layers behind the MoE rows.
  const bool has_config = fs::exists(fs::path(run) / "config.json");
  const ModelConfig mc = has_config ? load_checkpoint_config(run).model : ModelConfig{};
  report::RunChartOptions o = report::run_chart_options(run, has_config ? &mc : nullptr);
  o.x_tokens = x_tokens;
  for (const auto& path : report::write_run_charts(m, out.empty() ? run : out, o)) std::printf("%s\n", path.c_str());
}

// Domain x expert heatmaps of `eval --per-domain` files, one colour scale for all of them.
void cmd_plot_domains(const std::vector<std::string>& files, const std::string& out) {
  if (out.empty()) usage_error("--per-domain needs --out DIR (the folder for the heatmaps)");
  std::vector<std::pair<std::string, nlohmann::json>> models;
  for (const auto& f : files) {
    nlohmann::json j = nlohmann::json::parse(read_text_file(f), nullptr, false);
    if (j.is_discarded() || !j.is_object()) fail("{}: not a JSON object (expected `dsmoe eval --per-domain` output)", f);
    // Named by the model folder it evaluated (else the file's name).
    std::string name = j.contains("model") && j["model"].is_string() ? fs::path(j["model"].get<std::string>()).filename().string()
                                                                    : fs::path(f).stem().string();
    if (name.empty()) name = fs::path(f).stem().string();
    models.emplace_back(name, std::move(j));
  }
  const auto paths = report::write_domain_load_charts(models, out);
  if (paths.empty()) fail("--per-domain: no MoE layers in {} (dense models have no expert load)", files.front());
  for (const auto& p : paths) std::printf("%s\n", p.c_str());
}

}  // namespace

void add_plot_commands(CLI::App& app) {
  auto* c = app.add_subcommand("plot", "draw a training run's charts (loss, learning rate, expert load) as SVG");
  auto run = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto x = std::make_shared<std::string>("step");
  auto domains = std::make_shared<std::vector<std::string>>();
  c->add_option("--run", *run, "run folder (dsmoe train --out)");
  c->add_option("--per-domain", *domains,
                "instead of --run: `dsmoe eval --per-domain` files; draws each model's domain x expert load heatmaps "
                "per layer on one shared colour scale");
  c->add_option("--out", *out, "folder for the SVG files (default: the run folder)");
  c->add_option("--x", *x, "x axis of the curves: step or tokens")
      ->check(CLI::IsMember({"step", "tokens"}))
      ->capture_default_str();
  c->callback([=] {
    if (run->empty() == domains->empty()) usage_error("give --run DIR or --per-domain FILE..., one of them");
    if (!domains->empty()) cmd_plot_domains(*domains, *out);
    else cmd_plot(*run, *out, *x == "tokens");
  });
}

}  // namespace dsmoe::cli
