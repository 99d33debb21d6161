// AdamW exactly as torch.optim.AdamW (decoupled weight decay, bias correction, eps outside the sqrt):
//   p *= 1 - lr*wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
#pragma once
#include <cstdint>

namespace dsmoe::ops {

struct AdamWHyper {
  float lr, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f;
};
// step is 1-based.
void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, const AdamWHyper& h, int64_t step);

}  // namespace dsmoe::ops
