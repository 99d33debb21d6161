// Cross-entropy over fp32 logits with a max-shifted log-sum-exp; sums in double.
#include "ops/cross_entropy.h"

#include "core/vmath.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace dsmoe::ops {

namespace {

void check_targets(const int32_t* targets, int64_t n, int64_t V) {
  for (int64_t i = 0; i < n; ++i)
    DSMOE_ASSERT(targets[i] < V, "cross-entropy target {} of row {} is not below the vocabulary size {}",
                 targets[i], i, V);
}

// Summed in vector lanes (a fixed order: deterministic); a serial double chain over the vocabulary
// cost ~4 cycles per logit, several % of a small model's step.
double row_sum(const float* e, int64_t V) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < V; ++j) sum += e[j];
  return sum;
}

}  // namespace

void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t n, int64_t V) {
  check_targets(targets, n, V);
#pragma omp parallel
  {
    std::vector<float> e((size_t)V);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      if (targets[i] < 0) {
        losses[i] = 0.0f;
        continue;
      }
      const float* x = logits + i * V;
      const float m = vmax(x, V);
      vexp(e.data(), x, m, V);
      const double sum = row_sum(e.data(), V);
      losses[i] = (float)((double)m + std::log(sum) - (double)x[targets[i]]);
    }
  }
}

void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, float scale, int64_t n,
                            int64_t V) {
  if (!dlogits) return;
  check_targets(targets, n, V);
#pragma omp parallel
  {
    std::vector<float> e((size_t)V);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      if (targets[i] < 0) continue;
      const float* x = logits + i * V;
      float* d = dlogits + i * V;
      const float m = vmax(x, V);
      vexp(e.data(), x, m, V);
      const double sum = row_sum(e.data(), V);
      const float c = (float)((double)scale / sum);  // scale * softmax = e * c
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) d[j] += e[j] * c;
      d[targets[i]] -= scale;
    }
  }
}

}  // namespace dsmoe::ops
