// The charts of a training run, drawn from its metrics.jsonl: loss.svg (train and validation loss),
// lr.svg, and for MoE runs expert_load.svg (layers x experts at the last logged step),
// load_balance.svg (max/mean expert load over training) and, for learned routers,
// routing_entropy.svg (each MoE layer's normalised routing entropy over training). Used by `dsmoe plot` and by the trainer.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsmoe {
struct ModelConfig;
}

namespace dsmoe::report {

// The columns of metrics.jsonl that the charts use (absent or null values are NaN).
struct MetricsLog {
  std::vector<double> step, tokens, lm_loss, lr, max_load;  // one per logged row
  std::vector<double> val_step, val_tokens, val_loss;       // rows that carry "val_loss"
  int64_t load_step = -1;                                   // last row with "expert_load" (-1: none)
  std::vector<std::vector<double>> expert_load;             // its per-MoE-layer load / mean load
  std::vector<double> entropy_step, entropy_tokens;         // rows that carry "routing_entropy"
  std::vector<std::vector<double>> routing_entropy;         // [row][MoE layer]: entropy / ln(experts)
};

// Reads metrics.jsonl as the trainer writes it. Throws dsmoe::Error naming the file (missing) or the
// file and line (not JSON, no integer "step", a non-numeric value). A torn last line without a
// newline (a run killed while writing it) is ignored, as the trainer does on resume.
MetricsLog read_metrics(const std::string& path);

struct RunChartOptions {
  std::string name;                    // run name shown in the titles (e.g. the folder name)
  bool x_tokens = false;               // x axis: tokens seen instead of steps
  std::vector<int64_t> moe_layer_ids;  // model layer index of each MoE layer (empty: "MoE 0", "MoE 1", ...)
};

// Options for a run folder: its name, and (when the model config is known) the model layer of each
// MoE layer.
RunChartOptions run_chart_options(const std::string& run_dir, const ModelConfig* mc);

// Writes the charts into out_dir (created if needed) and returns their paths.
std::vector<std::string> write_run_charts(const MetricsLog& m, const std::string& out_dir, const RunChartOptions& o);

}  // namespace dsmoe::report
