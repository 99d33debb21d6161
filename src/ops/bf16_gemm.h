// The bf16 compute path of prefill: y = bf16(x) . W^T with bf16 weights, fp32 accumulation.
//
// The activations are rounded to bf16 (nearest even) once per call; the products of two bf16 values
// are exact in fp32 and AVX512_BF16's vdpbf16ps adds them in pairs into fp32 accumulators (one per
// 32-element slice of a dot product, reduced at the end). Against the exact product of the ROUNDED
// activations the error is fp32 accumulation error only: |err| <= (K/32 + 6) * 2^-24 * sum |x_b w|
// per output (a sequential sum of K/32 pair-sums per lane, then a 16-lane tree; vdpbf16ps flushes
// denormal inputs and outputs to zero, which changes a sum by at most 2^-126 per term). Against
// fp32 activations the rounding adds at most 2^-9 * sum |x w| (bf16 keeps 8 significant bits).
// That is the cost the user accepts with `--compute bf16`; the fp32 path stays the exact reference.
//
// Twice the multiply-adds per instruction of an fp32 FMA (32 vs 16 per 512-bit instruction), and
// half the bytes of activations to move; the weights are read as stored (no dequantization).
#pragma once
#include <cstdint>

namespace dsmoe::ops {

// True when this binary was built with AVX512_BF16 (it is built with -march=native) and the CPU
// it runs on reports it; callers fall back to the fp32 path otherwise.
bool bf16_gemm_available();

// out[i] = x[i] rounded to bf16: nearest even, NaN stays NaN, and denormal inputs become a zero of
// their sign (what the hardware conversion does; vdpbf16ps would treat them as zero anyway), so the
// vector body and the scalar tail agree.
void round_to_bf16(uint16_t* out, const float* x, int64_t count);

// y [n, R] (row stride ldy) = xb [n, K] . w [R, K]^T: bf16 operands, rows of both contiguous along K.
// Threads: splits the rows of w over the OpenMP threads when called outside a parallel region
// (one thread's share streams once from memory); inside one (per-expert GEMMs) it runs on its thread.
// Requires bf16_gemm_available().
void bf16_gemm(float* y, int64_t ldy, const uint16_t* xb, const uint16_t* w, int64_t n, int64_t R, int64_t K);

}  // namespace dsmoe::ops
