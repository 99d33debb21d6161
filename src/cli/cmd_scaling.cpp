// dsmoe scaling: the cost model of an expert x data parallel training step (experiment/scaling_model.h)
// projected over node counts, for a config and a stated machine and network.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/options.h"
#include "core/error.h"
#include "experiment/scaling_model.h"
#include "model/config.h"

namespace dsmoe::cli {

namespace {

std::vector<int64_t> parse_node_list(const std::string& text) {
  std::vector<int64_t> nodes;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || item.empty() || v < 1 || v > (1 << 20))
      usage_error("--nodes: '{}' is not a node count in [1, {}] (a comma-separated list, e.g. 1,2,4,8)", item, 1 << 20);
    nodes.push_back(v);
  }
  if (nodes.empty()) usage_error("--nodes: give at least one node count");
  return nodes;
}

}  // namespace

void add_scaling_commands(CLI::App& app) {
  auto* c = app.add_subcommand(
      "scaling", "project an expert x data parallel training step over node counts (compute, all-to-all, all-reduce)");
  struct Args {
    std::string config, nodes = "1,2,4,8,16,32,64", ep = "auto";
    int64_t ranks_per_node = 1, global_tokens = 0, micro_batch_tokens = 0, seq_len = 0, device_limit = 0, comm_bytes = 4;
    double rank_gflops = 0, rank_memory_gb = 0, intra_gbs = 10, intra_latency_us = 1, net_gbit = 100, net_latency_us = 5, imbalance = 1;
    bool dedup = false, json = false;
  };
  auto a = std::make_shared<Args>();
  c->add_option("--config", a->config, "model config JSON (dsmoe's or an HF config.json)")->required();
  c->add_option("--rank-gflops", a->rank_gflops,
                "sustained training GFLOP/s of one rank (a P = 1 run's tokens/s x `dsmoe info`'s train FLOPs per token)")
      ->required()
      ->check(real_in(0, 1e9, true));
  c->add_option("--nodes", a->nodes, "node counts to project, comma-separated")->capture_default_str();
  c->add_option("--ranks-per-node", a->ranks_per_node, "ranks (processes) per node")
      ->check(int_in(1, 4096))
      ->capture_default_str();
  c->add_option("--ep", a->ep, "expert-parallel size: a number, or auto (per node count, the size with the shortest step)")
      ->capture_default_str();
  c->add_option("--global-tokens", a->global_tokens,
                "tokens per optimizer step over all ranks (default: the config's batch_size x seq_len x grad_accum)")
      ->check(int_in(1, int64_t(1) << 40));
  c->add_option("--micro-batch-tokens", a->micro_batch_tokens,
                "tokens one rank runs per forward/backward (default: the config's batch_size x seq_len)")
      ->check(int_in(1, int64_t(1) << 40));
  c->add_option("--seq-len", a->seq_len, "sequence length for the attention FLOPs (default: the config's)")
      ->check(int_in(1, limits::kMaxPositions));
  c->add_option("--device-limit", a->device_limit,
                "also project device-limited routing: a token's experts on at most M devices (0 = off)")
      ->check(int_in(0, limits::kMaxExperts))
      ->capture_default_str();
  c->add_option("--rank-memory-gb", a->rank_memory_gb,
                "with --ep auto: only sizes whose training state (16 bytes a parameter held) fits (0 = no limit)")
      ->check(real_in(0, 1e9))
      ->capture_default_str();
  c->add_flag("--dedup", a->dedup,
              "send a token once per device it needs (as DeepEP) instead of once per routed expert (dsmoe today)");
  c->add_option("--comm-bytes", a->comm_bytes, "bytes per activation element on the wire (4 fp32, 2 bf16)")
      ->check(int_in(1, 8))
      ->capture_default_str();
  c->add_option("--imbalance", a->imbalance, "busiest rank's routed-expert work over the mean")
      ->check(real_in(1, limits::kMaxExperts))
      ->capture_default_str();
  c->add_option("--intra-gbs", a->intra_gbs, "bandwidth between two ranks of a node, GB/s")
      ->check(real_in(0, 1e6, true))
      ->capture_default_str();
  c->add_option("--intra-latency-us", a->intra_latency_us, "message latency inside a node, microseconds")
      ->check(real_in(0, 1e6))
      ->capture_default_str();
  c->add_option("--net-gbit", a->net_gbit, "a node's network link, Gbit/s each direction")
      ->check(real_in(0, 1e6, true))
      ->capture_default_str();
  c->add_option("--net-latency-us", a->net_latency_us, "message latency between nodes, microseconds")
      ->check(real_in(0, 1e6))
      ->capture_default_str();
  c->add_flag("--json", a->json, "print JSON");
  c->callback([a] {
    const Config config = load_config(a->config);
    const ModelConfig& m = config.model;
    const std::vector<int64_t> nodes = parse_node_list(a->nodes);
    int64_t fixed_ep = 0;
    if (a->ep != "auto") {
      size_t used = 0;
      try {
        fixed_ep = std::stoll(a->ep, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != a->ep.size() || fixed_ep < 1 || fixed_ep > limits::kMaxExperts)
        usage_error("--ep: '{}' is neither auto nor an expert-parallel size in [1, {}]", a->ep, limits::kMaxExperts);
    }
    ScalingHardware hw;
    hw.rank_flops = a->rank_gflops * 1e9;
    hw.ranks_per_node = a->ranks_per_node;
    hw.intra_bandwidth = a->intra_gbs * 1e9;
    hw.intra_latency = a->intra_latency_us * 1e-6;
    hw.net_bandwidth = a->net_gbit * 1e9 / 8;
    hw.net_latency = a->net_latency_us * 1e-6;
    ScalingLayout base;
    const TrainConfig& t = config.train;
    base.seq_len = a->seq_len > 0 ? a->seq_len : t.seq_len;
    // Strong scaling, as Megatron counts batches: the global batch is fixed and split over the ranks,
    // each rank runs it in micro-batches of a fixed size (the last one smaller).
    const int64_t global_tokens = a->global_tokens > 0 ? a->global_tokens : t.batch_size * t.seq_len * t.grad_accum;
    const int64_t micro_tokens = a->micro_batch_tokens > 0 ? a->micro_batch_tokens : t.batch_size * t.seq_len;
    base.dedup_rows = a->dedup;
    base.comm_bytes = a->comm_bytes;
    base.load_imbalance = a->imbalance;

    std::vector<int64_t> limits = {0};
    if (a->device_limit > 0) limits.push_back(a->device_limit);
    nlohmann::json rows = nlohmann::json::array();
    if (!a->json)
      std::printf(
          "%s: %lld tokens per step over all ranks, micro-batches of %lld tokens per rank, seq_len %lld, %.1f GFLOP/s per rank, %lld ranks "
          "per node,\nnode link %.0f Gbit/s %.1f us, inside a node %.1f GB/s %.1f us, %lld-byte activations, rows %s\n\n",
          a->config.c_str(), (long long)global_tokens, (long long)micro_tokens, (long long)base.seq_len,
          a->rank_gflops, (long long)hw.ranks_per_node, a->net_gbit, a->net_latency_us, a->intra_gbs,
          a->intra_latency_us, (long long)base.comm_bytes, base.dedup_rows ? "once per device" : "once per expert");
    for (int64_t limit : limits) {
      if (!a->json)
        std::printf("%s\n| nodes | ranks | EP | DP | compute s | all-to-all s | all-reduce s | step s | efficiency "
                    "| overlapped | tokens/s | all-to-all GB/rank | state GB/rank |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
                    limit > 0 ? fmt::format("device-limited routing, M = {}", limit).c_str() : "routing not limited");
      int64_t crossover = 0;
      for (int64_t n : nodes) {
        ScalingLayout l = base;
        l.nodes = n;
        const int64_t P = n * hw.ranks_per_node;
        if (global_tokens < P)
          usage_error("--nodes: {} ranks leave no token of the {} per step to some rank", P, global_tokens);
        l.tokens_per_rank = global_tokens / P;
        l.micro_batches = (l.tokens_per_rank + micro_tokens - 1) / micro_tokens;
        l.device_limit = limit;
        ScalingEstimate s;
        try {
          if (fixed_ep > 0) {
            if (!device_limit_fits(m, fixed_ep, limit)) continue;  // no row: the limit cannot hold k experts
            l.expert_parallel = fixed_ep;
            s = estimate_training_step(m, hw, l);
          } else {
            s = fastest_expert_parallel(m, hw, l, a->rank_memory_gb * 1e9);
          }
        } catch (const UsageError&) {
          throw;
        } catch (const Error& e) {  // every input came from the command line or the config: a usage error
          if (fixed_ep == 0) continue;  // no size fits the limit or the memory at this node count
          throw UsageError(e.what());
        }
        if (!crossover && s.all_to_all_s > s.compute_s) crossover = n;
        rows.push_back({{"nodes", n}, {"ranks", s.ranks}, {"expert_parallel", l.expert_parallel},
                        {"data_parallel", s.data_parallel}, {"device_limit", limit}, {"compute_s", s.compute_s},
                        {"all_to_all_s", s.all_to_all_s}, {"all_reduce_s", s.all_reduce_s}, {"step_s", s.step_s},
                        {"step_overlapped_s", s.step_overlapped_s}, {"efficiency", s.efficiency},
                        {"efficiency_overlapped", s.efficiency_overlapped}, {"tokens_per_s", s.tokens_per_s},
                        {"rows_per_token", s.rows_per_token}, {"all_to_all_bytes", s.all_to_all_bytes},
                        {"inter_node_fraction", s.inter_node_fraction}, {"all_reduce_bytes", s.all_reduce_bytes},
                        {"state_bytes", s.state_bytes}});
        if (!a->json)
          std::printf("%s", fmt::format("| {} | {} | {} | {} | {:.3g} | {:.3g} | {:.3g} | {:.3g} | {:.0f}% | {:.0f}% | {:.4g} | {:.3g} | {:.3g} |\n",
                                        n, s.ranks, l.expert_parallel, s.data_parallel, s.compute_s, s.all_to_all_s,
                                        s.all_reduce_s, s.step_s, 100 * s.efficiency, 100 * s.efficiency_overlapped,
                                        s.tokens_per_s, s.all_to_all_bytes / 1e9, s.state_bytes / 1e9)
                                .c_str());
      }
      if (!a->json) {
        if (crossover)
          std::printf("\nall-to-all time exceeds compute from %lld nodes on\n\n", (long long)crossover);
        else
          std::printf("\nall-to-all time stays below compute at every node count listed\n\n");
      }
    }
    if (a->json) std::printf("%s\n", rows.dump(2).c_str());
  });
}

}  // namespace dsmoe::cli
