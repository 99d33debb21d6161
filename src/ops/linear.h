// y = x W^T without bias (every projection of the model: attention, MLPs, router, lm_head).
#pragma once
#include <cstdint>

#include "ops/matmul.h"

namespace dsmoe::ops {

// x [n, in], w [out, in] -> y [n, out]. mode: the products' precision (ops/matmul.h; default fp32).
void linear_forward(float* y, const float* x, const float* w, int64_t n, int64_t in, int64_t out,
                    const MatmulMode& mode = {});
// dx [n, in] += alpha dy W ; dw [out, in] += alpha dy^T x (alpha: a scale still to apply to dy)
void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n,
                     int64_t in, int64_t out, float alpha = 1.0f, const MatmulMode& mode = {});

}  // namespace dsmoe::ops
