// The training-step cost model (experiment/scaling_model.h): its routing statistics against exhaustive
// enumeration and against sampled routing, a small layout worked out by hand, and its refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "core/error.h"
#include "experiment/scaling_model.h"
#include "model/params.h"
#include "cli_runner.h"
#include "test_util.h"

using namespace dsmoe;

namespace {

// Every k-subset of {0..n-1}, as bitmasks (n <= 20).
std::vector<uint32_t> subsets(int n, int k) {
  std::vector<uint32_t> out;
  for (uint32_t s = 0; s < (1u << n); ++s)
    if (__builtin_popcount(s) == k) out.push_back(s);
  return out;
}

int devices_hit(uint32_t experts, int per_device) {
  std::set<int> d;
  for (int e = 0; e < 32; ++e)
    if (experts >> e & 1) d.insert(e / per_device);
  return (int)d.size();
}

ModelConfig small_moe() {
  ModelConfig m;
  m.vocab_size = 100;
  m.hidden_size = 64;
  m.intermediate_size = 128;
  m.moe_intermediate_size = 32;
  m.num_hidden_layers = 2;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 4;
  m.n_routed_experts = 8;
  m.num_experts_per_tok = 2;
  m.n_shared_experts = 0;
  m.first_k_dense_replace = 0;
  m.moe_layer_freq = 1;
  m.max_position_embeddings = 128;
  return m;
}

ScalingHardware one_node(int64_t ranks) {
  ScalingHardware hw;
  hw.rank_flops = 1e9;
  hw.ranks_per_node = ranks;
  hw.intra_bandwidth = 1e9;
  hw.intra_latency = 1e-6;
  hw.net_bandwidth = 1e8;
  hw.net_latency = 1e-5;
  return hw;
}

}  // namespace

// The closed form against every routing choice counted one by one: without a limit all C(n, k)
// expert sets are equally likely; with a limit of M devices, every M-set of devices is, and then
// every k-set of their experts.
TEST(ScalingModel, ExpectedDevicesEqualsEnumeration) {
  for (int n : {8, 12}) {
    for (int E : {2, 4}) {
      const int per = n / E;
      for (int k = 1; k <= 4; ++k) {
        double sum = 0;
        const auto sets = subsets(n, k);
        for (uint32_t s : sets) sum += devices_hit(s, per);
        EXPECT_NEAR(expected_devices_per_token(n, E, k, 0), sum / (double)sets.size(), 1e-12)
            << "n " << n << " E " << E << " k " << k;
        for (int M = 1; M <= E; ++M) {
          if (M * per < k) continue;
          double total = 0;
          int64_t count = 0;
          for (uint32_t dev : subsets(E, M)) {
            uint32_t allowed = 0;
            for (int d = 0; d < E; ++d)
              if (dev >> d & 1) allowed |= ((1u << per) - 1) << (d * per);
            for (uint32_t s : sets)
              if ((s & ~allowed) == 0) total += devices_hit(s, per), ++count;
          }
          // Within one device set every expert set is equally likely, and every device set has the
          // same number of expert sets, so the plain mean over (device set, expert set) pairs is it.
          EXPECT_NEAR(expected_devices_per_token(n, E, k, M), total / (double)count, 1e-12)
              << "n " << n << " E " << E << " k " << k << " M " << M;
        }
      }
    }
  }
}

// Rows leaving a rank, against routing sampled as the model assumes (uniform top-k, tokens split over
// the E ranks in contiguous slices, experts in contiguous groups): once per expert and once per device.
TEST(ScalingModel, RemoteRowsMatchSampledRouting) {
  ModelConfig m = small_moe();
  m.n_routed_experts = 16;
  m.num_experts_per_tok = 4;
  std::mt19937_64 rng(7);
  for (int64_t E : {2, 4, 8}) {
    const int64_t per = 16 / E, tokens = 40000;
    double per_expert = 0, per_device = 0;
    std::vector<int> experts(16);
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t home = t * E / tokens;
      for (int e = 0; e < 16; ++e) experts[(size_t)e] = e;
      std::shuffle(experts.begin(), experts.end(), rng);
      std::set<int64_t> remote_devices;
      for (int j = 0; j < 4; ++j) {
        const int64_t dev = experts[(size_t)j] / per;
        if (dev != home) per_expert += 1, remote_devices.insert(dev);
      }
      per_device += (double)remote_devices.size();
    }
    ScalingLayout l;
    l.expert_parallel = E;
    // The sample means have a standard deviation below sqrt(k^2 / 4 / tokens) = 0.01: 5 sigma.
    EXPECT_NEAR(remote_rows_per_token(m, l), per_expert / (double)tokens, 0.05) << "E " << E;
    l.dedup_rows = true;
    EXPECT_NEAR(remote_rows_per_token(m, l), per_device / (double)tokens, 0.05) << "E " << E;
  }
}

// Two ranks on one node, every layer MoE, worked out by hand (the numbers in the comments):
// params: embedding 100 x 64 = 6400, lm_head 6400, final norm 64; per layer q/k/v/o 4 x 64 x 64 =
// 16384, norms 128, router 8 x 64 = 512, experts 8 x 3 x 64 x 32 = 49152: total 145216, routed 98304.
TEST(ScalingModel, SmallLayoutByHand) {
  const ModelConfig m = small_moe();
  ASSERT_EQ(model_stats(m, 128).total_params, 145216);
  ScalingLayout l;
  l.expert_parallel = 2;
  l.tokens_per_rank = 1000;
  l.seq_len = 128;
  const ScalingEstimate s = estimate_training_step(m, one_node(2), l);
  EXPECT_EQ(s.ranks, 2);
  EXPECT_EQ(s.data_parallel, 1);
  // Activated: 145216 - 2 layers x 6 unchosen experts x 6144 = 71488, less the embedding 65088;
  // 6 x 65088 + 12 x 2 x 64 x 128 = 587136 FLOPs a token, 1000 tokens at 1 GFLOP/s.
  EXPECT_NEAR(s.compute_s, 0.587136, 1e-12);
  EXPECT_NEAR(s.ideal_compute_s, 0.587136, 1e-12);
  // k (E-1)/E = 1 row a token; 1000 x 64 x 4 = 256000 bytes an exchange, 4 exchanges x 2 layers.
  EXPECT_NEAR(s.rows_per_token, 1.0, 1e-15);
  EXPECT_NEAR(s.all_to_all_bytes, 2048000, 1e-6);
  EXPECT_EQ(s.inter_node_fraction, 0);
  // An exchange: 1 us + 256000 / 1e9 s = 257 us; a layer: the counts (1 us) + 4 exchanges = 1029 us.
  EXPECT_NEAR(s.all_to_all_s, 2 * 1029e-6, 1e-12);
  // Replicated (145216 - 98304) x 4 = 187648 bytes over 2 ranks: 2 (1/2) 187648 / 1e9 + 2 x 1 us;
  // no expert replicas (D = 1).
  EXPECT_NEAR(s.all_reduce_bytes, 187648 + 98304 * 4 / 2, 1e-6);
  EXPECT_NEAR(s.all_reduce_s, 187.648e-6 + 2e-6, 1e-12);
  EXPECT_NEAR(s.step_s, 0.587136 + 2058e-6 + 189.648e-6, 1e-12);
  // The all-reduce fits behind the backward: only compute and all-to-all remain.
  EXPECT_NEAR(s.step_overlapped_s, 0.587136 + 2058e-6, 1e-12);
  EXPECT_NEAR(s.tokens_per_s, 2000 / s.step_s, 1e-9);
}

// Across nodes, 2 nodes of 2 ranks. E = 4: of a rank's 3 peers 2 are off the node, and the node's
// link is shared by its 2 ranks. E = 2: each node is an expert group, so the expert gradients are
// all-reduced across the nodes (D = 2).
TEST(ScalingModel, InterNodeTraffic) {
  const ModelConfig m = small_moe();
  ScalingLayout l;
  l.nodes = 2;
  l.expert_parallel = 4;
  l.tokens_per_rank = 1000;
  l.seq_len = 128;
  const ScalingHardware hw = one_node(2);
  ScalingEstimate s = estimate_training_step(m, hw, l);
  EXPECT_NEAR(s.inter_node_fraction, 2.0 / 3.0, 1e-15);
  // k (E-1)/E = 1.5 rows: 1000 x 1.5 x 256 = 384000 bytes; 1/3 at 1e9 B/s, 2/3 at 1e8 / 2 B/s;
  // latency 1 x 1 us + 2 x 10 us = 21 us.
  const double exchange = 21e-6 + 128000 / 1e9 + 256000 / 5e7;
  EXPECT_NEAR(s.all_to_all_s, 2 * (21e-6 + 4 * exchange), 1e-12);
  // E = 2 on 2 nodes of 2: each node is an expert group, the replicas of a shard are on the two
  // nodes, the two shards of a node share its link: 2 (1/2) 49152 x 4 x 2 / 1e8 + 2 x 10 us, after
  // the replicated gradients' hierarchical all-reduce (node: 2 (1/2) 187648 / 1e9 + 2 us, then
  // across the 2 nodes 2 (1/2) 187648 / 1e8 + 20 us).
  l.expert_parallel = 2;
  s = estimate_training_step(m, hw, l);
  EXPECT_EQ(s.data_parallel, 2);
  EXPECT_NEAR(s.all_reduce_s, (187648 / 1e9 + 2e-6) + (187648 / 1e8 + 20e-6) + (49152.0 * 4 * 2 / 1e8 + 20e-6), 1e-12);
}

TEST(ScalingModel, OneRankHasNoCommunication) {
  const ModelConfig m = small_moe();
  ScalingLayout l;
  l.tokens_per_rank = 4096;
  l.seq_len = 128;
  const ScalingEstimate s = estimate_training_step(m, one_node(1), l);
  EXPECT_EQ(s.all_to_all_s, 0);
  EXPECT_EQ(s.all_reduce_s, 0);
  EXPECT_EQ(s.efficiency, 1);
}

TEST(ScalingModel, ImbalanceSlowsOnlyTheRoutedExperts) {
  const ModelConfig m = small_moe();
  ScalingLayout l;
  l.expert_parallel = 2;
  l.tokens_per_rank = 1000;
  l.seq_len = 128;
  l.load_imbalance = 1.5;
  const ScalingEstimate s = estimate_training_step(m, one_node(2), l);
  // Routed FLOPs a token: 6 x 2 layers x 2 experts x 6144 = 147456; half again on the busiest rank.
  EXPECT_NEAR(s.compute_s, 0.587136 + 0.5 * 147456 * 1000 / 1e9, 1e-12);
  EXPECT_NEAR(s.ideal_compute_s, 0.587136, 1e-12);
}

TEST(ScalingModel, ExpertParallelChoicesFitRanksAndExperts) {
  ModelConfig m = small_moe();
  using V = std::vector<int64_t>;
  EXPECT_EQ(expert_parallel_choices(m, 1, 1), V({1}));
  EXPECT_EQ(expert_parallel_choices(m, 4, 2), V({1, 2, 4}));
  EXPECT_EQ(expert_parallel_choices(m, 16, 8), V({1, 2, 4, 8}));  // at most the 8 experts
  EXPECT_EQ(expert_parallel_choices(m, 6, 1), V({1, 2}));         // 3 and 6 do not divide 8
  m.n_routed_experts = 63;                                        // the paper's 2B: 1 shared + 63 routed
  EXPECT_EQ(expert_parallel_choices(m, 8, 8), V({1}));
  EXPECT_EQ(expert_parallel_choices(m, 9, 1), V({1, 3, 9}));
}

// auto picks the shortest step, and the state limit can force a slower, smaller-state choice.
TEST(ScalingModel, FastestExpertParallelHonoursMemory) {
  const ModelConfig m = small_moe();
  ScalingLayout l;
  l.tokens_per_rank = 1000;
  l.seq_len = 128;
  const ScalingHardware hw = one_node(4);
  double best = 1e30;
  int64_t best_e = 0;
  for (int64_t e : {1, 2, 4}) {
    ScalingLayout c = l;
    c.expert_parallel = e;
    const double t = estimate_training_step(m, hw, c).step_s;
    if (t < best) best = t, best_e = e;
  }
  ScalingLayout a = l;
  EXPECT_NEAR(fastest_expert_parallel(m, hw, a).step_s, best, 0);
  EXPECT_EQ(a.expert_parallel, best_e);
  // 16 bytes x (46912 + 98304 / E) parameters: E = 1 needs 2.32 MB, E = 4 1.14 MB.
  ScalingLayout b = l;
  fastest_expert_parallel(m, hw, b, 1.2e6);
  EXPECT_EQ(b.expert_parallel, 4);
  ScalingLayout c = l;
  EXPECT_THROW(fastest_expert_parallel(m, hw, c, 1e5), Error);
}

TEST(ScalingModel, RefusesImpossibleLayouts) {
  const ModelConfig m = small_moe();
  ScalingLayout l;
  l.tokens_per_rank = 1000;
  l.seq_len = 128;
  auto refused = [&](ScalingLayout bad, ScalingHardware hw, const std::string& needle) {
    try {
      estimate_training_step(m, hw, bad);
      ADD_FAILURE() << "accepted; expected an error naming '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  ScalingLayout b = l;
  b.expert_parallel = 3;
  refused(b, one_node(3), "does not divide the 8 routed experts");
  b = l, b.expert_parallel = 4;
  refused(b, one_node(2), "must divide the 2 ranks");
  b = l, b.expert_parallel = 2, b.device_limit = 3;
  refused(b, one_node(2), "device limit 3");
  ScalingHardware hw = one_node(2);
  hw.net_bandwidth = std::nan("");
  refused(l, hw, "net_bandwidth");
  b = l, b.load_imbalance = 0.5;
  refused(b, one_node(1), "load_imbalance");
  b = l, b.micro_batches = 2000;
  refused(b, one_node(1), "micro_batches");
}

// The command: one JSON row per node count (and per device limit), consistent with the library, and
// usage errors for layouts that cannot exist.
TEST(ScalingModel, CommandProjectsEveryNodeCount) {
  const std::string config = test::source_dir() + "/configs/deepseek-moe-16b.json";
  const std::vector<std::string> base = {"scaling", "--config", config, "--rank-gflops", "100", "--ranks-per-node",
                                         "8", "--nodes", "1,2,4,8", "--device-limit", "3", "--dedup", "--json"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  auto p = test::cli::run_cli(with({"--ep", "8"}));
  ASSERT_TRUE(p.ok()) << p.describe();
  const auto rows = nlohmann::json::parse(p.out);
  // 4 node counts without the limit, then 4 with it (8 experts a device: 3 devices hold 24 >= 6).
  ASSERT_EQ(rows.size(), 8u) << rows.dump(1);
  for (const auto& r : rows) {
    EXPECT_EQ(r["ranks"].get<int64_t>(), 8 * r["nodes"].get<int64_t>());
    EXPECT_EQ(r["expert_parallel"].get<int64_t>(), 8);
    EXPECT_NEAR(r["step_s"].get<double>(),
                r["compute_s"].get<double>() + r["all_to_all_s"].get<double>() + r["all_reduce_s"].get<double>(),
                1e-9 * r["step_s"].get<double>());
  }
  // The limit (with dedup) moves fewer rows than no limit at the same node count.
  EXPECT_LT(rows[4]["rows_per_token"].get<double>(), rows[0]["rows_per_token"].get<double>());
  // auto: per node count never slower than the fixed EP 8 (one of its choices).
  auto q = test::cli::run_cli(with({"--ep", "auto"}));
  ASSERT_TRUE(q.ok()) << q.describe();
  const auto best = nlohmann::json::parse(q.out);
  ASSERT_EQ(best.size(), 8u) << best.dump(1);
  for (size_t i = 0; i < 8; ++i) EXPECT_LE(best[i]["step_s"].get<double>(), rows[i]["step_s"].get<double>()) << i;
  auto bad = test::cli::run_cli({"scaling", "--config", config, "--rank-gflops", "100", "--ep", "3"});
  EXPECT_EQ(bad.exit_code, 2) << bad.describe();
  EXPECT_NE(bad.err.find("expert-parallel size 3"), std::string::npos) << bad.err;
}
