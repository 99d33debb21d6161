#include "ops/matmul.h"

#include <omp.h>

#include <vector>

#include "core/error.h"
#include "core/gemm.h"
#include "ops/bf16_gemm.h"

namespace dsmoe::ops {

const char* precision_name(Precision p) { return p == Precision::BF16 ? "bf16" : "f32"; }

Precision parse_precision(const std::string& s, const std::string& what) {
  if (s == "f32") return Precision::F32;
  if (s == "bf16") return Precision::BF16;
  fail("{} must be \"f32\" or \"bf16\", got \"{}\"", what, s);
}

namespace {

bool is_param(const MatmulMode& mode, const float* X) {
  return mode.params && X >= mode.params && X < mode.params + mode.count;
}

// The bf16 form of a stored operand X [rows, cols] (leading dimension ld): the mirror's slice when
// X is a parameter, else X rounded into `scratch` (compact: the returned ld is cols).
const uint16_t* bf16_operand(const MatmulMode& mode, const float* X, int64_t rows, int64_t cols, int64_t& ld,
                             std::vector<uint16_t>& scratch) {
  if (is_param(mode, X)) {
    DSMOE_ASSERT(X + (rows - 1) * ld + cols <= mode.params + mode.count, "operand overruns the parameter buffer");
    return mode.params_bf16 + (X - mode.params);
  }
  if ((int64_t)scratch.size() < rows * cols) scratch.resize((size_t)(rows * cols));
  uint16_t* out = scratch.data();
  const int64_t src_ld = ld;
  // A memory-bound pass: split over the threads when called outside a parallel region.
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && rows * cols > (int64_t(1) << 16))
  for (int64_t r = 0; r < rows; ++r) round_to_bf16(out + r * cols, X + r * src_ld, cols);
  ld = cols;
  return out;
}

}  // namespace

void matmul(const MatmulMode& mode, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (mode.precision == Precision::F32) return gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  if (M == 0 || N == 0) return;
  // Per thread and kept across calls (megabytes: a fresh one per call would page-fault every time).
  thread_local std::vector<uint16_t> a_scratch, b_scratch;
  const uint16_t* a = bf16_operand(mode, A, trans_a ? K : M, trans_a ? M : K, lda, a_scratch);
  // A weight as B (y = x W^T, dX = dY W) is read through its pack when the mode keeps them.
  if (mode.packs && !trans_a && is_param(mode, B) &&
      mode.packs->gemm(trans_b, M, N, K, alpha, a, lda, mode.params_bf16 + (B - mode.params), ldb, beta, C, ldc))
    return;
  const uint16_t* b = bf16_operand(mode, B, trans_b ? N : K, trans_b ? K : N, ldb, b_scratch);
  bf16_gemm(trans_a, trans_b, M, N, K, alpha, a, lda, b, ldb, beta, C, ldc);
}

}  // namespace dsmoe::ops
