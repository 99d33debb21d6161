// One DeepSeekMoE FFN layer, split the way Megatron-Core splits it:
//   Router      softmax over routed experts -> top-k (original ids) -> optional gate normalisation
//               (or the fixed hash of Hash Layer)
//   Dispatcher  counting sort of (token, slot) pairs by expert, optional capacity drop, gather
//   Experts     grouped SwiGLU over the expert-sorted rows
//   Combine     weighted scatter back to token order
//   Shared      the Ks always-on experts as one wide SwiGLU MLP, added unweighted
// plus the expert- and device-level balance losses, whose gradient enters with weight 1 (the
// official AddAuxiliaryLoss), independent of any scaling of the LM loss.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "model/token_dispatcher.h"
#include "ops/matmul.h"

namespace dsmoe {

// Activations of one MoE layer saved by forward for backward, reused across steps.
struct MoeActivations {
  std::vector<float> router_logits, probs;   // [N, E]
  std::vector<int32_t> ids;                  // [N, k]
  std::vector<float> vals, gates;            // [N, k]
  std::vector<uint8_t> keep;                 // [N*k] when a capacity factor is set
  DispatchState dispatch;                    // the dispatcher's plan and buffers
  std::vector<float> xs, gu, act, ys;        // [rows, H], [rows, 2I], [rows, I], [rows, H]: this process's experts' rows
  std::vector<float> shared_gu, shared_act;  // [N, 2Is], [N, Is]
  std::vector<float> shared_out;             // [N, H], kept between steps: a fresh one page-faulted every forward
  std::vector<float> freq;                   // balance-loss frequencies f [groups, E]
  std::vector<float> comm_freq;              // communication-loss frequencies f'' [groups, D]
};

// Routing statistics of one forward, for logs and analysis.
struct MoeStats {
  double expert_aux = 0, device_aux = 0, comm_aux = 0;
  std::vector<int64_t> load;   // [E] selections per expert (before capacity drops)
  int64_t dropped = 0;         // this rank's slots dropped by the capacity limit
  // Training forwards (compute_aux) with a learned router: the routing distribution's entropy summed
  // over the tokens (nats) and their count; 0 and 0 otherwise (evaluation has RoutingStats).
  double entropy_sum = 0;
  int64_t entropy_tokens = 0;
};

// Evaluation-time change of the routing, for the paper's expert-specialization analyses (section 4.5).
// Never used in training: Model::forward refuses it with compute_aux (balance losses, backward).
// Everything else is the official math: gates are the softmax probabilities over ALL routed experts
// of the chosen ones, renormalised over the chosen ones only when norm_topk_prob and the effective
// k > 1; the disabled experts simply cannot be chosen.
struct RoutingOverride {
  int64_t disable_top = 0;   // per token, exclude the `disable_top` routed experts with the highest routing
                             // probability, then pick top-k among the rest (paper Fig. 4)
  int64_t top_k = 0;         // 0 = the config's num_experts_per_tok; otherwise activate this many routed
                             // experts (paper Fig. 5: fewer activated experts at inference)
  bool drop_shared = false;  // skip the shared experts (paper: "remove the shared expert and activate one
                             // more routed expert" = drop_shared + top_k = K + 1)

  bool active() const { return disable_top != 0 || top_k != 0 || drop_shared; }
  // Routed experts per token under this override.
  int64_t k(const ModelConfig& m) const { return top_k > 0 ? top_k : m.num_experts_per_tok; }
};
// Throws dsmoe::Error naming the field if `o` is invalid for model `m`: negative values,
// disable_top + top_k > n_routed_experts, disable_top/top_k on a Hash Layer model (its routing is a
// fixed hash, there are no probabilities to rank), drop_shared without shared experts, or any active
// override on a dense model.
void validate_routing_override(const ModelConfig& m, const RoutingOverride& o);
// {"disable_top": .., "top_k": .. (effective, never 0), "drop_shared": ..} for reports.
nlohmann::json routing_override_json(const ModelConfig& m, const RoutingOverride& o);

// How a MoE layer runs across processes; the default is one process holding every expert.
struct MoeParallel {
  // null: LocalTokenDispatcher. Otherwise its local experts are the ones LayerView's expert tensors
  // hold ([local experts, 2I, H] and [local experts, H, I]).
  TokenDispatcher* dispatcher = nullptr;
  // The ranks that each hold a slice of the batch (equal slices), null = one. Batch-level balance
  // statistics (seq_aux false) are summed over them, so every rank computes the single-process
  // loss; each rank's aux gradient is then its share, 1/size of the loss's (sequence-level losses
  // too: their mean over all sequences), so summing gradients over ranks gives the loss's gradient.
  Communicator* batch = nullptr;
  int64_t batch_ranks() const { return batch ? batch->size() : 1; }
};

// Scratch shared by all MoE layers during backward.
struct MoeScratch {
  std::vector<float> dys, dxs, dgates, dvals, dprobs, dlogits, dgu, expert_scratch, dshared_act, dshared_gu;
};

// x [N, H] is the post-attention-norm hidden state of B sequences of T tokens; tokens [N] their ids
// (used by the hash router). out [N, H] = shared(x) + sum_k g_k expert_k(x) (overwritten).
// `ovr` (evaluation only, validated by the caller; must be inactive when compute_aux) changes the
// routing; a.ids/a.gates are then [N, ovr.k(m)] and backward must not be called on the result.
// With par.batch, expert_aux / device_aux / comm_aux are this rank's: the loss itself when batch-level,
// the mean over its own sequences when sequence-level (the loss is then the mean over ranks).
// Capacity drops (m.capacity_factor > 0) apply only with compute_aux (training), never at evaluation:
// see capacity_keep_mask_for_batch.

void moe_forward(const ModelConfig& m, const LayerView& P, const float* x, const int32_t* tokens, int64_t B,
                 int64_t T, bool compute_aux, float* out, MoeActivations& a, MoeStats& stats,
                 const RoutingOverride& ovr = RoutingOverride{}, const MoeParallel& par = MoeParallel{},
                 const ops::MatmulMode& mode = {});
// Inference path for decode-sized batches with fp32 weights: moe_infer (model/moe_infer.h) with
// token-major dispatch (each token runs its own k experts, no sort, no saved activations). Same
// routing and the same kernels as moe_forward, so the outputs agree to fp32 rounding (tested).
// Capacity limits do not apply.
void moe_forward_token_major(const ModelConfig& m, const LayerView& P, const float* x, const int32_t* tokens,
                             int64_t N, float* out, MoeStats& stats);

// The slots that survive the capacity limit (keep [N*k] = 1/0) of this rank's tokens, whose routed ids
// [N, k] and affinities `scores` [N, k] (the softmax probs of the chosen experts; the gates for hash)
// are given; `batch` (null = one) holds equal contiguous slices of the micro-batch in rank order.
// The ranking is over the WHOLE micro-batch of Ng = N * batch ranks tokens (every rank's slots are
// gathered), so the dropped set does not depend on the layout:
//   D = 1 device (n_device_groups 1, one process or data parallelism only): each expert keeps its
//     ceil(cf * Ng * k / E) highest-affinity slots (GShard / Switch expert capacity);
//   D > 1 devices (n_device_groups, or --ep E): each device (n_routed_experts / D contiguous experts)
//     keeps ceil(cf * Ng * k / D) of the (token, expert) slots routed to it, the highest-affinity ones
//     (DeepSeek-V2's per-device capacity; data-parallel replicas of a device share its capacity).
// Equal affinities: the lower slot of the whole micro-batch (token-major, then rank order) is kept.
void capacity_keep_mask_for_batch(const ModelConfig& m, const int32_t* ids, const float* scores, int64_t N, int64_t k,
                                  Communicator* batch, std::vector<uint8_t>& keep);

// dx [N, H] += d out / d x; parameter gradients G += ...; aux-loss gradients injected with weight 1.
void moe_backward(const ModelConfig& m, const LayerView& P, const LayerView& G, const float* x, const float* dout,
                  int64_t B, int64_t T, bool with_aux, float* dx, MoeActivations& a, MoeScratch& s,
                  const MoeParallel& par = MoeParallel{}, const ops::MatmulMode& mode = {});

}  // namespace dsmoe
