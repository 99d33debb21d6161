// Weight storage for inference and the ONE linear kernel per storage type (y = x W^T, no bias).
//
// A WeightMat is a [rows, cols] = [out, in] matrix in one of four storages:
//   F32   float   [rows, cols]                      training's format; linear_forward (OpenBLAS SGEMM)
//   BF16  uint16  [rows, cols]                      the upper half of an fp32
//   Q8    int8    [rows, cols] + scales [rows, nb]  w = q * d, q in [-127, 127], d = absmax/127 of the block
//   Q4    uint8   [rows, nb*16] + scales [rows, nb] w = (nibble - 8) * d, q in [-7, 7], d = absmax/7
// Blocks are kBlock = 32 consecutive elements along the input dimension (llama.cpp's Q8_0/Q4_0
// block); nb = ceil(cols / 32), a short last block when cols is not a multiple of 32. The scale d of
// a block is stored as bf16 (fp32's range, so no block underflows as an f16 scale could; rounding
// the scale to nearest with 8 significant bits, relative error <= 2^-8, keeps absmax/d <=
// qmax * 256/255: 127.498 < 127.5 (Q8) and 7.03 < 7.5 (Q4), so no value ever needs clamping and
// |w - q d| <= d/2 holds for every element). Q4 packs a block in 16 bytes:
// byte j holds element j in its low nibble and element j + 16 in its high nibble (padding: 8 = zero).
//
// By default only the weights are quantized: activations stay fp32 and every product is accumulated
// in fp32, so the kernels compute exactly x . dequant(W) up to fp32 rounding (tested against fp64).
// A matrix may instead ask for a cheaper precision of the activations (Compute below): bf16 in
// products of more than kGemvMaxRows rows (decode's fp32 GEMV streams the weights at memory speed),
// int8 in every product (its decode GEMV is ops/int8_gemm.h int8_gemv: at one thread the fp32
// GEMV's conversions of q4 / q8 weights, not the memory, bound decode).
#pragma once
#include <cstdint>
#include <string>

namespace dsmoe::ops {

enum class WType : uint8_t { F32, BF16, Q8, Q4 };
const char* wtype_name(WType t);  // "f32", "bf16", "q8", "q4"
// "f32" | "bf16" | "q8" | "q4"; fails naming `what` otherwise.
WType parse_wtype(const std::string& s, const std::string& what);

constexpr int64_t kBlock = 32;

struct MatmulMode;  // ops/matmul.h

// Precision of the operands in a product of more than kGemvMaxRows rows (prefill, batched decode):
//   F32   exact reference: fp32 activations times the stored weights decoded to fp32 (tiles of W
//         dequantized for SGEMM)
//   BF16  activations rounded to bf16 (nearest even) and multiplied with AVX512_BF16 dot products,
//         fp32 accumulation (ops/bf16_gemm.h states the bound): bf16 weights as stored; q8 / q4
//         weights decoded (q * d in fp32, exact) and rounded to bf16 per tile, i.e. each weight
//         within 2^-9 relative of its stored value. Twice the arithmetic per instruction of fp32.
//         Without AVX512_BF16 at run time the product is the F32 one.
//   INT8  q8 / q4 weights only: activations quantized to int8 per block of 32 with an fp32 scale
//         (llama.cpp's q8_0 activations), integer dot products per block with AVX512-VNNI, each
//         block's sum scaled and accumulated in fp32 (ops/int8_gemm.h states the rule and the
//         bound). Four times the arithmetic per instruction of fp32. Requires int8_gemm_available()
//         (qlinear_forward fails otherwise: the choice is checked in infer/compute_mode.h).
//   MIXED q8 / q4 weights only: INT8 for a product of at most kMixedInt8MaxRows rows (a routed
//         expert's share of a prompt, a batched decode step), BF16 above (attention, shared experts
//         and the dense layer over a prompt), each where it measured faster (bench Infer_Product).
//         Requires both kernels (int8_gemm_available() and bf16_gemm_available()).
enum class Compute : uint8_t { F32, BF16, INT8, MIXED };
const char* compute_name(Compute c);  // "f32", "bf16", "int8", "mixed"

struct WeightMat {
  WType type = WType::F32;
  int64_t rows = 0, cols = 0;
  const void* data = nullptr;        // see the table above
  const uint16_t* scales = nullptr;  // bf16 [rows, blocks()] for Q8 / Q4, null otherwise
  Compute compute = Compute::F32;    // see Compute (ignored for F32 storage)
  // F32 storage only: the precision of its products, training's (ops/matmul.h MatmulMode, with the
  // parameters' bf16 copy); null = fp32. Non-owning.
  const MatmulMode* f32_mode = nullptr;

  int64_t blocks() const { return (cols + kBlock - 1) / kBlock; }
  int64_t row_bytes() const { return row_bytes_of(type, cols); }
  int64_t bytes() const { return rows * row_bytes() + (scales ? rows * blocks() * 2 : 0); }  // read per full pass
  // Rows [r0, r0 + n): e.g. one expert of a stacked [E * rows_per_expert, cols] matrix.
  WeightMat slice_rows(int64_t r0, int64_t n) const;

  static int64_t row_bytes_of(WType t, int64_t cols);
  static bool has_scales(WType t) { return t == WType::Q8 || t == WType::Q4; }
  static WeightMat f32(const float* w, int64_t rows, int64_t cols, const MatmulMode* mode = nullptr) {
    return {WType::F32, rows, cols, w, nullptr, Compute::F32, mode};
  }
};

// y [n, w.rows] = x [n, w.cols] * dequant(W)^T (overwritten). F32 is linear_forward (the training
// kernel, in w.f32_mode's precision). Other storages: n <= kGemvMaxRows: a GEMV that streams every weight byte once (AVX-512,
// rows split over the OpenMP threads; scalar fallback without AVX-512; with compute INT8 or MIXED the
// activations quantized and VNNI dot products, ops/int8_gemm.h int8_gemv); more rows: tiles of rows are
// dequantized to fp32 and multiplied with SGEMM, or with compute BF16 the bf16 kernel
// (ops/bf16_gemm.h) reads bf16 weights directly and q8 / q4 tiles decoded to bf16, or with compute
// INT8 the activations are quantized once and q8 / q4 tiles repacked for the int8 kernel (ops/int8_gemm.h).
constexpr int64_t kGemvMaxRows = 8;
// Compute MIXED: products of up to this many rows run INT8, larger ones BF16.
constexpr int64_t kMixedInt8MaxRows = 48;
void qlinear_forward(float* y, const float* x, const WeightMat& w, int64_t n);

// out [n, w.cols] = fp32 rows r0 .. r0+n-1 of W (the embedding lookup, the prefill tiles, tests).
void dequantize_rows(float* out, const WeightMat& w, int64_t r0, int64_t n);
// The same values rounded to bf16 as ops::round_to_bf16 does (compute BF16's tiles of Q8 / Q4; any type).
void dequantize_rows_bf16(uint16_t* out, const WeightMat& w, int64_t r0, int64_t n);

// Converts fp32 rows [rows, cols] to storage `t`: data gets rows * row_bytes_of(t, cols) bytes,
// scales rows * ceil(cols/32) bf16 values (Q8 / Q4; ignored otherwise). BF16 rounds to nearest even.
void quantize_rows(WType t, const float* src, int64_t rows, int64_t cols, void* data, uint16_t* scales);

}  // namespace dsmoe::ops
