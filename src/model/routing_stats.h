// Routing statistics accumulated over evaluation forwards, for the paper's expert-specialization
// analyses: expert load, routing entropy, co-occurrence of experts for the same token, and locality
// of the routing along a sequence. Collected by Model::forward when a RoutingStats is attached
// (Model::set_routing_stats); nothing is computed or allocated otherwise.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

namespace dsmoe {

class Communicator;

// Raw counts of one MoE layer (sums, so batches and runs can be merged by adding).
struct RoutingLayerStats {
  int64_t layer = -1;             // decoder layer index
  int64_t n_experts = 0;          // E (routed)
  int64_t top_k = 0;              // routed experts per token in the forwards counted (override included)
  int64_t tokens = 0;             // tokens routed
  std::vector<int64_t> load;      // [E] selections per expert (before any capacity drop); sums to tokens * top_k
  std::vector<int64_t> top1_load; // [E] tokens whose highest-ranked chosen expert is e
  std::vector<int64_t> cooc;      // [E * E] tokens that chose both i and j (i != j); symmetric, zero diagonal
  bool has_entropy = false;       // false for the hash router (no routing distribution)
  double entropy_sum = 0;         // sum over tokens of -sum_e p_e ln p_e (softmax over routed experts), nats
  int64_t adjacent_pairs = 0;     // (t-1, t) pairs within a sequence
  int64_t top1_repeats = 0;       // pairs whose top-1 chosen expert is the same
  int64_t overlap_sum = 0;        // sum over pairs of |experts(t-1) ∩ experts(t)|
};

// Derived figures of one layer.
struct ExpertPair {
  int32_t a = 0, b = 0;   // a < b
  int64_t count = 0;      // tokens that chose both
  double lift = 0;        // count * tokens / (load_a * load_b): observed / independent co-selection
};
struct RoutingLayerSummary {
  int64_t layer = -1;
  double load_max_over_mean = 0;   // max_e load_e / mean_e load_e (1 = perfectly balanced)
  double load_cv = 0;              // std_e load_e / mean_e load_e (population std)
  double entropy_mean = 0;         // nats per token (NaN without a routing distribution)
  double entropy_normalised = 0;   // entropy_mean / ln(E): 1 = uniform routing, 0 = one-hot
  double top1_repeat_fraction = 0; // top1_repeats / adjacent_pairs
  double top1_repeat_chance = 0;   // sum_e (top1_load_e / tokens)^2: the same if top-1 were drawn independently
  double overlap_mean = 0;         // overlap_sum / adjacent_pairs (of top_k)
  std::vector<ExpertPair> top_pairs;  // most frequently co-selected pairs, by count (ties: lower ids)
};

struct RoutingStats {
  std::vector<RoutingLayerStats> layers;  // one per MoE layer, in layer order, created on first use

  void reset() { layers.clear(); }
  // One forward of one MoE layer: ids [B*T, k] chosen experts per token, highest-ranked first;
  // probs [B*T, E] the router's softmax (null for the hash router). Tokens of one sequence are
  // consecutive (b*T + t). Refuses a k or E different from what this layer accumulated so far
  // (reset() between runs with different overrides).
  void accumulate(int64_t layer, const int32_t* ids, const float* probs, int64_t B, int64_t T, int64_t E, int64_t k);
  // Adds another collection of the same model and routing (same layers, E and k).
  void merge(const RoutingStats& other);
};

// Several processes, each of which collected its own tokens (`dsmoe eval` under mpirun: every rank
// routes its rows of each batch with the full router): every rank's counts summed into every rank's
// `s`, so the figures are those of the whole batch, as one process collects them. Collective: every
// rank calls it. Refuses stats of different layers, experts or top_k on different ranks.
void all_reduce_sum(RoutingStats& s, Communicator& world);

RoutingLayerSummary summarize(const RoutingLayerStats& s, int64_t top_pairs = 10);
// {"layers": [{layer, experts, top_k, tokens, load, top1_load, cooccurrence [E][E], entropy_sum,
//  adjacent_pairs, top1_repeats, overlap_sum, summary: {load_max_over_mean, load_cv, entropy_mean,
//  entropy_normalised, top1_repeat_fraction, top1_repeat_chance, overlap_mean,
//  top_pairs: [{experts: [a, b], count, lift}]}}]}. Entropy fields are null for the hash router.
nlohmann::json routing_stats_json(const RoutingStats& s, int64_t top_pairs = 10);

}  // namespace dsmoe
