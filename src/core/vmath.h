// Vectorised expf from glibc's libmvec (<= 1 ulp; AVX-512 variants on this CPU). glibc declares
// the SIMD variants only under -ffast-math; declaring the attribute here lets GCC call them from
// `#pragma omp simd` loops while the rest of the code keeps strict IEEE semantics.
#pragma once
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

}  // namespace dsmoe
