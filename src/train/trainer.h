// The training loop: micro-batches with gradient accumulation, the LM loss scaled by 1/accum and the
// aux losses not (as the official code), global-norm clipping, the LR schedule, AdamW, NaN/Inf
// detection, periodic evaluation, metrics.jsonl, a live progress line and atomic checkpoints.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "train/data.h"

namespace dsmoe {

class Model;
class AdamW;

struct StepResult {
  double lm_loss = 0, expert_aux = 0, device_aux = 0;  // means over the micro-batches
  double grad_norm = 0;                                // before clipping
  double lr = 0;
  double max_load = 0;                                 // max over MoE layers of max/mean expert load
  std::vector<std::vector<double>> expert_load;        // per MoE layer, load / mean load (first micro-batch)
};

// Fills inputs/targets [batch, seq] for micro-batch `micro` of the current step.
using BatchFn = std::function<void(int64_t micro, std::vector<int32_t>& inputs, std::vector<int32_t>& targets)>;

// One optimizer step: grad_accum micro-batches, LM loss scaled by 1/(tokens * grad_accum), each aux
// loss with gradient 1 per micro-batch (official AddAuxiliaryLoss), clipping, schedule, AdamW.
// Throws dsmoe::Error naming the step and the loss or tensor when anything is NaN/Inf.
StepResult train_step(Model& model, AdamW& opt, const TrainConfig& tc, int64_t step, const BatchFn& next_batch);

struct TrainOptions {
  std::string data_dir;
  std::string out_dir;
  bool resume = false;      // continue from out_dir/checkpoint.safetensors if present
  int64_t stop_after = 0;   // stop (with a checkpoint) after this step; 0 = run to the end
  bool progress = true;     // live progress line on stderr
  bool charts = true;       // loss.svg etc. (report/run_charts.h) in out_dir at each evaluation
};

struct TrainSummary {
  int64_t steps_done = 0;
  double final_lm_loss = 0;  // last logged training LM loss
  double val_loss = 0;       // at the end
  double unigram_baseline = 0;
  double tokens_per_s = 0;
};

TrainSummary train(const Config& cfg, const TrainOptions& opt);

// Mean validation LM loss over the config's fixed evaluation windows.
double evaluate(Model& model, const TokenSplit& val, int64_t batch, int64_t seq_len, int64_t n_batches);

}  // namespace dsmoe
