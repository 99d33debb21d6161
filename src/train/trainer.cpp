#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <csignal>
#include <fstream>
#include <functional>
#include <optional>
#include <nlohmann/json.hpp>

#include <omp.h>

#include "core/blas_env.h"
#include "core/checked.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/progress.h"
#include "core/rng.h"
#include "core/sgemm_ceiling.h"
#include "io/safetensors.h"
#include "io/tokenizer_files.h"
#include "model/model.h"
#include "model/params.h"
#include "ops/bf16_gemm.h"
#include "report/run_charts.h"
#include "dist/parallel_groups.h"
#include "model/dispatch_tally.h"
#include "model/expert_parallel_layout.h"
#include "train/checkpoint.h"
#include "train/expert_shards.h"
#include "train/gradient_sync.h"
#include "train/replica_check.h"
#include "train/optimizer.h"
#include "train/run_dir.h"

namespace dsmoe {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

EvalRows eval_rows(int64_t batch, int64_t rank, int64_t ranks) {
  if (batch % ranks != 0) fail("evaluation batch of {} sequences cannot be split over {} processes", batch, ranks);
  return {rank * (batch / ranks), batch / ranks};
}

double evaluate(Model& model, const TokenSplit& val, int64_t batch, int64_t seq_len, int64_t n_batches,
                const std::function<void(int64_t)>& on_batch, Communicator* world) {
  // Several processes: each evaluates its slice of every batch (the rows a training step gives it).
  const int64_t P = world ? world->size() : 1;
  const EvalRows mine = eval_rows(batch, world ? world->rank() : 0, P);
  const int64_t rows = mine.count, first = mine.first;
  std::vector<int32_t> x, y;
  double sum = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < n_batches; ++i) {
    eval_batch(val, batch, seq_len, i, n_batches, x, y);
    ForwardResult r = model.forward(x.data() + first * seq_len, y.data() + first * seq_len, rows, seq_len, false);
    sum += r.lm_loss * (double)r.n_targets;
    count += r.n_targets;
    if (on_batch) on_batch(i);
  }
  if (P > 1) {
    double tot[2] = {sum, (double)count};
    world->all_reduce_sum(tot, 2);
    return tot[1] > 0 ? tot[0] / tot[1] : 0.0;
  }
  return count ? sum / (double)count : 0.0;
}

// A run killed after logging steps past its last checkpoint repeats those steps when resumed: drop
// their rows (and a torn last line) so that metrics.jsonl holds every step once.
static void drop_metrics_after(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  bool dropped = false;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer() ||
        j["step"].get<int64_t>() > step) {
      dropped = true;
      continue;
    }
    kept += line + "\n";
  }
  if (dropped) write_file_atomic(path, kept);
}

// Redraws the run's charts from metrics.jsonl (small: one row per logged step). Charts are a
// convenience, so a failure warns once and never stops training.
static void update_charts(const std::string& metrics_path, const std::string& out_dir, const ModelConfig& mc,
                          bool& warned) {
  try {
    report::write_run_charts(report::read_metrics(metrics_path), out_dir, report::run_chart_options(out_dir, &mc));
  } catch (const std::exception& e) {
    if (!warned) std::fprintf(stderr, "\n[dsmoe] warning: charts not written: %s\n", e.what());
    warned = true;
  }
}

// Max-over-mean expert load of one layer's selection counts.
static double load_imbalance(const std::vector<int64_t>& load) {
  if (load.empty()) return 0;
  double sum = 0, mx = 0;
  for (auto c : load) {
    sum += (double)c;
    mx = std::max(mx, (double)c);
  }
  return sum > 0 ? mx / (sum / (double)load.size()) : 0;
}

StepResult train_step(Model& model, AdamW& opt, const TrainConfig& tc, int64_t step, const BatchFn& next_batch,
                      ParallelGroups* par, bool overlap_grad_sync) {
  StepResult r;
  std::vector<int32_t> x, y;
  Communicator* world = par && par->world->size() > 1 ? par->world : nullptr;
  const int64_t P = world ? world->size() : 1, rank = world ? world->rank() : 0;
  if (tc.batch_size % P != 0)
    fail("training.batch_size ({}) must be a multiple of the number of processes ({}): each rank trains on an equal "
         "slice of every micro-batch", tc.batch_size, P);
  const int64_t local_batch = tc.batch_size / P, slice = local_batch * tc.seq_len;
  model.zero_grads();
  std::optional<GradientSync> sync;
  if (par) sync.emplace(model.layout(), *par);
  for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
    next_batch(micro, x, y);
    const int64_t tokens = tc.batch_size * tc.seq_len;
    if ((int64_t)x.size() != tokens || (int64_t)y.size() != tokens)
      fail("step {}: micro-batch {} has {} inputs and {} targets, expected {} x {}", step, micro, x.size(), y.size(),
           tc.batch_size, tc.seq_len);
    ForwardResult f =
        model.forward(x.data() + rank * slice, y.data() + rank * slice, local_batch, tc.seq_len, true);
    // The step's losses over the whole micro-batch: the LM loss over every rank's targets, and each
    // aux loss the mean of the ranks' (model/moe_layer.h MoeParallel: a batch-level loss is the same on
    // every rank, a sequence-level one the mean over each rank's sequences).
    double lm = f.lm_loss, n_targets = (double)f.n_targets, expert_aux = f.expert_aux, device_aux = f.device_aux;
    double comm_aux = f.comm_aux;
    int64_t dropped = 0;
    for (const auto& st : model.moe_stats()) dropped += st.dropped;
    if (world) {
      double tot[6] = {f.lm_loss * (double)f.n_targets, (double)f.n_targets, f.expert_aux, f.device_aux, f.comm_aux,
                       (double)dropped};  // dropped < 2^53: exact in double
      world->all_reduce_sum(tot, 6);
      n_targets = tot[1];
      lm = n_targets > 0 ? tot[0] / n_targets : 0.0;
      expert_aux = tot[2] / (double)P;
      device_aux = tot[3] / (double)P;
      comm_aux = tot[4] / (double)P;
      dropped = (int64_t)tot[5];
    }
    if (!std::isfinite(lm) || !std::isfinite(expert_aux) || !std::isfinite(device_aux) || !std::isfinite(comm_aux))
      fail("step {}: non-finite loss (lm {}, expert aux {}, device aux {}, comm aux {}) in micro-batch {}; training "
           "stopped", step, lm, expert_aux, device_aux, comm_aux, micro);
    // The LM gradient is averaged over all counted tokens of the step; the aux ones are not scaled.
    // The gradients are final only in the last micro-batch's backward.
    std::function<void(int64_t)> grads_final_from;
    if (sync && overlap_grad_sync && micro == tc.grad_accum - 1)
      grads_final_from = [&](int64_t from) { sync->ready_from(model.grads().data(), from); };
    model.backward(1.0f / (float)(n_targets * (double)tc.grad_accum), true, grads_final_from);
    r.lm_loss += lm / (double)tc.grad_accum;
    r.expert_aux += expert_aux / (double)tc.grad_accum;
    r.device_aux += device_aux / (double)tc.grad_accum;
    r.comm_aux += comm_aux / (double)tc.grad_accum;
    r.dropped += dropped;
    if (micro == 0) {
      for (const auto& st : model.moe_stats()) {
        if (st.load.empty()) continue;
        std::vector<int64_t> load = st.load;  // of the whole micro-batch
        if (world) world->all_reduce_sum(load.data(), (int64_t)load.size());
        r.max_load = std::max(r.max_load, load_imbalance(load));
        double mean = 0;
        for (auto c : load) mean += (double)c;
        mean /= (double)load.size();
        std::vector<double> rel;
        for (auto c : load) rel.push_back(mean > 0 ? std::round((double)c / mean * 1000) / 1000 : 0);
        r.expert_load.push_back(rel);
        if (st.entropy_tokens > 0) {  // the same layers on every rank: the same config
          double h[2] = {st.entropy_sum, (double)st.entropy_tokens};
          if (world) world->all_reduce_sum(h, 2);
          const double E = (double)st.load.size();
          r.routing_entropy.push_back(E > 1 ? h[0] / h[1] / std::log(E) : NAN);
        }
      }
    }
  }
  if (sync) sync->finish(model.grads().data());
  r.grad_norm = par ? global_grad_norm(model.layout(), model.grads(), *par) : grad_norm(model.grads());
  if (!std::isfinite(r.grad_norm)) {
    const std::string bad = first_nonfinite(model.layout(), model.grads());
    fail("step {}: non-finite gradient in tensor '{}'; training stopped", step,
         bad.empty() ? "(a routed-expert tensor of another rank)" : bad);
  }
  clip_grads(model.grads(), r.grad_norm, tc.grad_clip);
  r.lr = learning_rate(tc, step);
  opt.step(model.params().data(), model.grads().data(), r.lr, step);
  // A finite gradient can still give non-finite weights (an overflowing update, e.g. a huge learning
  // rate): stop here, before such weights reach a checkpoint and replace the last good one. Every rank
  // stops, whichever holds the tensor.
  const std::string bad = first_nonfinite(model.layout(), model.params());
  int64_t ranks_bad = bad.empty() ? 0 : 1;
  if (world) world->all_reduce_sum(&ranks_bad, 1);
  if (ranks_bad > 0)
    fail("step {}: non-finite weight in tensor '{}' after the AdamW update (lr {}); training stopped", step,
         bad.empty() ? "(a routed-expert tensor of another rank)" : bad, r.lr);
  return r;
}

uint64_t data_sampler_seed(const TrainConfig& tc) { return tc.seed ^ 0x5eedda7aULL; }

Config config_for_data(Config cfg, const TokenSplit& data) {
  if (data.bos_id >= 0) cfg.model.bos_token_id = data.bos_id;
  if (data.eos_id >= 0) cfg.model.eos_token_id = data.eos_id;
  return cfg;
}

// The training.precision a run folder's config.json records ("f32" when it has none: runs from
// before the key).
static std::string saved_precision(const std::string& dir) {
  std::ifstream in(fs::path(dir) / "config.json");
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_object() && j.contains("training") && j["training"].is_object() && j["training"].contains("precision") &&
      j["training"]["precision"].is_string())
    return j["training"]["precision"].get<std::string>();
  return "f32";
}

// The config a run over `P` processes trains: the device-level balance loss on the real partition
// (D = the expert-parallel size when the config leaves D at 1). Refuses what cannot be split.
static Config config_for_layout(Config cfg, int64_t P) {
  const int64_t ep = cfg.parallel.expert_parallel_size;
  if (P % ep != 0)
    fail("parallel.expert_parallel_size (or --ep) is {}, which does not divide the {} processes", ep, P);
  if (P > 1 && cfg.train.batch_size % P != 0)
    fail("training.batch_size ({}) must be a multiple of the number of processes ({}): each rank trains on an equal "
         "slice of every micro-batch", cfg.train.batch_size, P);
  if (ep > 1 && cfg.model.n_device_groups == 1) cfg.model.n_device_groups = ep;
  return cfg;
}

// The per-rank fields of a metrics row of a multi-process run, gathered from every rank (a
// collective: every rank calls it for the same rows): "comm_s" and "step_s" (seconds inside
// collectives / in training steps since the previous row) and "comm_wait_s" (the part of comm_s
// spent waiting for the other ranks to arrive: load imbalance, not transfer; dist/communicator.h
// CollectiveClock). With expert parallelism also "rows_sent"[r][s] / "rows_received"[s][r] (rows of
// the MoE layers' forward dispatches from rank r to rank s, itself included; zero between ranks of
// different expert-parallel groups), "expert_rows"[s] (rows rank s's experts computed), and what
// those rows make on the wire, derived from them (one count, not two): "a2a_slots_leaving"[r] (A_r,
// rows r sent to other ranks) and "a2a_bytes_sent"[r] = "a2a_bytes_received"[r] = 8 H (A_r + B_r)
// with B_r the rows r received from other ranks. A training step moves every such row four times,
// H fp32 each: the forward's dispatch (A_r out, B_r in) and combine (B_r out, A_r in), and their
// backwards again. Over all ranks that is 16 H x the slots leaving their rank (the formula).
// Returns the mean over ranks of comm_s / step_s and of comm_wait_s / step_s.
struct CommShare {
  double total = -1, waiting = -1;
};
static CommShare add_rank_metrics(nlohmann::json& rec, Communicator& world, const std::vector<int64_t>& sent,
                                  const std::vector<int64_t>& received, double comm_s, double wait_s, double step_s,
                                  bool traffic, int64_t hidden) {
  const int64_t P = world.size();
  std::vector<int64_t> mine(sent);
  mine.insert(mine.end(), received.begin(), received.end());
  mine.push_back((int64_t)std::llround(comm_s * 1e9));
  mine.push_back((int64_t)std::llround(wait_s * 1e9));
  mine.push_back((int64_t)std::llround(step_s * 1e9));
  const int64_t per = 2 * P + 3;
  std::vector<int64_t> all((size_t)(per * P));
  world.all_gather(mine.data(), all.data(), per);
  nlohmann::json comm = nlohmann::json::array(), waits = nlohmann::json::array(), steps = nlohmann::json::array(),
                 tx = nlohmann::json::array(), rx = nlohmann::json::array(), rows = nlohmann::json::array(),
                 leaving = nlohmann::json::array(), bytes = nlohmann::json::array();
  CommShare share{0, 0};
  for (int64_t r = 0; r < P; ++r) {
    const int64_t* a = all.data() + r * per;
    const double c = (double)a[2 * P] / 1e9, w = (double)a[2 * P + 1] / 1e9, t = (double)a[2 * P + 2] / 1e9;
    comm.push_back(c);
    waits.push_back(w);
    steps.push_back(t);
    share.total += t > 0 ? c / t / (double)P : 0;
    share.waiting += t > 0 ? w / t / (double)P : 0;
    tx.push_back(std::vector<int64_t>(a, a + P));
    rx.push_back(std::vector<int64_t>(a + P, a + 2 * P));
    int64_t computed = 0, out = 0, in = 0;
    for (int64_t q = 0; q < P; ++q) {
      computed += a[P + q];
      if (q != r) {
        out += a[q];
        in += a[P + q];
      }
    }
    rows.push_back(computed);
    leaving.push_back(out);
    bytes.push_back(checked_mul(2 * (int64_t)sizeof(float) * hidden, out + in, "all-to-all bytes"));
  }
  rec["comm_s"] = comm;
  rec["comm_wait_s"] = waits;
  rec["step_s"] = steps;
  if (traffic) {
    rec["rows_sent"] = tx;
    rec["rows_received"] = rx;
    rec["expert_rows"] = rows;
    rec["a2a_slots_leaving"] = leaving;
    rec["a2a_bytes_sent"] = bytes;
    rec["a2a_bytes_received"] = bytes;
  }
  return share;
}

TrainSummary train(const Config& cfg_in, const TrainOptions& opt) {
  SingleProcessCommunicator alone;
  Communicator& world = opt.world ? *opt.world : alone;
  const int64_t P = world.size();
  const bool root = world.rank() == 0;  // writes the run folder, the metrics and the progress
  // Before anything is read or written: bf16 products without the instructions would be emulated by
  // oneDNN, far slower than fp32, so the precision is refused rather than run or silently dropped.
  if (cfg_in.train.precision == ops::Precision::BF16 && !ops::bf16_gemm_available())
    usage_error("training.precision is \"bf16\", but this CPU has no AVX512_BF16 (or DSMOE_NO_AVX512_BF16 is set): "
                "bf16 mixed-precision training needs it; train with \"f32\" (--precision f32)");
  TokenSplit train_data = load_split(opt.data_dir, "train", cfg_in.model.vocab_size);
  TokenSplit val_data = load_split(opt.data_dir, "val", cfg_in.model.vocab_size);
  const Config cfg = config_for_layout(config_for_data(cfg_in, train_data), P);
  const TrainConfig& tc = cfg.train;
  const ModelConfig& mc = cfg.model;
  if (train_data.vocab_size > mc.vocab_size)
    fail("{}: the data's vocabulary ({} tokens, tokenizer '{}') is larger than the model's vocab_size ({})",
         opt.data_dir, train_data.vocab_size, train_data.tokenizer, mc.vocab_size);
  // Ranks that would train different things must not start (they would deadlock or diverge).
  check_same_on_all_ranks(world,
                          fmt::format("{}\nexpert_parallel_size {}\noverlap_grad_sync {}\ndata {}\ntrain {}\nval {}\n"
                                      "out {}{}{}\n",
                                      to_json(cfg).dump(2), cfg.parallel.expert_parallel_size,
                                      cfg.parallel.overlap_grad_sync, opt.data_dir,
                                      split_fingerprint(train_data), split_fingerprint(val_data), opt.out_dir,
                                      opt.resume ? " --resume" : "", opt.force ? " --force" : ""),
                          "config, layout, data and run folder");
  // The metrics split each rank's time in collectives into waiting for the others and transfer.
  set_split_collective_waiting(P > 1);
  ExpertParallelLayout layout = make_expert_parallel_layout(world, mc, cfg.parallel.expert_parallel_size);
  ParallelGroups& groups = layout.groups;
  const int64_t ep = groups.expert_parallel;
  const ExpertShard shard = layout.shard;

  // Rank 0 prepares the run folder; the others learn how it starts (or end with it when it refuses).
  int64_t start_code = 0;
  if (root) start_code = open_run_dir(opt.out_dir, opt.data_dir, opt.resume, opt.force) == RunStart::Resume;
  world.broadcast(&start_code, sizeof start_code, 0);
  const RunStart start = start_code ? RunStart::Resume : RunStart::Fresh;
  Model model(mc, shard);
  model.set_precision(tc.precision);
  // The expert-parallel traffic of each step, for metrics.jsonl (rows per rank of the group).
  std::unique_ptr<TallyingTokenDispatcher> tally;
  if (layout.dispatcher) tally = std::make_unique<TallyingTokenDispatcher>(*layout.dispatcher, ep);
  if (P > 1) model.set_parallel(MoeParallel{tally.get(), &world});
  if (opt.init && start == RunStart::Fresh) {
    if (shard.all()) {
      opt.init(model);
    } else {  // the initialiser fills a whole model; this rank keeps its experts
      Model whole(mc);
      opt.init(whole);
      take_expert_shard(whole.layout(), whole.params().data(), model.layout(), model.params().data());
    }
  } else {
    Rng init_rng(tc.seed);
    model.init_weights(init_rng, tc.init_std > 0 ? tc.init_std : mc.initializer_range);
  }
  AdamW optimizer(model.layout(), tc);
  BatchSampler sampler(train_data, tc.batch_size, tc.seq_len, data_sampler_seed(tc));
  TrainState st;
  // The run folder carries its tokenizer (and tokenizer_config.json: BOS/EOS, chat template), so that
  // generate/chat/score/export read text with exactly what the data was made with.
  if (root && train_data.tokenizer != "bytes") copy_tokenizer_files(train_data.tokenizer, opt.out_dir);
  const std::string metrics_path = (fs::path(opt.out_dir) / "metrics.jsonl").string();
  ProgressOptions po;
  po.enabled = opt.progress && root;
  po.show_rate = false;  // the line shows tokens/s itself
  Progress progress("step", tc.steps, "", po);
  if (start == RunStart::Resume) {
    // Another precision than the run's so far is allowed (the weights and moments are fp32 either
    // way) and said, even with --quiet, like where the run resumes.
    const std::string was = saved_precision(opt.out_dir);
    if (root && was != ops::precision_name(tc.precision)) {
      const std::string note = fmt::format("[dsmoe] {}: resuming with training.precision \"{}\"; the run so far was "
                                           "trained with \"{}\"", opt.out_dir, ops::precision_name(tc.precision), was);
      if (opt.progress) progress.message(note);
      else std::fprintf(stderr, "%s\n", note.c_str());
    }
    if (shard.all()) {
      load_checkpoint(opt.out_dir, model, &optimizer, &st, false, opt.checksums);
    } else {  // the one logical checkpoint, whatever layout wrote it: this rank keeps its experts
      Model whole(mc);
      AdamW whole_opt(whole.layout(), tc);
      load_checkpoint(opt.out_dir, whole, &whole_opt, &st, false, opt.checksums);
      take_expert_shard(whole.layout(), whole.params().data(), model.layout(), model.params().data());
      take_expert_shard(whole.layout(), whole_opt.m().data(), model.layout(), optimizer.m().data());
      take_expert_shard(whole.layout(), whole_opt.v().data(), model.layout(), optimizer.v().data());
    }
    sampler.set_state(st.data_rng);
    if (root) drop_metrics_after(metrics_path, st.step);
    // Said even with --quiet: which state the run continues from is part of its result.
    const std::string note = fmt::format("[dsmoe] resumed from {} at step {} of {}", opt.out_dir, st.step, tc.steps);
    if (opt.progress && root) progress.message(note);
    else if (root) std::fprintf(stderr, "%s\n", note.c_str());
  } else if (root) {
    std::ofstream(metrics_path, std::ios::trunc);  // a fresh run starts a fresh log
  }
  std::ofstream metrics;
  if (root) {
    metrics.open(metrics_path, std::ios::app);
    if (!metrics) fail("{}: cannot open for writing", metrics_path);
  }

  if (opt.progress)
    progress.message(fmt::format("[dsmoe] {}: {} params{}, {} threads, precision {}, OpenBLAS kernels {}{}", opt.out_dir,
                                 ParamLayout(mc).total(),
                                 opt.init && start == RunStart::Fresh ? ", initialised from " + opt.init_from : "",
                                 omp_get_max_threads(), ops::precision_name(tc.precision), blas_kernel_name(),
                                 P > 1 ? fmt::format(", {} processes: expert-parallel {} x data-parallel {}", P, ep,
                                                     groups.data_parallel())
                                       : ""));
  std::optional<InterruptGuard> guard;
  if (opt.catch_signals) guard.emplace();
  TrainSummary sum;
  sum.unigram_baseline = unigram_baseline(train_data, val_data);
  const int64_t tokens_per_step = tc.batch_size * tc.seq_len * tc.grad_accum;
  const int64_t last_step = opt.stop_after > 0 ? std::min(opt.stop_after, tc.steps) : tc.steps;
  const auto t_start = Clock::now();
  auto t_log = t_start;
  auto seconds_since = [](Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); };
  int64_t steps_since_log = 0;
  double lm_acc = 0, aux_acc = 0, dev_acc = 0, comm_acc = 0, side_s_since_log = 0;
  int64_t dropped_since_log = 0;
  const int64_t first_step = st.step + 1;
  progress.start_at(st.step, last_step);
  bool charts_warned = false;
  auto save = [&] {
    const auto t0 = Clock::now();
    if (P > 1) {
      check_replicas_identical(model.layout(), model.params().data(), groups, "parameters");
      check_replicas_identical(model.layout(), optimizer.m().data(), groups, "AdamW first moments");
      check_replicas_identical(model.layout(), optimizer.v().data(), groups, "AdamW second moments");
    }
    st.data_rng = sampler.state();
    if (shard.all()) {
      if (root) save_checkpoint(opt.out_dir, cfg, model, &optimizer, st);
    } else if (world.rank() < ep) {  // the first expert-parallel group gathers the whole model on rank 0
      std::optional<Model> whole;
      std::optional<AdamW> whole_opt;
      if (root) {
        whole.emplace(mc);
        whole_opt.emplace(whole->layout(), tc);
      }
      const ParamLayout whole_layout(mc);
      gather_expert_shards(model.layout(), model.params().data(), whole_layout, root ? whole->params().data() : nullptr,
                           *groups.experts);
      gather_expert_shards(model.layout(), optimizer.m().data(), whole_layout, root ? whole_opt->m().data() : nullptr,
                           *groups.experts);
      gather_expert_shards(model.layout(), optimizer.v().data(), whole_layout, root ? whole_opt->v().data() : nullptr,
                           *groups.experts);
      if (root) save_checkpoint(opt.out_dir, cfg, *whole, &*whole_opt, st);
    }
    const double dt = seconds_since(t0);
    sum.checkpoint_s += dt;
    side_s_since_log += dt;
  };

  // Since the last metrics row, this rank's: rows sent to / received from each world rank by the
  // MoE layers' forward dispatches, seconds inside collectives and seconds of training steps.
  std::vector<int64_t> rows_sent((size_t)P, 0), rows_received((size_t)P, 0);
  double comm_s_since_log = 0, wait_s_since_log = 0, step_s_since_log = 0;
  for (int64_t step = first_step; step <= last_step; ++step) {
    if (tally) tally->reset();
    const CollectiveClock comm0 = collective_clock();
    const auto step_t0 = Clock::now();
    StepResult r = train_step(
        model, optimizer, tc, step,
        [&](int64_t, std::vector<int32_t>& xi, std::vector<int32_t>& yi) { sampler.next(xi, yi); }, &groups,
        cfg.parallel.overlap_grad_sync);
    step_s_since_log += seconds_since(step_t0);
    comm_s_since_log += collective_clock().seconds - comm0.seconds;
    wait_s_since_log += collective_clock().waiting - comm0.waiting;
    if (tally) {
      const int64_t group_start = world.rank() / ep * ep;  // world rank of expert-parallel rank 0 of this group
      for (int64_t j = 0; j < ep; ++j) {
        rows_sent[(size_t)(group_start + j)] += tally->sent()[(size_t)j];
        rows_received[(size_t)(group_start + j)] += tally->received()[(size_t)j];
      }
    }
    const double lm = r.lm_loss, aux = r.expert_aux, dev = r.device_aux, gnorm = r.grad_norm, lr = r.lr;
    const double imbalance = r.max_load;
    const auto& layer_load = r.expert_load;
    st.step = step;
    st.tokens_seen += tokens_per_step;
    lm_acc += lm;
    aux_acc += aux;
    dev_acc += dev;
    comm_acc += r.comm_aux;
    dropped_since_log += r.dropped;
    ++steps_since_log;
    ++sum.steps_run;
    sum.steps_done = step;

    // A signal reaches the ranks at different moments: they stop together, at the first step
    // after which any of them has one.
    int64_t signal = interrupt_requested();
    if (P > 1) {
      int64_t sigs[2] = {signal, signal != 0};
      world.all_reduce_sum(sigs, 2);
      signal = sigs[1] == 0 ? 0 : (signal != 0 ? signal : SIGTERM);
    }
    if (const int sig = (int)signal) {
      save();
      progress.set_done(step);
      progress.finish("interrupted, checkpoint saved");
      throw Interrupted(fmt::format("{} at step {} of {}: checkpoint saved in {}; continue the run with the same "
                                    "`dsmoe train` command and --resume",
                                    sig == SIGTERM ? "terminated (SIGTERM)" : "interrupted (SIGINT)", step, tc.steps,
                                    opt.out_dir),
                        sig);
    }

    const bool last = step == last_step;
    const bool do_eval = last || (tc.eval_interval > 0 && step % tc.eval_interval == 0);
    double val = NAN;
    if (do_eval) {
      const auto t0 = Clock::now();
      val = evaluate(model, val_data, tc.batch_size, tc.seq_len, tc.eval_batches, {}, P > 1 ? &world : nullptr);
      const double dt = seconds_since(t0);
      sum.eval_s += dt;
      side_s_since_log += dt;
    }
    if (step % tc.log_interval == 0 || last || do_eval) {
      const auto now = Clock::now();
      // tokens/s of the training steps alone: evaluation and checkpoint time is not training speed
      const double dt = std::chrono::duration<double>(now - t_log).count() - side_s_since_log;
      const double elapsed = std::chrono::duration<double>(now - t_start).count();
      const double tps = dt > 0 ? (double)(steps_since_log * tokens_per_step) / dt : 0;
      nlohmann::json rec = {{"step", step},
                            {"lr", lr},
                            {"lm_loss", lm_acc / steps_since_log},
                            {"expert_aux", aux_acc / steps_since_log},
                            {"device_aux", dev_acc / steps_since_log},
                            {"comm_aux", comm_acc / steps_since_log},
                            {"grad_norm", gnorm},
                            {"tokens", st.tokens_seen},
                            {"tokens_per_s", tps},
                            {"elapsed_s", elapsed},
                            {"max_load", imbalance},
                            {"precision", ops::precision_name(tc.precision)},
                            {"threads", omp_get_max_threads()}};
      if (!layer_load.empty()) rec["expert_load"] = layer_load;
      if (!r.routing_entropy.empty()) {
        std::vector<double> h;
        for (double v : r.routing_entropy) h.push_back(std::round(v * 1e5) / 1e5);
        rec["routing_entropy"] = h;
      }
      if (mc.capacity_factor > 0) rec["dropped"] = dropped_since_log;  // slots, summed over the logged steps
      if (do_eval) rec["val_loss"] = val;
      CommShare comm_share;
      if (P > 1) {
        comm_share = add_rank_metrics(rec, world, rows_sent, rows_received, comm_s_since_log, wait_s_since_log,
                                      step_s_since_log, tally != nullptr, mc.hidden_size);
        std::fill(rows_sent.begin(), rows_sent.end(), 0);
        std::fill(rows_received.begin(), rows_received.end(), 0);
        comm_s_since_log = wait_s_since_log = step_s_since_log = 0;
      }
      if (root) {
        metrics << rec.dump() << "\n";
        metrics.flush();
        if (do_eval && opt.charts) update_charts(metrics_path, opt.out_dir, mc, charts_warned);
      }
      std::string detail = fmt::format("{:.0f} tok/s | lm {:.4f}", tps, lm_acc / steps_since_log);
      if (mc.is_moe())
        detail += fmt::format(" | aux {:.4f} dev {:.4f}{} | load max/mean {:.2f}", aux_acc / steps_since_log,
                              dev_acc / steps_since_log,
                              mc.comm_aux_alpha > 0 ? fmt::format(" comm {:.4f}", comm_acc / steps_since_log) : "",
                              imbalance);
      if (do_eval) detail += fmt::format(" | val {:.4f}", val);
      if (comm_share.total >= 0)
        detail += fmt::format(" | comm {:.0f}% (wait {:.0f}%)", 100 * comm_share.total, 100 * comm_share.waiting);
      progress.update(step, detail, /*force=*/true);
      sum.final_lm_loss = lm_acc / steps_since_log;
      lm_acc = aux_acc = dev_acc = comm_acc = side_s_since_log = 0;
      dropped_since_log = 0;
      steps_since_log = 0;
      t_log = now;
    }
    if (do_eval) sum.val_loss = val;
    if (last || (tc.checkpoint_interval > 0 && step % tc.checkpoint_interval == 0)) save();
  }
  sum.wall_s = seconds_since(t_start);
  const double train_s = sum.wall_s - sum.eval_s - sum.checkpoint_s;
  int64_t sgemm_n = 0;
  if (sum.steps_run > 0 && train_s > 0) {
    sum.tokens_per_s = (double)(sum.steps_run * tokens_per_step) / train_s;
    sum.model_flops_per_s = sum.tokens_per_s * model_stats(mc, tc.seq_len).train_flops_per_token;
    // bench/'s ceiling is a 2048^3 SGEMM (about 0.3 s to measure); runs too short to care about their
    // MFU (tests, smoke runs) get a 1024^3 one, which reads 10-25% lower on this machine.
    sgemm_n = sum.wall_s > 30 ? 2048 : 1024;
    sum.sgemm_ceiling = measure_sgemm_flops(sgemm_n);
    sum.mfu = sum.sgemm_ceiling > 0 ? sum.model_flops_per_s / sum.sgemm_ceiling : 0;
  }
  if (sum.steps_run > 0)
    progress.finish(fmt::format("{:.0f} tok/s average, MFU {:.1f}% of a {:.0f} GFLOP/s SGEMM ({}^3)", sum.tokens_per_s,
                                100 * sum.mfu, sum.sgemm_ceiling / 1e9, sgemm_n));
  if (first_step > last_step)
    sum.val_loss = evaluate(model, val_data, tc.batch_size, tc.seq_len, tc.eval_batches, {}, P > 1 ? &world : nullptr);
  return sum;
}

}  // namespace dsmoe
