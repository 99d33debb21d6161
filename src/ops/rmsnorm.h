// RMSNorm as in the official code: y = x * rsqrt(mean(x^2) + eps) * w, computed in fp32.
#pragma once
#include <cstdint>

namespace dsmoe::ops {

// x [n, dim], w [dim] -> y [n, dim]; rstd [n] saved for backward (may be null at inference).
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t n, int64_t dim, float eps);
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t n, int64_t dim);

}  // namespace dsmoe::ops
