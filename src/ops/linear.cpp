// y = x W^T and its backward: three GEMMs (ops/matmul: OpenBLAS, or bf16 inputs), no loops of our own.
#include "ops/linear.h"

namespace dsmoe::ops {

void linear_forward(float* y, const float* x, const float* w, int64_t n, int64_t in, int64_t out,
                    const MatmulMode& mode) {
  // y [n, out] = x [n, in] * w^T [in, out]
  matmul(mode, false, true, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
}

void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n,
                     int64_t in, int64_t out, float alpha, const MatmulMode& mode) {
  // dx [n, in] += alpha dy [n, out] * w [out, in]
  if (dx) matmul(mode, false, false, n, in, out, alpha, dy, out, w, in, 1.0f, dx, in);
  // dw [out, in] += alpha dy^T [out, n] * x [n, in]
  if (dw) matmul(mode, true, false, out, in, n, alpha, dy, out, x, in, 1.0f, dw, in);
}

}  // namespace dsmoe::ops
