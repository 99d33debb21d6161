// The training loop: micro-batches with gradient accumulation, the LM loss scaled by 1/accum and the
// aux losses not (as the official code), global-norm clipping, the LR schedule, AdamW, NaN/Inf
// detection, periodic evaluation, metrics.jsonl, a live progress line and atomic checkpoints.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"
#include "train/data.h"

namespace dsmoe {

class Communicator;
class Model;
class AdamW;
struct ParallelGroups;

struct StepResult {
  double lm_loss = 0, expert_aux = 0, device_aux = 0, comm_aux = 0;  // means over the micro-batches
  int64_t dropped = 0;                                 // capacity-dropped slots: all ranks, layers, micro-batches
  double grad_norm = 0;                                // before clipping
  double lr = 0;
  double max_load = 0;                                 // max over MoE layers of max/mean expert load
  std::vector<std::vector<double>> expert_load;        // per MoE layer, load / mean load (first micro-batch)
  // Per MoE layer with a learned router: the mean routing entropy over the first micro-batch's tokens
  // (all ranks), divided by ln(routed experts): 1 = uniform routing, 0 = one expert per token.
  std::vector<double> routing_entropy;
};

// Fills inputs/targets [batch, seq] for micro-batch `micro` of the current step.
using BatchFn = std::function<void(int64_t micro, std::vector<int32_t>& inputs, std::vector<int32_t>& targets)>;

// One optimizer step: grad_accum micro-batches, LM loss scaled by 1/(tokens * grad_accum), each aux
// loss with gradient 1 per micro-batch (official AddAuxiliaryLoss), clipping, schedule, AdamW.
// Throws dsmoe::Error naming the step and the loss or tensor when anything is NaN/Inf.
// With `par` (several processes; the model's MoeParallel set up to match, see ParallelTrainer), next_batch
// still gives the whole micro-batch (every rank draws the same one) and this rank trains on its slice,
// rows [rank * batch / P, (rank + 1) * batch / P); losses, the gradient, its norm and every NaN/Inf
// check are global, so every rank gets the same StepResult (and stops at the same step, with the same
// message) as one process would. overlap_grad_sync: the gradient buckets' all-reduces start during
// the last micro-batch's backward (train/gradient_sync.h; the same result).
StepResult train_step(Model& model, AdamW& opt, const TrainConfig& tc, int64_t step, const BatchFn& next_batch,
                      ParallelGroups* par = nullptr, bool overlap_grad_sync = false);

struct TrainOptions {
  Communicator* world = nullptr;  // the processes training together (null = this one alone); rank 0 writes
  std::string data_dir;
  std::string out_dir;      // the run folder; what may exist there: train/run_dir.h
  bool resume = false;      // continue from out_dir/checkpoint.safetensors (an error when there is none)
  Checksums checksums = Checksums::Verify;  // of the checkpoint resumed from (Skip: --no-verify)
  bool force = false;       // replace a previous run in out_dir
  int64_t stop_after = 0;   // stop (with a checkpoint) after this step; 0 = run to the end
  bool progress = true;     // progress on stderr (core/progress.h)
  bool charts = true;       // loss.svg etc. (report/run_charts.h) in out_dir at each evaluation
  bool catch_signals = true;  // SIGINT/SIGTERM: checkpoint the current step, then throw Interrupted
  // A fresh run's initial weights instead of the random init (e.g. a model folder's, for continued
  // pre-training or fine-tuning: `dsmoe train --init-from`); `init_from` names them in messages.
  std::function<void(Model&)> init;
  std::string init_from;
};

struct TrainSummary {
  int64_t steps_done = 0;
  int64_t steps_run = 0;        // steps trained by this call (0 when a finished run was resumed)
  double final_lm_loss = 0;     // last logged training LM loss
  double val_loss = 0;          // at the end
  double unigram_baseline = 0;
  double tokens_per_s = 0;      // tokens of this call / its training-step time (evaluation, checkpoints excluded)
  double wall_s = 0;            // of this call's step loop, everything included
  double eval_s = 0, checkpoint_s = 0;
  double model_flops_per_s = 0; // tokens_per_s x training FLOPs per token (6N + attention, model_stats)
  double sgemm_ceiling = 0;     // FLOP/s of a large SGEMM measured at the end, same threads
  double mfu = 0;               // model_flops_per_s / sgemm_ceiling
};

TrainSummary train(const Config& cfg, const TrainOptions& opt);

// The seed of a run's training-data sampler (BatchSampler): every rank of a multi-process run draws
// the same batches from it.
uint64_t data_sampler_seed(const TrainConfig& tc);

// The config a run on `data` saves: bos_token_id / eos_token_id become the ids the data marks
// documents with (when it has them), so that inference on the run folder uses the same ones.
Config config_for_data(Config cfg, const TokenSplit& data);

// The rows of every evaluation batch that rank `rank` of `ranks` evaluates: [first, first + count).
// Fails when the batch does not split evenly.
struct EvalRows {
  int64_t first = 0, count = 0;
};
EvalRows eval_rows(int64_t batch, int64_t rank, int64_t ranks);

// Mean validation LM loss over the config's fixed evaluation windows. on_batch(i) after batch i
// (0-based), for progress. With `world` (several processes, the model set up as for train_step),
// each rank evaluates its slice of every batch and all get the whole mean.
double evaluate(Model& model, const TokenSplit& val, int64_t batch, int64_t seq_len, int64_t n_batches,
                const std::function<void(int64_t)>& on_batch = {}, Communicator* world = nullptr);

}  // namespace dsmoe
