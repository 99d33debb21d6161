// A cost model of one expert x data parallel training step (`dsmoe scaling`): how long the compute,
// the MoE all-to-alls and the gradient all-reduces take on P = nodes x ranks_per_node ranks, so a
// user sees, before renting machines, where communication overtakes compute. It is analytic, not a
// simulation: every communication term is an alpha-beta (latency + bytes / bandwidth) estimate of the
// algorithm dsmoe runs (pairwise all-to-all, hierarchical ring all-reduce), and routing is assumed
// uniform (a balanced router: the balance losses push towards it). bench/RESULTS.md checks it
// against measured steps at P = 1 and 2 on one machine.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace dsmoe {

struct ScalingHardware {
  double rank_flops = 0;       // sustained training FLOP/s of one rank (e.g. a P = 1 run's tokens/s x
                               // train FLOPs per token: the rate the model reaches, not the peak)
  int64_t ranks_per_node = 1;  // G
  double intra_bandwidth = 0;  // bytes/s one rank sends (and at once receives) to ranks of its node
  double intra_latency = 0;    // s per message inside a node
  double net_bandwidth = 0;    // bytes/s of one node's network link, each direction, shared by its G ranks
  double net_latency = 0;      // s per message between nodes
};

struct ScalingLayout {
  int64_t nodes = 1;
  int64_t expert_parallel = 1;  // E: divides nodes x ranks_per_node and n_routed_experts (1: dense or no EP)
  int64_t tokens_per_rank = 0;  // tokens one rank trains on per optimizer step (its batch slice x seq_len x accum)
  int64_t micro_batches = 1;    // grad_accum: the all-to-alls' latency is paid once per micro-batch
  int64_t seq_len = 0;          // for the attention FLOPs
  int64_t device_limit = 0;     // M: a token's routed experts lie on at most M of the E devices (0: no limit)
  bool dedup_rows = false;      // a token is sent once to each device it needs (DeepEP) instead of once per
                                // routed expert (dsmoe's AllToAllTokenDispatcher today)
  int64_t comm_bytes = 4;       // bytes per activation element on the wire (fp32 4, bf16 2)
  int64_t grad_bytes = 4;       // bytes per gradient element in the all-reduce
  double load_imbalance = 1;    // the busiest rank's routed-expert work over the mean (>= 1)
};

struct ScalingEstimate {
  int64_t ranks = 1, data_parallel = 1;
  double compute_s = 0;           // tokens x train FLOPs per token / rank_flops (routed part x load_imbalance)
  double ideal_compute_s = 0;     // the same with perfect balance: what one rank would spend alone
  double all_to_all_s = 0;        // per MoE layer and micro-batch: the count exchange and four row
                                  // exchanges (dispatch, combine, and the backward of each)
  double all_reduce_s = 0;        // replicated gradients over all ranks + routed-expert gradients over the
                                  // replicas of each expert group
  double step_s = 0;              // compute + all-to-all + all-reduce: nothing overlapped (dsmoe today)
  double step_overlapped_s = 0;   // the all-reduce hidden behind the backward (2/3 of the compute) where it fits
  double efficiency = 0;          // ideal_compute_s / step_s (weak scaling: every rank keeps its tokens)
  double efficiency_overlapped = 0;
  double tokens_per_s = 0;        // ranks x tokens_per_rank / step_s
  double rows_per_token = 0;      // rows a token sends to other ranks per MoE layer and exchange
  double all_to_all_bytes = 0;    // bytes one rank sends by all-to-all per step (every MoE layer, fwd + bwd)
  double inter_node_fraction = 0; // the part of those that leaves the node
  double all_reduce_bytes = 0;    // gradient bytes one rank holds and all-reduces per step
  double state_bytes = 0;         // training state one rank holds: fp32 weights, gradients and two AdamW
                                  // moments (16 bytes a parameter), activations not counted
};

// Expected number of distinct devices holding a token's k routed experts, n experts split evenly
// over E devices, the k chosen uniformly at random (device_limit M > 0: first M devices uniformly,
// then the k experts among theirs, as DeepSeek-V2's device-limited routing with uniform scores).
double expected_devices_per_token(int64_t n_experts, int64_t devices, int64_t k, int64_t device_limit);

// Rows one token sends to other ranks per MoE layer and exchange: k (E - 1) / E without dedup (each
// routed expert is remote with probability 1 - 1/E, with or without a device limit), else the
// expected distinct remote devices.
double remote_rows_per_token(const ModelConfig& m, const ScalingLayout& l);

// The expert-parallel sizes possible on P ranks, G per node: every E <= P that divides P and the
// routed experts and divides G or is divided by it (only 1 for a dense model), ascending.
std::vector<int64_t> expert_parallel_choices(const ModelConfig& m, int64_t ranks, int64_t ranks_per_node);

// Whether a device limit of M (0: none) can hold a token's k experts on an expert-parallel size of E:
// M <= E and the M devices' experts number at least k.
bool device_limit_fits(const ModelConfig& m, int64_t expert_parallel, int64_t device_limit);

// Throws dsmoe::Error naming the field when a value is out of range (E not dividing the ranks or the
// experts, a device limit past E, a non-positive rate or bandwidth, ...).
ScalingEstimate estimate_training_step(const ModelConfig& m, const ScalingHardware& hw, const ScalingLayout& l);

// `--ep auto`: the layout's expert-parallel size replaced by the choice with the shortest step whose
// training state fits max_state_bytes (0: no limit); `l.expert_parallel` is set to it. A device
// limit larger than a choice's E, or leaving fewer than k experts, rules that choice out. Throws when
// nothing fits.
ScalingEstimate fastest_expert_parallel(const ModelConfig& m, const ScalingHardware& hw, ScalingLayout& l,
                                        double max_state_bytes = 0);

}  // namespace dsmoe
