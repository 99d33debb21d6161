#include "train/optimizer.h"

#include <cmath>

#include "ops/adamw.h"

namespace dsmoe {

AdamW::AdamW(const ParamLayout& layout, const TrainConfig& t)
    : layout_(layout), t_(t), m_(layout.total(), 0.0f), v_(layout.total(), 0.0f) {}

void AdamW::step(float* params, const float* grads, double lr, int64_t step) {
  for (const auto& p : layout_.tensors()) {
    ops::AdamWHyper h{(float)lr, (float)t_.beta1, (float)t_.beta2, (float)t_.eps,
                      p.weight_decay ? (float)t_.weight_decay : 0.0f};
    ops::adamw_step(params + p.offset, grads + p.offset, m_.data() + p.offset, v_.data() + p.offset, p.numel, h,
                    step);
  }
}

double grad_norm(const std::vector<float>& g) {
  // Fixed-size chunks summed in order: the result does not depend on the thread count.
  const int64_t n = (int64_t)g.size(), chunk = 1 << 16, nchunks = (n + chunk - 1) / chunk;
  std::vector<double> part(nchunks, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nchunks; ++c) {
    double s = 0;
    const int64_t end = std::min(n, (c + 1) * chunk);
    // A SIMD reduction (the compiler's fixed lane order, so still deterministic): the serial
    // double sum was latency-bound at ~1 ns/element, a visible part of small models' steps.
#pragma omp simd reduction(+ : s)
    for (int64_t i = c * chunk; i < end; ++i) s += (double)g[i] * g[i];
    part[c] = s;
  }
  double s = 0;
  for (double p : part) s += p;
  return std::sqrt(s);
}

void clip_grads(std::vector<float>& g, double norm, double max_norm) {
  if (max_norm <= 0) return;
  const double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return;
  const float c = (float)coef;
  for (auto& x : g) x *= c;
}

std::string first_nonfinite(const ParamLayout& layout, const std::vector<float>& buf) {
  // Checked after every step: a vectorised scan first (x - x is 0 for finite x, NaN otherwise),
  // the per-tensor search only when something is wrong.
  const int64_t n = (int64_t)buf.size();
  const float* b = buf.data();
  int64_t bad = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : bad)
  for (int64_t i = 0; i < n; ++i) bad += (b[i] - b[i]) != 0.0f || b[i] != b[i];
  if (bad == 0) return "";
  for (const auto& t : layout.tensors())
    for (int64_t i = 0; i < t.numel; ++i)
      if (!std::isfinite(buf[t.offset + i])) return t.name;
  return "";
}

}  // namespace dsmoe
