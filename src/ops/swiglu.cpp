#include "ops/swiglu.h"

#include "core/vmath.h"

#include <cmath>

namespace dsmoe::ops {

// h = silu(g) * u, silu(g) = g * sigmoid(g). gu row t = [g (I) | u (I)].
void swiglu_forward(float* h, const float* gu, int64_t n, int64_t I) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float* g = gu + t * 2 * I;
    const float* u = g + I;
    float* o = h + t * I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) {
      const float s = sigmoid(g[i]);
      o[i] = g[i] * s * u[i];
    }
  }
}

// dg = dh * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))),  du = dh * silu(g)
void swiglu_backward(float* dgu, const float* dh, const float* gu, int64_t n, int64_t I) {
  if (!dgu) return;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float* g = gu + t * 2 * I;
    const float* u = g + I;
    const float* d = dh + t * I;
    float* dg = dgu + t * 2 * I;
    float* du = dg + I;
    #pragma omp simd
    for (int64_t i = 0; i < I; ++i) {
      const float s = sigmoid(g[i]);
      float silu = g[i] * s;
      dg[i] = d[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
      du[i] = d[i] * silu;
    }
  }
}

}  // namespace dsmoe::ops
