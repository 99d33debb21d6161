// y = x W^T and its backward: three GEMMs (OpenBLAS), no loops of our own.
#include "ops/linear.h"

#include "core/gemm.h"

namespace dsmoe::ops {

void linear_forward(float* y, const float* x, const float* w, int64_t n, int64_t in, int64_t out) {
  // y [n, out] = x [n, in] * w^T [in, out]
  gemm(false, true, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
}

void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n,
                     int64_t in, int64_t out, float alpha) {
  // dx [n, in] += alpha dy [n, out] * w [out, in]
  if (dx) gemm(false, false, n, in, out, alpha, dy, out, w, in, 1.0f, dx, in);
  // dw [out, in] += alpha dy^T [out, n] * x [n, in]
  if (dw) gemm(true, false, out, in, n, alpha, dy, out, x, in, 1.0f, dw, in);
}

}  // namespace dsmoe::ops
