// SwiGLU activation of every FFN and expert: h = silu(g) * u. The gate and up projections are stored
// as ONE matrix [2I, hidden] (gate rows first) so both come from one GEMM: gu [n, 2I] = (g | u).
#pragma once
#include <cstdint>

namespace dsmoe::ops {

// gu [n, 2I] -> h [n, I]
void swiglu_forward(float* h, const float* gu, int64_t n, int64_t I);
// dgu [n, 2I] = d/d(g|u), overwritten: its only user, the experts' backward, fills a scratch buffer
// (accumulating would need that buffer zeroed first, a whole extra pass over it every step)
void swiglu_backward(float* dgu, const float* dh, const float* gu, int64_t n, int64_t I);

}  // namespace dsmoe::ops
