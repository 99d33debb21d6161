// AdamW as torch.optim.AdamW (single-tensor path): the scalar factors are formed in double, as
// Python does, and the element-wise update runs in fp32 in torch's order of operations.
#include "ops/adamw.h"

#include <cmath>

namespace dsmoe::ops {

void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const AdamWHyper& h, int64_t step) {
  const double lr = h.lr, b1 = h.beta1, b2 = h.beta2;
  const float decay = (float)(1.0 - lr * (double)h.weight_decay);
  const float beta1 = h.beta1, beta2 = h.beta2;
  const float one_m_b1 = (float)(1.0 - b1), one_m_b2 = (float)(1.0 - b2);
  const double bc1 = 1.0 - std::pow(b1, (double)step);
  const double bc2 = 1.0 - std::pow(b2, (double)step);
  const float step_size = (float)(lr / bc1);
  const float bc2_sqrt = (float)std::sqrt(bc2);
  const float eps = h.eps;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = m[i] * beta1 + gi * one_m_b1;
    const float vi = v[i] * beta2 + gi * gi * one_m_b2;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    p[i] = p[i] * decay - step_size * (mi / denom);
  }
}

}  // namespace dsmoe::ops
