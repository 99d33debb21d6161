#include "experiment/scaling_model.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/params.h"

namespace dsmoe {

namespace {

// C(a, k) / C(b, k) for a <= b, as a product (the binomials themselves overflow for 64 experts).
double binomial_ratio(int64_t a, int64_t b, int64_t k) {
  if (a < k) return 0.0;
  double r = 1.0;
  for (int64_t i = 0; i < k; ++i) r *= (double)(a - i) / (double)(b - i);
  return r;
}

void check_positive(double v, const char* field) {
  if (!(v > 0) || !std::isfinite(v)) fail("scaling model: {} must be a positive finite number, got {}", field, v);
}
void check_non_negative(double v, const char* field) {
  if (!(v >= 0) || !std::isfinite(v)) fail("scaling model: {} must be a finite number >= 0, got {}", field, v);
}

// A ring all-reduce of `bytes` over `per_node` ranks on each of `nodes` nodes, done hierarchically
// (reduce-scatter inside the node, all-reduce of the shards across nodes, all-gather inside), with
// `streams` independent all-reduces of that size running at once on every node and sharing its link.
double hierarchical_all_reduce_s(double bytes, int64_t per_node, int64_t nodes, int64_t streams,
                                 const ScalingHardware& hw) {
  double t = 0;
  if (per_node > 1)
    t += 2.0 * (double)(per_node - 1) / (double)per_node * bytes / hw.intra_bandwidth +
         2.0 * (double)(per_node - 1) * hw.intra_latency;
  if (nodes > 1)
    t += 2.0 * (double)(nodes - 1) / (double)nodes * bytes * (double)streams / hw.net_bandwidth +
         2.0 * (double)(nodes - 1) * hw.net_latency;
  return t;
}

void validate(const ModelConfig& m, const ScalingHardware& hw, const ScalingLayout& l) {
  check_positive(hw.rank_flops, "rank_flops");
  check_positive(hw.intra_bandwidth, "intra_bandwidth");
  check_positive(hw.net_bandwidth, "net_bandwidth");
  check_non_negative(hw.intra_latency, "intra_latency");
  check_non_negative(hw.net_latency, "net_latency");
  if (hw.ranks_per_node < 1 || hw.ranks_per_node > (1 << 20))
    fail("scaling model: ranks_per_node {} is outside [1, {}]", hw.ranks_per_node, 1 << 20);
  if (l.nodes < 1 || l.nodes > (1 << 20)) fail("scaling model: nodes {} is outside [1, {}]", l.nodes, 1 << 20);
  const int64_t P = l.nodes * hw.ranks_per_node, E = l.expert_parallel, G = hw.ranks_per_node;
  if (E < 1 || E > P || P % E != 0)
    fail("scaling model: the expert-parallel size {} must divide the {} ranks ({} nodes x {} per node)", E, P, l.nodes,
         G);
  if (E > 1 && !m.is_moe()) fail("scaling model: an expert-parallel size of {} needs a MoE model (this one is dense)", E);
  if (E > 1 && m.n_routed_experts % E != 0)
    fail("scaling model: the expert-parallel size {} does not divide the {} routed experts", E, m.n_routed_experts);
  if (E % G != 0 && G % E != 0)
    fail("scaling model: the expert-parallel size {} and the {} ranks per node must divide one another (an expert "
         "group is whole nodes or a part of one)",
         E, G);
  if (l.tokens_per_rank < 1 || l.tokens_per_rank > (int64_t(1) << 40))
    fail("scaling model: tokens_per_rank {} is outside [1, 2^40]", l.tokens_per_rank);
  if (l.micro_batches < 1 || l.micro_batches > l.tokens_per_rank)
    fail("scaling model: micro_batches {} is outside [1, tokens_per_rank = {}]", l.micro_batches, l.tokens_per_rank);
  if (l.seq_len < 1 || l.seq_len > limits::kMaxPositions)
    fail("scaling model: seq_len {} is outside [1, {}]", l.seq_len, limits::kMaxPositions);
  if (l.device_limit < 0 || l.device_limit > E)
    fail("scaling model: the device limit {} is outside [0, {}] (0 = none; at most the expert-parallel size)",
         l.device_limit, E);
  if (!device_limit_fits(m, E, l.device_limit))
    fail("scaling model: a device limit of {} leaves {} experts, fewer than the {} a token is routed to", l.device_limit,
         l.device_limit * (m.n_routed_experts / E), m.num_experts_per_tok);
  if (l.comm_bytes < 1 || l.comm_bytes > 8) fail("scaling model: comm_bytes {} is outside [1, 8]", l.comm_bytes);
  if (l.grad_bytes < 1 || l.grad_bytes > 8) fail("scaling model: grad_bytes {} is outside [1, 8]", l.grad_bytes);
  if (!(l.load_imbalance >= 1) || !(l.load_imbalance <= (double)std::max<int64_t>(E, 1)))
    fail("scaling model: load_imbalance {} is outside [1, {}] (the busiest rank over the mean)", l.load_imbalance, E);
}

}  // namespace

bool device_limit_fits(const ModelConfig& m, int64_t expert_parallel, int64_t device_limit) {
  if (device_limit == 0) return true;
  return device_limit <= expert_parallel &&
         (!m.is_moe() || device_limit * (m.n_routed_experts / expert_parallel) >= m.num_experts_per_tok);
}

double expected_devices_per_token(int64_t n_experts, int64_t devices, int64_t k, int64_t device_limit) {
  DSMOE_ASSERT(devices >= 1 && n_experts % devices == 0 && k >= 1 && k <= n_experts, "n {} E {} k {}", n_experts,
               devices, k);
  const int64_t per = n_experts / devices, M = device_limit > 0 ? device_limit : devices;
  DSMOE_ASSERT(M <= devices && M * per >= k, "M {} per {} k {}", M, per, k);
  // Each of the M candidate devices is hit unless all k experts fall on the other M - 1.
  return (double)M * (1.0 - binomial_ratio((M - 1) * per, M * per, k));
}

double remote_rows_per_token(const ModelConfig& m, const ScalingLayout& l) {
  const int64_t E = l.expert_parallel;
  if (E <= 1 || !m.is_moe()) return 0.0;
  const double remote = (double)(E - 1) / (double)E;  // the token's own rank is one of E, by symmetry
  if (!l.dedup_rows) return (double)m.num_experts_per_tok * remote;
  return expected_devices_per_token(m.n_routed_experts, E, m.num_experts_per_tok, l.device_limit) * remote;
}

std::vector<int64_t> expert_parallel_choices(const ModelConfig& m, int64_t ranks, int64_t ranks_per_node) {
  std::vector<int64_t> out = {1};
  if (!m.is_moe()) return out;
  for (int64_t e = 2; e <= std::min(ranks, m.n_routed_experts); ++e)
    if (ranks % e == 0 && m.n_routed_experts % e == 0 && (e % ranks_per_node == 0 || ranks_per_node % e == 0))
      out.push_back(e);
  return out;
}

ScalingEstimate estimate_training_step(const ModelConfig& m, const ScalingHardware& hw, const ScalingLayout& l) {
  validate(m, hw, l);
  const int64_t G = hw.ranks_per_node, N = l.nodes, P = N * G, E = l.expert_parallel, D = P / E;
  const double H = (double)m.hidden_size, I = (double)m.moe_intermediate_size, T = (double)l.tokens_per_rank;
  const int64_t moe_layers = m.is_moe() ? m.moe_layer_count() : 0;
  ScalingEstimate s;
  s.ranks = P;
  s.data_parallel = D;

  // Compute: the routed experts' share scales with the busiest rank's load.
  const ModelStats st = model_stats(m, l.seq_len);
  const double routed_flops = 6.0 * (double)moe_layers * (double)m.num_experts_per_tok * 3.0 * H * I;
  s.ideal_compute_s = T * st.train_flops_per_token / hw.rank_flops;
  s.compute_s = T * (st.train_flops_per_token + (l.load_imbalance - 1.0) * routed_flops) / hw.rank_flops;

  // All-to-all inside an expert group of E contiguous ranks, Open MPI's pairwise exchange: E - 1
  // rounds, each a message to one peer; the peers off the node share its link with the node's other
  // ranks, which exchange at the same time.
  s.rows_per_token = remote_rows_per_token(m, l);
  if (moe_layers > 0 && E > 1) {
    const int64_t on_node_peers = std::min(E, G) - 1, off_node_peers = E - std::min(E, G);
    s.inter_node_fraction = (double)off_node_peers / (double)(E - 1);
    const double exchange_bytes = T / (double)l.micro_batches * s.rows_per_token * H * (double)l.comm_bytes;
    const double latency = (double)on_node_peers * hw.intra_latency + (double)off_node_peers * hw.net_latency;
    const double exchange_s = latency + exchange_bytes * (1.0 - s.inter_node_fraction) / hw.intra_bandwidth +
                              exchange_bytes * s.inter_node_fraction / (hw.net_bandwidth / (double)G);
    // Per MoE layer and micro-batch: the per-rank counts (latency only), then the rows of dispatch,
    // combine, combine's backward and dispatch's backward.
    const double per_layer_s = latency + 4.0 * exchange_s;
    s.all_to_all_s = per_layer_s * (double)moe_layers * (double)l.micro_batches;
    s.all_to_all_bytes = 4.0 * exchange_bytes * (double)moe_layers * (double)l.micro_batches;
  }

  // Gradients: everything but the routed experts over all P ranks; each expert group's experts over
  // its D replicas (rank r's replicas are the ranks with the same r % E: on other nodes when a group
  // spans whole nodes, else G / E of them on each node).
  const double routed_params = (double)moe_layers * (double)m.n_routed_experts * 3.0 * H * I;
  const double replicated_bytes = ((double)st.total_params - routed_params) * (double)l.grad_bytes;
  const double expert_bytes = routed_params / (double)E * (double)l.grad_bytes;
  s.all_reduce_bytes = replicated_bytes + expert_bytes;
  s.state_bytes = 16.0 * ((double)st.total_params - routed_params + routed_params / (double)E);
  s.all_reduce_s = hierarchical_all_reduce_s(replicated_bytes, G, N, 1, hw);
  if (D > 1 && routed_params > 0) {
    const int64_t replicas_per_node = E >= G ? 1 : G / E, replica_nodes = D / replicas_per_node;
    s.all_reduce_s += hierarchical_all_reduce_s(expert_bytes, replicas_per_node, replica_nodes,
                                                G / replicas_per_node, hw);
  }

  s.step_s = s.compute_s + s.all_to_all_s + s.all_reduce_s;
  s.step_overlapped_s = s.compute_s + s.all_to_all_s + std::max(0.0, s.all_reduce_s - 2.0 / 3.0 * s.compute_s);
  s.efficiency = s.ideal_compute_s / s.step_s;
  s.efficiency_overlapped = s.ideal_compute_s / s.step_overlapped_s;
  s.tokens_per_s = (double)P * T / s.step_s;
  return s;
}

ScalingEstimate fastest_expert_parallel(const ModelConfig& m, const ScalingHardware& hw, ScalingLayout& l,
                                        double max_state_bytes) {
  ScalingEstimate best;
  int64_t best_e = 0;
  for (int64_t e : expert_parallel_choices(m, l.nodes * hw.ranks_per_node, hw.ranks_per_node)) {
    if (!device_limit_fits(m, e, l.device_limit)) continue;
    ScalingLayout c = l;
    c.expert_parallel = e;
    const ScalingEstimate s = estimate_training_step(m, hw, c);
    if (max_state_bytes > 0 && s.state_bytes > max_state_bytes) continue;
    if (!best_e || s.step_s < best.step_s) best = s, best_e = e;
  }
  if (!best_e)
    fail("scaling model: no expert-parallel size on {} ranks fits a device limit of {} and {:.3g} GB of state a rank",
         l.nodes * hw.ranks_per_node, l.device_limit, max_state_bytes / 1e9);
  l.expert_parallel = best_e;
  return best;
}

}  // namespace dsmoe
