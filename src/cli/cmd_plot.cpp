// `dsmoe plot`: the charts of a training run (loss, learning rate, expert load) as SVG files.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "model/config.h"
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

}  // namespace

void add_plot_commands(CLI::App& app) {
  auto* c = app.add_subcommand("plot", "draw a training run's charts (loss, learning rate, expert load) as SVG");
  auto run = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto x = std::make_shared<std::string>("step");
  c->add_option("--run", *run, "run folder (dsmoe train --out)")->required();
  c->add_option("--out", *out, "folder for the SVG files (default: the run folder)");
  c->add_option("--x", *x, "x axis of the curves: step or tokens")
      ->check(CLI::IsMember({"step", "tokens"}))
      ->capture_default_str();
  c->callback([=] { cmd_plot(*run, *out, *x == "tokens"); });
}

}  // namespace dsmoe::cli
