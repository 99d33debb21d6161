// RMSNorm: y = w * (x * rstd), rstd = 1/sqrt(mean(x^2) + eps). Row statistics are accumulated in
// double (a more accurate rendering of the fp32 reference, and the fp32 result is rounded once).
#include "ops/rmsnorm.h"

#include <algorithm>
#include <cmath>

namespace dsmoe::ops {

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t n, int64_t dim, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x + i * dim;
    float* yr = y + i * dim;
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < dim; ++j) ss += (double)xr[j] * (double)xr[j];
    const float r = (float)(1.0 / std::sqrt(ss / (double)dim + (double)eps));
    if (rstd) rstd[i] = r;
#pragma omp simd
    for (int64_t j = 0; j < dim; ++j) yr[j] = w[j] * (xr[j] * r);
  }
}

void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t n, int64_t dim) {
  // y_j = w_j x_j r, r = (mean(x^2) + eps)^(-1/2), dr/dx_j = -r^3 x_j / dim:
  //   dx_j = r w_j dy_j - x_j r^3 / dim * sum_k dy_k w_k x_k
  //   dw_j = sum_rows dy_j x_j r
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float* xr = x + i * dim;
      const float* dyr = dy + i * dim;
      float* dxr = dx + i * dim;
      const float r = rstd[i];
      double c = 0;
#pragma omp simd reduction(+ : c)
      for (int64_t j = 0; j < dim; ++j) c += (double)(dyr[j] * w[j]) * (double)xr[j];
      const double rd = r;
      const float coef = (float)(rd * rd * rd * c / (double)dim);
#pragma omp simd
      for (int64_t j = 0; j < dim; ++j) dxr[j] += r * w[j] * dyr[j] - xr[j] * coef;
    }
  }
  if (dw) {
    // Column blocks in parallel, each summing over all rows in row order: deterministic and
    // independent of the thread count. Accumulated in double.
    constexpr int64_t BW = 64;
    const int64_t nblk = (dim + BW - 1) / BW;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t j0 = b * BW, len = std::min(BW, dim - j0);
      double acc[BW] = {};
      for (int64_t i = 0; i < n; ++i) {
        const float* xr = x + i * dim + j0;
        const float* dyr = dy + i * dim + j0;
        const float r = rstd[i];
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) acc[j] += (double)(dyr[j] * (xr[j] * r));
      }
      for (int64_t j = 0; j < len; ++j) dw[j0 + j] += (float)acc[j];
    }
  }
}

}  // namespace dsmoe::ops
