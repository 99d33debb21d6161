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
// callers use the fp32 path otherwise (oneDNN would otherwise emulate bf16, slowly), or refuse
// (training's precision bf16). The environment variable DSMOE_NO_AVX512_BF16 (any value) makes it
// false, as on a CPU without the instructions: how the tests reach those paths on this machine.
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

// C [M, N] = alpha op(A) [M, K] op(B) [K, N] + beta C: bf16 operands, fp32 accumulation and C,
// row-major with leading dimensions like dsmoe::gemm (core/gemm.h); op(X) = X^T when trans_x. The
// one bf16 product of dsmoe: prefill (below) and training's bf16 precision (ops/matmul.h) call it.
// alpha and beta are applied in fp32 after the product (oneDNN's output scale and sum post-op).
// Threads: oneDNN's OpenMP threads when called outside a parallel region; inside one (per-expert
// GEMMs) it runs on its thread. One oneDNN primitive per shape, layout and (alpha, beta), cached
// per thread. Requires bf16_gemm_available().
void bf16_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
               int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc);
// How many oneDNN matmul primitives this process has made so far (all threads; bf16_gemm and the
// packed products below): making one costs far more than a small product, so benchmarks report it.
int64_t bf16_gemm_primitives_made();
// y [n, R] (row stride ldy) = xb [n, K] . w [R, K]^T: bf16 operands, rows of both contiguous along K
// (the prefill product: bf16_gemm(false, true, n, R, K, 1, xb, K, w, K, 0, y, ldy)).
void bf16_gemm(float* y, int64_t ldy, const uint16_t* xb, const uint16_t* w, int64_t n, int64_t R, int64_t K);
// A cache of weights in the layout oneDNN's bf16 kernel reads (blocked, pairs of K interleaved):
// with row-major weights oneDNN re-packs B at EVERY product, which made bf16 training products
// slower than fp32 SGEMM on the expert shapes (bench/RESULTS.md "bf16 mixed-precision training").
// One pack per (weight, use): B = W^T (forward, trans_b) or B = W (the backward dX = dY W), made
// from the weight's bf16 copy at the first product that needs it. invalidate(), which the owner calls
// when the copies change (Model: once per optimizer step), marks every pack stale: the next product
// re-packs it into the memory it already has. clear() frees them. Thread-safe: per-expert products
// fill it from several threads.
class Bf16WeightPacks {
 public:
  Bf16WeightPacks();
  ~Bf16WeightPacks();
  Bf16WeightPacks(const Bf16WeightPacks&) = delete;
  Bf16WeightPacks& operator=(const Bf16WeightPacks&) = delete;
  void clear();
  void invalidate();
  // C [M, N] = alpha A [M, K] op(W) + beta C as bf16_gemm(false, trans_b, ...), with w the bf16
  // weight (leading dimension ldw) read through its pack. Same arithmetic as bf16_gemm (a product
  // of bf16 values, fp32 sums in oneDNN's order). Returns false, computing nothing, when oneDNN has
  // no packed kernel for the shape (the caller then runs bf16_gemm).
  bool gemm(bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A, int64_t lda,
            const uint16_t* w, int64_t ldw, float beta, float* C, int64_t ldc);
  int64_t packs() const;  // how many weights are packed with their current values

 private:
  struct Impl;
  Impl* impl_;
};

// B [K, N] (B = W^T when trans_b, W [N, K] with row stride ldw; else W [K, N]) written in oneDNN's
// BA16a64b2a layout, the one its bf16 kernels take on AVX512_BF16 and AMX: blocks of 32 K x 64 N
// (N blocks outermost), in a block 16 pairs of K by 64 N by the pair, K padded to 32 and N to 64
// with zeros; dst holds ceil(K / 32) ceil(N / 64) 2048 values. Bf16WeightPacks packs with it when
// oneDNN asks for that layout (tests/cpp/test_bf16_training.cpp checks it against oneDNN's reorder).
void pack_bf16_ba16a64b2a(uint16_t* dst, const uint16_t* w, int64_t ldw, bool trans_b, int64_t K, int64_t N);

// Which kernel bf16_gemm runs on this CPU (oneDNN's implementation name, e.g. brg:avx512_core_amx_bf16).
const char* bf16_gemm_implementation();
// Whether that kernel runs on AMX tiles. Without AMX (AVX512_BF16 only: Cooper Lake, Zen 4) oneDNN
// 2.6's bf16 matmul reaches about a third of the int8 VNNI kernel's speed on prefill products
// (bench/RESULTS.md "Compute modes on a CPU without AMX"), which decides compute "auto".
bool bf16_gemm_on_amx();

}  // namespace dsmoe::ops
