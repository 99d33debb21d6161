#include "ops/experts.h"

#include <algorithm>

#include "ops/swiglu.h"

namespace dsmoe::ops {

void swiglu_mlp_forward(float* y, float* gu, float* act, const float* x, const WeightMat& w_gu,
                        const WeightMat& w_down, int64_t n) {
  const int64_t I = w_down.cols;
  qlinear_forward(gu, x, w_gu, n);  // gu [n, 2I] = x [n, H] @ w_gu^T
  swiglu_forward(act, gu, n, I);
  qlinear_forward(y, act, w_down, n);  // y [n, H] = act [n, I] @ w_down^T
}

// Schedule: with several experts (the fine-grained regime: many small GEMMs) the experts run in
// parallel, one thread each (OpenBLAS runs single-threaded inside an OpenMP region); a single
// expert (dense FFN, shared experts) gets all threads inside its GEMMs. Every expert writes only its
// own rows and weight slices, so results do not depend on which thread ran it (deterministic).
// The single expert is called OUTSIDE any parallel region, not from an `omp parallel if (false)`:
// inside that inactive region OpenBLAS still goes parallel and libgomp starts a fresh nested team
// for every GEMM (strace: one clone3 per call); the shared experts were 12.3% of the default
// training step that way, 5.2% now (bench/RESULTS.md).
template <class Body>
void for_each_expert(int64_t n_experts, Body&& body) {
  if (n_experts == 1) return body(0);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t e = 0; e < n_experts; ++e) body(e);
}

void experts_forward(float* ys, float* gu, float* act, const float* xs, const WeightMat& w_gu, const WeightMat& w_down,
                     const int64_t* offsets, int64_t n_experts) {
  const int64_t H = w_gu.cols, I = w_down.cols;
  for_each_expert(n_experts, [&](int64_t e) {
    const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    if (m <= 0) return;
    swiglu_mlp_forward(ys + r0 * H, gu + r0 * 2 * I, act + r0 * I, xs + r0 * H, w_gu.slice_rows(e * 2 * I, 2 * I),
                       w_down.slice_rows(e * H, H), m);
  });
}

void experts_forward(float* ys, float* gu, float* act, const float* xs, const float* w_gu, const float* w_down,
                     const int64_t* offsets, const ExpertsShape& s, const MatmulMode& mode) {
  const int64_t E = s.n_experts, H = s.hidden, I = s.inter;
  experts_forward(ys, gu, act, xs, WeightMat::f32(w_gu, E * 2 * I, H, &mode), WeightMat::f32(w_down, E * H, I, &mode),
                  offsets, E);
}

void experts_backward(float* dxs, float* dw_gu, float* dw_down, const float* dys, const float* xs,
                      const float* gu, const float* act, const float* w_gu, const float* w_down,
                      const int64_t* offsets, const ExpertsShape& s, float* scratch, const MatmulMode& mode) {
  const int64_t H = s.hidden, I = s.inter;
  const int64_t rows = offsets[s.n_experts] - offsets[0];
  // scratch: dact [rows, I] then dgu [rows, 2I], indexed by row - offsets[0].
  float* dact = scratch;
  float* dgu = scratch + rows * I;
  for_each_expert(s.n_experts, [&](int64_t e) {
    const int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    if (m <= 0) return;
    const int64_t q = r0 - offsets[0];
    const float* wg = w_gu + e * 2 * I * H;
    const float* wd = w_down + e * H * I;
    const float* dys_e = dys + r0 * H;
    const float* xs_e = xs + r0 * H;
    float* dact_e = dact + q * I;
    float* dgu_e = dgu + q * 2 * I;
    // dw_down[e] [H, I] += dys_e^T [H, m] @ act_e [m, I]
    if (dw_down) matmul(mode, true, false, H, I, m, 1.0f, dys_e, H, act + r0 * I, I, 1.0f, dw_down + e * H * I, I);
    if (!dxs && !dw_gu) return;
    // dact_e [m, I] = dys_e [m, H] @ w_down[e] [H, I]
    matmul(mode, false, false, m, I, H, 1.0f, dys_e, H, wd, I, 0.0f, dact_e, I);
    swiglu_backward(dgu_e, dact_e, gu + r0 * 2 * I, m, I);  // overwrites dgu_e
    // dw_gu[e] [2I, H] += dgu_e^T [2I, m] @ xs_e [m, H]
    if (dw_gu) matmul(mode, true, false, 2 * I, H, m, 1.0f, dgu_e, 2 * I, xs_e, H, 1.0f, dw_gu + e * 2 * I * H, H);
    // dxs_e [m, H] += dgu_e [m, 2I] @ w_gu[e] [2I, H]
    if (dxs) matmul(mode, false, false, m, H, 2 * I, 1.0f, dgu_e, 2 * I, wg, H, 1.0f, dxs + r0 * H, H);
  });
}

}  // namespace dsmoe::ops
