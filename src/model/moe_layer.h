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
};

// Routing statistics of one forward, for logs and analysis.
struct MoeStats {
  double expert_aux = 0, device_aux = 0;
  std::vector<int64_t> load;   // [E] selections per expert (before capacity drops)
  int64_t dropped = 0;         // slots dropped by the capacity limit
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
// With par.batch, expert_aux / device_aux are this rank's: the loss itself when batch-level, the mean
// over its own sequences when sequence-level (the loss is then the mean over ranks).
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

// dx [N, H] += d out / d x; parameter gradients G += ...; aux-loss gradients injected with weight 1.
void moe_backward(const ModelConfig& m, const LayerView& P, const LayerView& G, const float* x, const float* dout,
                  int64_t B, int64_t T, bool with_aux, float* dx, MoeActivations& a, MoeScratch& s,
                  const MoeParallel& par = MoeParallel{}, const ops::MatmulMode& mode = {});

}  // namespace dsmoe
