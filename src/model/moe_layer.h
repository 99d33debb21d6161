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
#include "ops/dispatch.h"

namespace dsmoe {

// Activations of one MoE layer saved by forward for backward, reused across steps.
struct MoeActivations {
  std::vector<float> router_logits, probs;   // [N, E]
  std::vector<int32_t> ids;                  // [N, k]
  std::vector<float> vals, gates;            // [N, k]
  std::vector<uint8_t> keep;                 // [N*k] when a capacity factor is set
  ops::DispatchPlan plan;
  std::vector<float> xs, gu, act, ys;        // [rows, H], [rows, 2I], [rows, I], [rows, H]
  std::vector<float> shared_gu, shared_act;  // [N, 2Is], [N, Is]
  std::vector<float> freq;                   // balance-loss frequencies f [groups, E]
};

// Routing statistics of one forward, for logs and analysis.
struct MoeStats {
  double expert_aux = 0, device_aux = 0;
  std::vector<int64_t> load;   // [E] selections per expert (before capacity drops)
  int64_t dropped = 0;         // slots dropped by the capacity limit
};

// Scratch shared by all MoE layers during backward.
struct MoeScratch {
  std::vector<float> dys, dxs, dgates, dvals, dprobs, dlogits, dgu, expert_scratch, dshared_act, dshared_gu;
};

// x [N, H] is the post-attention-norm hidden state of B sequences of T tokens; tokens [N] their ids
// (used by the hash router). out [N, H] = shared(x) + sum_k g_k expert_k(x) (overwritten).
void moe_forward(const ModelConfig& m, const LayerView& P, const float* x, const int32_t* tokens, int64_t B,
                 int64_t T, bool compute_aux, float* out, MoeActivations& a, MoeStats& stats);
// Inference path for decode-sized batches (the official moe_infer's role): each token runs its own k
// experts one row at a time, no sort, no saved activations. Same routing and the same kernels as
// moe_forward, so the outputs agree to fp32 rounding (tested). Capacity limits do not apply.
void moe_forward_token_major(const ModelConfig& m, const LayerView& P, const float* x, const int32_t* tokens,
                             int64_t N, float* out, MoeStats& stats);

// dx [N, H] += d out / d x; parameter gradients G += ...; aux-loss gradients injected with weight 1.
void moe_backward(const ModelConfig& m, const LayerView& P, const LayerView& G, const float* x, const float* dout,
                  int64_t B, int64_t T, bool with_aux, float* dx, MoeActivations& a, MoeScratch& s);

}  // namespace dsmoe
