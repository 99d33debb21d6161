// Rotary position embedding, half-split convention. Tables in double, rounded once to fp32.
#include "ops/rope.h"

#include <cmath>

#include "core/error.h"

namespace dsmoe::ops {

RopeTable rope_table(int64_t max_pos, int64_t head_dim, double theta) {
  DSMOE_ASSERT(head_dim > 0 && head_dim % 2 == 0, "rope needs an even head_dim, got {}", head_dim);
  DSMOE_ASSERT(max_pos >= 0, "rope max_pos {} is negative", max_pos);
  RopeTable t;
  t.max_pos = max_pos;
  t.head_dim = head_dim;
  const int64_t half = head_dim / 2;
  t.cos.resize((size_t)(max_pos * half));
  t.sin.resize((size_t)(max_pos * half));
  std::vector<double> inv_freq((size_t)half);
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(theta, -(double)(2 * i) / (double)head_dim);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < max_pos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double a = (double)p * inv_freq[i];
      t.cos[p * half + i] = (float)std::cos(a);
      t.sin[p * half + i] = (float)std::sin(a);
    }
  return t;
}

namespace {

// x[:h] <- x[:h] c - sgn x[h:] s ; x[h:] <- x[h:] c + sgn x[:h] s  (sgn = +1 forward, -1 inverse)
template <bool kInverse>
void rotate(float* x, const int32_t* pos, const RopeTable& t, int64_t n, int64_t heads) {
  const int64_t D = t.head_dim, half = D / 2;
  for (int64_t i = 0; i < n; ++i)
    DSMOE_ASSERT(pos[i] >= 0 && pos[i] < t.max_pos, "rope position {} of token {} outside [0, {})", pos[i], i,
                 t.max_pos);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n * heads; ++r) {
    const int64_t p = pos[r / heads];
    const float* c = t.cos.data() + p * half;
    const float* s = t.sin.data() + p * half;
    float* x1 = x + r * D;
    float* x2 = x1 + half;
#pragma omp simd
    for (int64_t j = 0; j < half; ++j) {
      const float a = x1[j], b = x2[j];
      if constexpr (!kInverse) {
        x1[j] = a * c[j] - b * s[j];
        x2[j] = b * c[j] + a * s[j];
      } else {
        x1[j] = a * c[j] + b * s[j];
        x2[j] = b * c[j] - a * s[j];
      }
    }
  }
}

}  // namespace

void rope_forward(float* x, const int32_t* pos, const RopeTable& t, int64_t n, int64_t heads) {
  rotate<false>(x, pos, t, n, heads);
}

void rope_backward(float* dx, const int32_t* pos, const RopeTable& t, int64_t n, int64_t heads) {
  rotate<true>(dx, pos, t, n, heads);
}

}  // namespace dsmoe::ops
