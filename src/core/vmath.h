// Vectorised expf from glibc's libmvec (<= 1 ulp; AVX-512 variants on this CPU). glibc declares
// the SIMD variants only under -ffast-math; declaring the attribute here lets GCC call them from
// `#pragma omp simd` loops while the rest of the code keeps strict IEEE semantics.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

extern "C" float expf(float) noexcept __attribute__((simd("notinbranch")));

namespace dsmoe {

// y[i] = exp(x[i] - shift); y may alias x.
inline void vexp(float* y, const float* x, float shift, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = expf(x[i] - shift);
}

// Numerically stable sigmoid, vectorisable: 1 / (1 + exp(-x)).
#pragma omp declare simd notinbranch
inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// max(x[0..n)), -inf for n == 0. Written with intrinsics because GCC 12 leaves an
// `omp simd reduction(max)` over std::max scalar (one dependent vmaxss per element: the row maxima of
// the cross-entropy and attention softmaxes were ~6% of a small model's training step).
inline float vmax(const float* x, int64_t n) {
  int64_t j = 0;
  float m = -INFINITY;
#ifdef __AVX512F__
  if (n >= 32) {
    __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    for (j = 32; j + 32 <= n; j += 32) {
      a = _mm512_max_ps(_mm512_loadu_ps(x + j), a);
      b = _mm512_max_ps(_mm512_loadu_ps(x + j + 16), b);
    }
    m = _mm512_reduce_max_ps(_mm512_max_ps(a, b));
  }
#endif
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

}  // namespace dsmoe
