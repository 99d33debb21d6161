// The precision of training's products (training.precision) and the one GEMM entry point of the
// training ops (linear, experts) that applies it: every projection of the model goes through
// matmul(), so the precision is chosen here and nowhere else.
//
//   F32   the inputs as they are: dsmoe::gemm (OpenBLAS SGEMM), the exact reference.
//   BF16  mixed precision: both inputs of every product rounded to bf16 (nearest even, as
//         ops::round_to_bf16), exact bf16 x bf16 products, fp32 accumulation (ops::bf16_gemm, whose
//         header states the bound). Forward y = x W^T and both backward products dX = dY W and
//         dW = dY^T X alike. Master weights, gradients and the optimizer's moments stay fp32: only
//         what goes into a product is rounded.
// The attention score and value products (ops/attention) are not projections and stay fp32: they
// are a small part of the FLOPs at the model shapes trained here (12 L H T per token against
// 6 x parameters) and feed the softmax, where bf16 scores would cost the most accuracy.
#pragma once
#include <cstdint>

#include "ops/precision.h"

namespace dsmoe::ops {

class Bf16WeightPacks;  // ops/bf16_gemm.h

// How one product treats its inputs. With BF16, an operand that lies inside the parameter buffer
// [params, params + count) (a weight) is read from params_bf16, the same buffer rounded to bf16
// once after each optimizer step (Model keeps it, model/model.h); any other operand (activations,
// gradients of activations) is rounded at each call into a per-thread scratch. `packs`, when set,
// keeps each weight's copy also in the layout oneDNN's kernel reads (made at its first product
// after the copy was refreshed; the owner clears it then).
struct MatmulMode {
  Precision precision = Precision::F32;
  const float* params = nullptr;
  const uint16_t* params_bf16 = nullptr;
  int64_t count = 0;
  Bf16WeightPacks* packs = nullptr;
};

// C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C, row-major with leading dimensions, exactly as
// dsmoe::gemm (core/gemm.h), in mode's precision. BF16 requires bf16_gemm_available() (the trainer
// refuses the precision otherwise). Threads as dsmoe::gemm: split over the OpenMP threads outside a
// parallel region, on the calling thread inside one.
void matmul(const MatmulMode& mode, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace dsmoe::ops
