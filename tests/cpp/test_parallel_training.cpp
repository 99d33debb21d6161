// Training over several processes (`mpirun -np P dsmoe train`, data parallelism and expert
// parallelism) against one process: the same global batches and seed, 10 AdamW steps with gradient
// accumulation, clipping and warmup; per-step LM loss, both aux losses and gradient norm, and every
// parameter of the checkpoint rank 0 writes, for a DeepSeekMoE config (1 shared + 8 fine-grained
// routed experts, top-2, first layer dense, expert- and device-level balance losses with D = 2) with
// sequence-level and batch-level balance statistics, norm_topk_prob off and on, DeepSeek-V2's routing
// and capacity, and the paper's GShard, Switch and Hash baselines (Variant below).
//
// The regime is chosen so that the comparison is well-posed, not to widen any tolerance:
//  - lr 3e-3: the budget below is first order in the weights' differences, which holds while the
//    trajectory is smooth. At lr 1e-2 this tiny model's gradient norm jumps 4x at step 8 on some data
//    seeds, and there two fp32 runs drift apart faster than first order (seen between one process
//    and two: 1e-8 relative at step 1, 1e-4 at step 7, 6e-3 at step 8; one-process runs at 1, 2 and
//    3 threads stay bit-identical).
//  - init_std 0.2 (as test_moe_paths): top-k routing is discontinuous. With init_std 0.02 the
//    router's probabilities are nearly uniform, and the gap between a token's k-th and (k+1)-th
//    expert is below the two runs' 1e-8 relative difference for about one of ~2500 decisions per
//    run (seen: the expert aux loss jumps by one slot's share, 3e-5 relative, at step 9, and the two
//    experts' weights leave their budget). Sharper routers make such near-ties ~100x rarer (0
//    failures in 18 runs of every layout here, against ~1 in 12 before).
//
// The reference is this process: train_step on the one-process model (1 thread), which must equal
// `dsmoe train` without mpirun bit for bit (checked). The tolerances: every multi-process gradient is
// the same fp32 arithmetic as the reference's, with the sums over tokens split by rank and added by
// the all-reduce (and, for expert parallelism, an expert's rows from several ranks): another order of
// the same fp32 sums. Each of the two is within kRel (max |g| + |g|) of the exact gradient (the
// budget test_model checks the one-process engine against the fp64 oracle with, ~60x its measured
// error; a sum's fp32 error bound gamma_n sum |terms| holds for any order), so they differ by at most
// 4 kRel max |g_t| per element of Hugging Face tensor t. test::AdamTrajectoryBudget carries that
// through the AdamW steps into a per-element parameter budget, and the losses get 1e-5 relative per
// side (their own fp32 evaluation, as test_model) plus the first-order drift of the weights' budget.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <filesystem>
#include <map>

#include "cli_runner.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/model.h"
#include "test_util.h"
#include "train/data.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace test::cli;

constexpr double kRel = 2e-5;  // test_model's gradient budget against the exact (fp64) gradient

// The routing variants (D = n_device_groups = 2 in every one, so a run at P = 4 with --ep 4 still has
// the one-process partition). On the DeepSeekMoE config (1 shared + 8 fine-grained routed experts):
//   plain     softmax top-2 over 8 experts, norm_topk_prob off
//   normtopk  plain with norm_topk_prob on (the chosen gates renormalised to sum to 1)
//   v2        DeepSeek-V2 device-limited routing, one group per device (n_group 2, topk_group M = 1:
//             a token's experts lie on one device), the communication loss, norm_topk_prob on
//   capacity  v2 plus the per-device capacity (cf 1.0: each of the 2 devices keeps at most half of
//             the micro-batch's slots, the highest-affinity ones), which binds on most steps
// The paper's baselines (configs/paper/): no shared expert, 8 experts of the standard FFN width
// (intermediate_size 64), the expert-level balance loss only:
//   gshard    learned top-2
//   switch    learned top-1 (the gate is the chosen expert's probability: nothing renormalised)
//   hash      top-1 by a fixed hash of the token id, gate 1, no router and no balance loss
enum class Variant { Plain, NormTopk, V2, Capacity, GShard, Switch, Hash };
const char* variant_name(Variant v) {
  switch (v) {
    case Variant::Plain: return "";
    case Variant::NormTopk: return "_normtopk";
    case Variant::V2: return "_v2";
    case Variant::Capacity: return "_capacity";
    case Variant::GShard: return "_gshard";
    case Variant::Switch: return "_switch";
    case Variant::Hash: return "_hash";
  }
  return "?";
}

json parallel_config(bool seq_aux, Variant v = Variant::Plain) {
  json j = json{{"num_hidden_layers", 3},
              {"seq_aux", seq_aux},
              {"training",
               {{"steps", 10},
                {"warmup_steps", 2},
                {"lr", 3e-3},
                {"init_std", 0.2},
                {"batch_size", 4},
                {"seq_len", 16},
                {"grad_accum", 2},
                {"grad_clip", 0.5},
                {"eval_batches", 2},
                {"eval_interval", 0},
                {"log_interval", 1}}}};
  if (v == Variant::NormTopk) j.merge_patch({{"norm_topk_prob", true}});
  if (v == Variant::V2 || v == Variant::Capacity)
    j.merge_patch({{"topk_method", "group_limited_greedy"}, {"n_group", 2}, {"topk_group", 1}, {"comm_aux_alpha", 0.05},
                   {"norm_topk_prob", true}});
  if (v == Variant::Capacity) j.merge_patch({{"capacity_factor", 1.0}});
  if (v == Variant::GShard || v == Variant::Switch || v == Variant::Hash)
    j.merge_patch({{"n_shared_experts", 0}, {"moe_intermediate_size", 64}, {"device_aux_alpha", 0.0},
                   {"num_experts_per_tok", v == Variant::GShard ? 2 : 1}});
  if (v == Variant::Hash) j.merge_patch({{"router_type", "hash"}, {"aux_loss_alpha", 0.0}});
  return j;
}

// The one-process trajectory, with its per-step results and the per-element budget.
struct Reference {
  std::vector<StepResult> steps;
  std::vector<double> loss_drift;        // per step
  std::vector<double> grad_norm_tol;     // per step: || the gradient's per-element budget ||
  std::vector<float> params;             // after the last step
  std::vector<double> tol;               // per parameter
  std::vector<HfTensor> hf;
};

Reference reference_run(const Config& cfg, const std::string& data_dir) {
  const TokenSplit train = load_split(data_dir, "train", cfg.model.vocab_size);
  const TrainConfig& tc = cfg.train;
  Model model(cfg.model);
  Rng init(tc.seed);
  model.init_weights(init, tc.init_std > 0 ? tc.init_std : cfg.model.initializer_range);
  AdamW opt(model.layout(), tc);
  BatchSampler sampler(train, tc.batch_size, tc.seq_len, data_sampler_seed(tc));
  test::AdamTrajectoryBudget budget(model, tc);
  Reference ref;
  for (int64_t s = 1; s <= tc.steps; ++s) {
    StepResult r = train_step(model, opt, tc, s, [&](int64_t, std::vector<int32_t>& x, std::vector<int32_t>& y) {
      sampler.next(x, y);
    });
    const double clip = test::clip_factor(tc, r.grad_norm);
    ref.loss_drift.push_back(budget.loss_drift(model.grads(), clip));
    // | ||g + dg|| - ||g|| | <= ||dg||, |dg_i| <= 2 kRel (max |g_t| + |g_i|) (unclipped, as the norm is).
    double norm_tol_sq = 0;
    for (const auto& t : model.layout().hf_tensors()) {
      double gmax = 0;
      for (int64_t i = t.offset; i < t.offset + t.numel; ++i) gmax = std::max(gmax, std::fabs(model.grads()[i] / clip));
      for (int64_t i = t.offset; i < t.offset + t.numel; ++i) {
        const double e = 2 * kRel * (gmax + std::fabs(model.grads()[i] / clip));
        norm_tol_sq += e * e;
      }
    }
    ref.grad_norm_tol.push_back(std::sqrt(norm_tol_sq));
    budget.add_step(model, opt, s, r.lr, clip, 4 * kRel);
    ref.steps.push_back(r);
  }
  ref.params = model.params();
  ref.tol = budget.tol();
  ref.hf = model.layout().hf_tensors();
  return ref;
}

struct Layout {
  int processes, expert_parallel;
  bool seq_aux;
  Variant variant = Variant::Plain;
};

std::string layout_name(const Layout& l) {
  return "P" + std::to_string(l.processes) + "_EP" + std::to_string(l.expert_parallel) +
         (l.seq_aux ? "_seqaux" : "_batchaux") + variant_name(l.variant);
}

class ParallelTraining : public ::testing::TestWithParam<Layout> {};

// Shared by the layouts of one seq_aux setting: the data, the config and the reference run.
struct Fixture {
  std::string data, config_path;
  Config cfg;
  Reference ref;
};

const Fixture& fixture(bool seq_aux, Variant v = Variant::Plain) {
  static std::map<std::pair<bool, Variant>, Fixture> cache;
  auto it = cache.find({seq_aux, v});
  if (it != cache.end()) return it->second;
  Fixture f;
  // One folder per process: CTest runs each test of this file as its own process, side by side.
  const std::string dir = test::tmp_path(std::string("parallel_training_") + (seq_aux ? "seq" : "batch") +
                                         variant_name(v) + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  f.config_path = write_config(dir, "config.json", parallel_config(seq_aux, v));
  f.cfg = load_config(f.config_path);
  // Top-k routing is discontinuous: a decision whose k-th and (k+1)-th probabilities lie within the
  // runs' rounding difference may go either way, and then the trajectories part by far more than any
  // reduction-order budget. With random data that happens about once in ~250 layout runs (seen at
  // DSMOE_TEST_SEED=411202083, P4_EP4_batchaux_switch: one top-1 decision of step 6 flipped, the
  // gradient norm moved by 1e-3 relative). A margin guard as test_model's does not help here: that
  // decision's margin was 2e-5, while the runs' routing probabilities part by up to ~1e-5 by step
  // 10, and the smallest of a trajectory's ~2500 margins is 1e-5..8e-5 on most draws. So the data
  // comes from a fixed seed (every layout passes on it; the MPI runs are deterministic, so the test
  // is too), DSMOE_PARALLEL_DATA_SEED to try others.
  const char* seed = std::getenv("DSMOE_PARALLEL_DATA_SEED");
  f.data = test::make_word_dataset((fs::path(dir) / "data").string(), 12000, 2000,
                                   seed ? std::strtoull(seed, nullptr, 10) : 1);
  f.ref = reference_run(f.cfg, f.data);
  return cache.emplace(std::make_pair(seq_aux, v), std::move(f)).first->second;
}

void expect_run_matches(const Fixture& f, const std::string& run, const std::string& what) {
  const auto rows = read_metrics(run);
  const auto& ref = f.ref;
  ASSERT_EQ(rows.size(), ref.steps.size()) << what << ": metrics.jsonl rows";
  double worst_lm = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const StepResult& r = ref.steps[i];
    worst_lm = std::max(worst_lm, std::fabs(rows[i]["lm_loss"].get<double>() - r.lm_loss) / std::fabs(r.lm_loss));
    const double drift = ref.loss_drift[i];
    const std::string at = what + " step " + std::to_string(i + 1) + " (drift bound " + std::to_string(drift) + ")";
    EXPECT_EQ(rows[i]["step"].get<int64_t>(), (int64_t)i + 1) << at;
    EXPECT_NEAR(rows[i]["lm_loss"].get<double>(), r.lm_loss, 2e-5 * std::fabs(r.lm_loss) + drift) << at;
    EXPECT_NEAR(rows[i]["expert_aux"].get<double>(), r.expert_aux, 2e-5 * std::fabs(r.expert_aux) + drift) << at;
    EXPECT_NEAR(rows[i]["device_aux"].get<double>(), r.device_aux, 2e-5 * std::fabs(r.device_aux) + drift) << at;
    EXPECT_NEAR(rows[i]["comm_aux"].get<double>(), r.comm_aux, 2e-5 * std::fabs(r.comm_aux) + drift) << at;
    if (f.cfg.model.capacity_factor > 0)  // the same slots dropped: the rule is over the whole micro-batch
      EXPECT_EQ(rows[i]["dropped"].get<int64_t>(), r.dropped) << at;
    EXPECT_NEAR(rows[i]["grad_norm"].get<double>(), r.grad_norm, ref.grad_norm_tol[i]) << at;
    EXPECT_DOUBLE_EQ(rows[i]["lr"].get<double>(), r.lr) << at;
  }
  SafeTensorsFile ck((fs::path(run) / "checkpoint.safetensors").string());
  double worst = 0;
  for (const auto& t : ref.hf) {
    const std::vector<float> got = ck.read_f32(t.name, t.shape);
    for (int64_t i = 0; i < t.numel; ++i)
      worst = std::max(worst, std::fabs((double)got[i] - ref.params[t.offset + i]) / ref.tol[t.offset + i]);
    EXPECT_TRUE(test::all_close_each(what + " parameter after 10 steps " + t.name, got.data(),
                                     ref.params.data() + t.offset, ref.tol.data() + t.offset, t.numel, t.shape));
  }
  std::printf("[ stats    ] %s: the worst parameter uses %.2g of its budget; LM loss differs by %.2g relative at "
              "most\n", what.c_str(), worst, worst_lm);
}

TEST_P(ParallelTraining, MatchesOneProcess) {
  const Layout l = GetParam();
  const Fixture& f = fixture(l.seq_aux, l.variant);
  if (l.variant == Variant::Capacity) {  // the capacity must bind, or this layout tests nothing new
    int64_t dropped = 0;
    for (const auto& r : f.ref.steps) dropped += r.dropped;
    ASSERT_GT(dropped, 0) << "no slot dropped in the reference run";
    std::printf("[ stats    ] reference: %lld slots dropped over %zu steps\n", (long long)dropped, f.ref.steps.size());
  }
  const std::string run = scratch(layout_name(l));
  std::vector<std::string> args = train_args(f.config_path, f.data, run);
  if (l.expert_parallel > 1) args.insert(args.end(), {"--ep", std::to_string(l.expert_parallel)});
  const Proc p = run_mpi(l.processes, args, 180);
  ASSERT_TRUE(p.ok()) << p.describe();
  expect_run_matches(f, run, layout_name(l));
  // The all-to-all traffic per step. Every routed (token, expert) slot of the step that survives the
  // capacity is one row of a forward dispatch (from its token's rank to its expert's, possibly the
  // same): the rows the ranks sent sum to tokens x k x MoE layers x micro-batches - dropped, and each
  // count of a sender equals its receiver's (two ranks' own counts of one exchange). The bytes are
  // derived from those rows (train/trainer.cpp add_rank_metrics): a slot whose expert is on another
  // rank moves its row there and the expert's output back (forward), then the output's gradient
  // there and the input's gradient back (backward), 4 rows of hidden_size floats, so over all ranks
  // bytes = 16 * H * slots leaving (the formula 2 k H bytes x the fraction of tokens leaving,
  // forward and again backward).
  if (l.expert_parallel == 1) return;
  const int64_t H = f.cfg.model.hidden_size;
  int64_t moe_layers = 0;
  for (int64_t i = 0; i < f.cfg.model.num_hidden_layers; ++i) moe_layers += f.cfg.model.is_moe_layer(i);
  const TrainConfig& tc = f.cfg.train;
  const int64_t slots = tc.batch_size * tc.seq_len * tc.grad_accum * f.cfg.model.num_experts_per_tok * moe_layers;
  const auto rows = read_metrics(run);
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& row = rows[i];
    const std::string at = layout_name(l) + " step " + std::to_string(row["step"].get<int64_t>());
    ASSERT_TRUE(row.contains("a2a_bytes_sent") && row.contains("a2a_slots_leaving") && row.contains("rows_sent"))
        << at << ": " << row.dump();
    const auto sent = row["rows_sent"].get<std::vector<std::vector<int64_t>>>();
    const auto recv = row["rows_received"].get<std::vector<std::vector<int64_t>>>();
    ASSERT_EQ(sent.size(), (size_t)l.processes) << at;
    ASSERT_EQ(row["a2a_bytes_sent"].size(), (size_t)l.processes) << at;
    int64_t routed = 0, bytes = 0, leaving = 0, leaving_rows = 0;
    for (size_t q = 0; q < (size_t)l.processes; ++q) {
      for (size_t t = 0; t < (size_t)l.processes; ++t) {
        EXPECT_EQ(sent[q][t], recv[t][q]) << at << ": rank " << q << " -> " << t;
        routed += sent[q][t];
        if (t != q) leaving_rows += sent[q][t];
      }
      bytes += row["a2a_bytes_sent"][q].get<int64_t>();
      EXPECT_EQ(row["a2a_bytes_received"][q].get<int64_t>(), row["a2a_bytes_sent"][q].get<int64_t>()) << at;
      leaving += row["a2a_slots_leaving"][q].get<int64_t>();
    }
    EXPECT_EQ(routed, slots - f.ref.steps[i].dropped) << at << ": rows dispatched";
    EXPECT_GT(leaving, 0) << at;
    EXPECT_EQ(leaving, leaving_rows) << at;
    EXPECT_EQ(bytes, 16 * H * leaving) << at;
  }
}

// Every config at the three layouts of two and four processes: expert-parallel 2, expert-parallel 4,
// and expert-parallel 2 x data-parallel 2 (and the DeepSeekMoE one data-parallel only at P = 2).
INSTANTIATE_TEST_SUITE_P(Layouts, ParallelTraining,
                         ::testing::Values(Layout{2, 1, true}, Layout{2, 1, false}, Layout{2, 2, true},
                                           Layout{2, 2, false}, Layout{4, 2, true}, Layout{4, 2, false},
                                           Layout{4, 4, true},
                                           Layout{2, 2, true, Variant::NormTopk},
                                           Layout{4, 4, false, Variant::NormTopk},
                                           Layout{4, 2, true, Variant::NormTopk},
                                           Layout{2, 2, true, Variant::V2}, Layout{4, 4, false, Variant::V2},
                                           Layout{2, 2, true, Variant::Capacity},
                                           Layout{4, 2, false, Variant::Capacity},
                                           Layout{4, 4, true, Variant::Capacity},
                                           Layout{2, 2, true, Variant::GShard}, Layout{4, 4, false, Variant::GShard},
                                           Layout{4, 2, true, Variant::GShard},
                                           Layout{2, 2, true, Variant::Switch}, Layout{4, 4, false, Variant::Switch},
                                           Layout{4, 2, true, Variant::Switch},
                                           Layout{2, 2, true, Variant::Hash}, Layout{4, 4, true, Variant::Hash},
                                           Layout{4, 2, true, Variant::Hash}),
                         [](const auto& info) { return layout_name(info.param); });

// One logical checkpoint: a run saved by 4 processes (expert-parallel 2 x data-parallel 2) resumes on 2
// (expert-parallel 2), then on one process, and stays on the one-process trajectory.
TEST(ParallelTrainingResume, SavedWithOneLayoutResumesWithAnother) {
  const Fixture& f = fixture(false);
  const std::string run = scratch("resume_across_layouts");
  auto args = [&](std::vector<std::string> extra) {
    auto a = train_args(f.config_path, f.data, run);
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  Proc p = run_mpi(4, args({"--ep", "2", "--stop-after", "4"}), 180);
  ASSERT_TRUE(p.ok()) << p.describe();
  p = run_mpi(2, args({"--ep", "2", "--stop-after", "7", "--resume"}), 180);
  ASSERT_TRUE(p.ok()) << p.describe();
  p = run_cli(args({"--resume"}), 180);
  ASSERT_TRUE(p.ok()) << p.describe();
  expect_run_matches(f, run, "P4_EP2 -> P2_EP2 -> P1");
}

// The gradient all-reduce overlapped with backward (the default) sums the same buckets with the
// same collectives as after backward, so it gives the same bits, here at 4 processes (expert-parallel
// 2 x data-parallel 2: replicated buckets over 4 ranks, expert buckets over 2), where a different
// grouping of the sum would change the last bits.
TEST(ParallelTrainingOverlap, SameBitsAsAllReduceAfterBackward) {
  const Fixture& f = fixture(false);
  const std::string after = scratch("after_backward"), overlapped = scratch("overlapped");
  auto args = [&](const std::string& run, bool overlap) {
    auto a = train_args(f.config_path, f.data, run);
    a.insert(a.end(), {"--ep", "2"});
    a.push_back(overlap ? "--overlap-grad-sync" : "--no-overlap-grad-sync");
    return a;
  };
  Proc p = run_mpi(4, args(after, false), 180);
  ASSERT_TRUE(p.ok()) << p.describe();
  p = run_mpi(4, args(overlapped, true), 180);
  ASSERT_TRUE(p.ok()) << p.describe();
  expect_run_matches(f, overlapped, "P4_EP2 overlapped");
  const auto a = read_metrics(after), b = read_metrics(overlapped);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    for (const char* key : {"lm_loss", "expert_aux", "device_aux", "grad_norm"})
      EXPECT_EQ(a[i][key].get<double>(), b[i][key].get<double>()) << key << " at step " << i + 1;
  SafeTensorsFile ca((fs::path(after) / "checkpoint.safetensors").string());
  SafeTensorsFile cb((fs::path(overlapped) / "checkpoint.safetensors").string());
  for (const auto& t : f.ref.hf) {
    const std::vector<float> x = ca.read_f32(t.name, t.shape), y = cb.read_f32(t.name, t.shape);
    EXPECT_TRUE(test::all_close(t.name, y.data(), x.data(), t.numel, t.shape, 0, 0));
  }
}

// Without mpirun the binary is one process, and `dsmoe train` is exactly the reference's steps.
TEST(ParallelTrainingReference, OneProcessCliIsTheReference) {
  const Fixture& f = fixture(true);
  const std::string run = scratch("one_process");
  const Proc p = run_cli(train_args(f.config_path, f.data, run), 180);
  ASSERT_TRUE(p.ok()) << p.describe();
  const auto rows = read_metrics(run);
  ASSERT_EQ(rows.size(), f.ref.steps.size());
  for (size_t i = 0; i < rows.size(); ++i)
    EXPECT_EQ(rows[i]["lm_loss"].get<double>(), f.ref.steps[i].lm_loss) << "step " << i + 1;
  SafeTensorsFile ck((fs::path(run) / "checkpoint.safetensors").string());
  for (const auto& t : f.ref.hf) {
    const std::vector<float> got = ck.read_f32(t.name, t.shape);
    EXPECT_TRUE(test::all_close(t.name, got.data(), f.ref.params.data() + t.offset, t.numel, t.shape, 0, 0));
  }
}

// Bad layouts are refused before anything runs, naming the numbers.
TEST(ParallelTrainingErrors, RefusesLayoutsThatDoNotSplit) {
  const Fixture& f = fixture(true);
  {  // E must divide the routed experts (8)
    const Proc p = run_cli([&] {
      auto a = train_args(f.config_path, f.data, scratch("ep3"));
      a.insert(a.end(), {"--ep", "3"});
      return a;
    }());
    EXPECT_EQ(p.exit_code, 2) << p.describe();
    EXPECT_TRUE(contains(p.err, "--ep (3) must divide n_routed_experts (8)")) << p.err;
  }
  {  // E must divide the processes
    auto a = train_args(f.config_path, f.data, scratch("ep4_of_2"));
    a.insert(a.end(), {"--ep", "4"});
    const Proc p = run_mpi(2, a);
    EXPECT_FALSE(p.ok()) << p.describe();
    EXPECT_TRUE(contains(p.err, "is 4, which does not divide the 2 processes")) << p.err;
  }
  {  // the batch must split into equal slices (4 sequences over 3 ranks)
    const Proc p = run_mpi(3, train_args(f.config_path, f.data, scratch("batch_of_3")));
    EXPECT_FALSE(p.ok()) << p.describe();
    EXPECT_TRUE(contains(p.err, "training.batch_size (4) must be a multiple of the number of processes (3)")) << p.err;
  }
}

}  // namespace
}  // namespace dsmoe
