// The bf16 compute path of prefill: y = bf16(x) . W^T with bf16 weights, fp32 accumulation.
//
// The activations are rounded to bf16 (nearest even) once per call; the product is oneDNN's bf16
// matmul (Debian libdnnl), which picks its kernel for the CPU at run time: AMX tiles
// (brg:avx512_core_amx_bf16) where the CPU has them, AVX512_BF16 dot products otherwise. Measured
// against a hand-written AVX512_BF16 kernel on this project's machine (AMX): 2.2-7.5x faster on the
// 16B's shapes (bench/RESULTS.md "Compute modes"), so there is no hand-written one.
// The products of two bf16 values are exact in fp32; the sums are fp32 in an order oneDNN chooses,
// so against the exact product of the ROUNDED activations |err| <= (K + 2) * 2^-24 * sum |x_b w|
// per output (denormal inputs and outputs may be flushed to zero: at most 2^-126 per term).
// Against fp32 activations the rounding adds at most 2^-9 * sum |x w| (bf16 keeps 8 significant
// bits). That is the cost the user accepts with `--compute bf16`; the fp32 path stays the exact reference.
#pragma once
#include <cstdint>
#include <cstring>

#include "core/bf16.h"

namespace dsmoe::ops {

// True when the CPU reports AVX512_BF16 (and this -march=native build has the vector rounding);
// callers use the fp32 path otherwise (oneDNN would otherwise emulate bf16, slowly).
bool bf16_gemm_available();

// out[i] = x[i] rounded to bf16: nearest even, NaN stays NaN, and denormal inputs become a zero of
// their sign (what the hardware conversion does; vdpbf16ps would treat them as zero anyway), so the
// vector body and the scalar tail agree.
void round_to_bf16(uint16_t* out, const float* x, int64_t count);
// One value by that rule (the scalar tails of the vector conversions).
inline uint16_t round_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return (u & 0x7f800000) == 0 ? (uint16_t)((u >> 16) & 0x8000) : f32_to_bf16(x);
}

// y [n, R] (row stride ldy) = xb [n, K] . w [R, K]^T: bf16 operands, rows of both contiguous along K.
// Threads: oneDNN's OpenMP threads when called outside a parallel region; inside one (per-expert
// GEMMs) it runs on its thread. One oneDNN primitive per shape, cached per thread.
// Requires bf16_gemm_available().
void bf16_gemm(float* y, int64_t ldy, const uint16_t* xb, const uint16_t* w, int64_t n, int64_t R, int64_t K);
// Which kernel bf16_gemm runs on this CPU (oneDNN's implementation name, e.g. brg:avx512_core_amx_bf16).
const char* bf16_gemm_implementation();

}  // namespace dsmoe::ops
