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

// e[0, V) = exp(x - max x); returns max x and the sum of e (double).
struct RowStats {
  float m;
  double sum;
};
RowStats exp_row(float* e, const float* x, int64_t V) {
  const float m = vmax(x, V);
  vexp(e, x, m, V);
  return {m, row_sum(e, V)};
}

float row_loss(const RowStats& r, const float* x, int32_t target) {
  return (float)((double)r.m + std::log(r.sum) - (double)x[target]);
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
      losses[i] = row_loss(exp_row(e.data(), x, V), x, targets[i]);
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
      float* d = dlogits + i * V;
      const float c = (float)((double)scale / exp_row(e.data(), logits + i * V, V).sum);  // scale * softmax = e * c
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) d[j] += e[j] * c;
      d[targets[i]] -= scale;
    }
  }
}

void cross_entropy_forward_backward(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                                    int64_t n, int64_t V) {
  check_targets(targets, n, V);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float* d = dlogits + i * V;
    if (targets[i] < 0) {
      losses[i] = 0.0f;
      std::fill(d, d + V, 0.0f);
      continue;
    }
    const float* x = logits + i * V;
    const RowStats r = exp_row(d, x, V);  // d = exp(x - max), then scaled in place
    losses[i] = row_loss(r, x, targets[i]);
    const float c = (float)(1.0 / r.sum);
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) d[j] *= c;
    d[targets[i]] -= 1.0f;
  }
}

}  // namespace dsmoe::ops
