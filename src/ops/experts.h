// Routed experts (Megatron-Core's "Experts"): a grouped SwiGLU MLP over expert-sorted rows.
// Weights are ONE 3-D tensor per projection with experts the slowest dimension (llama.cpp layout):
//   w_gu [E, 2I, H] (gate rows then up rows), w_down [E, H, I].
// The dense FFN and the shared experts are the E == 1 case over all tokens.
#pragma once
#include <cstdint>

#include "ops/matmul.h"
#include "ops/qlinear.h"

namespace dsmoe::ops {

// One SwiGLU MLP, y [n, H] = down(silu(gate(x)) * up(x)) for x [n, H], in any weight storage:
// w_gu [2I, H] (gate rows then up rows), w_down [H, I]. gu [n, 2I] and act [n, I] receive the
// intermediate values (what backward needs). Every FFN of the model is this: experts_forward runs it
// per expert (fp32), inference runs it for the dense FFN, the shared experts and each routed expert.
void swiglu_mlp_forward(float* y, float* gu, float* act, const float* x, const WeightMat& w_gu,
                        const WeightMat& w_down, int64_t n);

struct ExpertsShape {
  int64_t n_experts, hidden, inter;  // E, H, I
};

// xs [rows, H] permuted rows, offsets [E+1] row ranges per expert -> ys [rows, H].
// Saves gu [rows, 2I] and act [rows, I] (the SwiGLU output) for backward; both are required.
// mode: the products' precision (ops/matmul.h; default fp32), forward and backward alike.
void experts_forward(float* ys, float* gu, float* act, const float* xs, const float* w_gu, const float* w_down,
                     const int64_t* offsets, const ExpertsShape& s, const MatmulMode& mode = {});
// The same in any weight storage (training's fp32 above and the inference engine's grouped MoE): the
// experts' stacked matrices w_gu [E * 2I, H] and w_down [E * H, I].
void experts_forward(float* ys, float* gu, float* act, const float* xs, const WeightMat& w_gu, const WeightMat& w_down,
                     const int64_t* offsets, int64_t n_experts);
// dxs [rows, H] +=, dw_gu [E, 2I, H] +=, dw_down [E, H, I] +=. scratch needs rows * 3I floats.
void experts_backward(float* dxs, float* dw_gu, float* dw_down, const float* dys, const float* xs,
                      const float* gu, const float* act, const float* w_gu, const float* w_down,
                      const int64_t* offsets, const ExpertsShape& s, float* scratch, const MatmulMode& mode = {});

}  // namespace dsmoe::ops
