// The MoE layer at inference (the official moe_infer's role): dropless, nothing saved for backward,
// weights in any inference storage (ops/qlinear.h). Same router ops as the training layer
// (moe_forward), same dispatch ops, and every expert is ops::swiglu_mlp_forward, so with fp32
// weights both give the same output up to fp32 summation order (tested in MoePaths).
//   token-major: each token runs its own k experts (decode: fewer (token, expert) pairs than experts,
//                so sorting rows by expert would buy nothing and each expert's weights are one GEMV);
//   grouped:     rows to their experts by a TokenDispatcher (model/token_dispatcher.h, the training
//                layer's), one multi-row product per expert (prefill).
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/moe_layer.h"
#include "model/params.h"
#include "model/token_dispatcher.h"
#include "ops/qlinear.h"

namespace dsmoe {

struct MoeWeights {
  const float* router = nullptr;      // [E, H] fp32 (routing decisions stay full precision); null for hash
  ops::WeightMat experts_gate_up;     // [E * 2I, H]: expert e is rows [e*2I, (e+1)*2I)
  ops::WeightMat experts_down;        // [E * H, I]:  expert e is rows [e*H, (e+1)*H)
  ops::WeightMat shared_gate_up, shared_down;  // [2*Is, H], [H, Is]; 0 rows without shared experts
};
// fp32 views of a training layer's MoE weights.
MoeWeights moe_weights_f32(const ModelConfig& m, const LayerView& L);

struct MoeInferScratch {
  std::vector<float> logits, probs, vals, gates, xs, gu, act, ys, y, shared;
  std::vector<int32_t> ids;
  DispatchState dispatch;
};

enum class MoeDispatch { Auto, TokenMajor, Grouped };  // Auto: token-major iff N * k < E

// out [N, H] = shared(x) + sum_k g_k expert_k(x) for x [N, H] (overwritten); tokens [N] for the hash router.
// `dispatcher` null: every expert is in W (LocalTokenDispatcher); otherwise W's routed experts are
// the dispatcher's local ones and the grouped path is taken whatever `d` says; N may then be 0 (a
// rank with no rows of its own still runs its experts on the rows the others send).
void moe_infer(const ModelConfig& m, const MoeWeights& W, const float* x, const int32_t* tokens, int64_t N,
               float* out, MoeStats& stats, MoeInferScratch& s, MoeDispatch d = MoeDispatch::Auto,
               TokenDispatcher* dispatcher = nullptr);

}  // namespace dsmoe
