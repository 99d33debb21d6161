// The int8 compute path of prefill (--compute int8): q8 / q4 weights times activations quantized
// per block of 32, integer dot products per block, fp32 accumulation of the scaled block sums, as
// llama.cpp multiplies its Q8_0 / Q4_0 weights.
//
// Activations (quantize_activations_int8): each row is cut into blocks of kBlock = 32 along K (a
// short last block padded with zeros); per block amax = max |x|, d_x = fl(amax / 127) (fp32
// division, kept in fp32), and q = the integer nearest to fl(x * fl(127 / amax)) (fp32 product,
// ties to even: the vector conversion's rounding), so |q| <= 127 (amax * fl(127/amax) < 127.5).
// A block whose 127 / amax is not finite (amax = 0, or below ~3.7e-37) is all zeros with d_x = 0;
// a block holding a NaN or an infinity gets d_x = NaN (so the outputs it touches are NaN, reported
// downstream like any NaN), q = 0. This is llama.cpp's q8_0 rule except that it rounds d_x to fp16
// and rounds x * (1/d) half away from zero; here d_x keeps fp32's 24 bits.
//
// Weights: q8 as stored (q_w in [-127, 127]); q4 as its nibbles minus 8. Both are fed to
// vpdpbusd (u8 x s8 -> int32, four products per lane) as unsigned bytes q_w + off (off = 128 for
// q8, 8 for q4: the q4 nibble itself), and the block sum is started at -off * sum(q_x), so each
// block's int32 is exactly S_b = sum_k q_w q_x (|S_b| <= 32 * 127 * 127: no overflow). A tile of
// up to 128 weight rows is repacked per call (16 rows x 4 bytes per 64-byte vector), as the other
// prefill paths decode theirs.
//
// Arithmetic: y = sum over blocks b of fl(fl(S_b * d_x,b) * d_w,b + acc), S_b exact in fp32
// (< 2^24), one rounding in the scaling and one per accumulation (fma), so against the exact
// sum over blocks of S_b d_x,b d_w,b:
//   |err| <= gamma(nb + 1) * sum_b |S_b d_x,b d_w,b|,  gamma(m) = m u / (1 - m u), u = 2^-24,
// nb = ceil(K / 32) (plus 2^-149 per block if a term is denormal). The quantization of x is the
// cost the user accepts with --compute int8 (relative error of each activation up to 1/254 of its
// block's amax); the fp32 path stays the exact reference.
//
// Why not oneDNN: Debian's oneDNN 2.6 int8 matmul applies its scales (set_scales / output scales:
// per tensor or per output channel) after the int32 sum over the whole K; it has no per-group
// scales along K for weights and no per-row-block dynamic scales for the source, so it cannot
// compute this product. Emulating it with one K = 32 matmul per block writes an int32 [n, R] result
// per block (K/32 times the output traffic): far slower than the products themselves.
//
// Not AMX (amx_int8): a per-block scale means leaving the tiles every 32 (of the 64 possible) K
// values to scale and add 16 x 16 int32 results in AVX-512; not attempted yet.
#pragma once
#include <cstdint>
#include <vector>

#include "ops/qlinear.h"

namespace dsmoe::ops {

// True when the CPU reports AVX512-VNNI (and this -march=native build has it). --compute int8
// refuses to run otherwise (infer/compute_mode.h), and qlinear never calls the kernel then.
bool int8_gemm_available();
// What runs, for stderr (e.g. "dsmoe AVX512-VNNI vpdpbusd, 6 x 32 register tile").
const char* int8_gemm_implementation();

// x [n, K] fp32 quantized by the rule above.
struct Int8Activations {
  int64_t n = 0, blocks = 0;  // rows; blocks per row (K padded to blocks * 32 with zeros)
  std::vector<int8_t> q;      // [n, blocks * 32]
  std::vector<float> d;       // [n, blocks]
  std::vector<int32_t> sum;   // [n, blocks]: sum of the block's q (the weights' offset correction)
};
void quantize_activations_int8(Int8Activations& out, const float* x, int64_t n, int64_t K);

// Rows [r0, r0 + nr) of a q8 / q4 matrix in the kernel's layout: groups of 16 rows (the last one
// padded with zero weights), per group and block 8 vectors of 64 bytes (vector t: for each of the
// 16 rows, its bytes 4t .. 4t+3 of the block, as q_w + off) and 16 fp32 scales.
struct Int8WeightTile {
  int64_t rows = 0, blocks = 0;
  int32_t offset = 0;        // off above
  std::vector<uint8_t> q;    // [groups, blocks, 8, 16, 4]
  std::vector<float> d;      // [groups, blocks, 16]
};
void pack_weights_int8(Int8WeightTile& out, const WeightMat& w, int64_t r0, int64_t nr);

// y [x.n, w.rows] (row stride ldy) = the product above; x.blocks must equal w.blocks. Runs on the
// calling thread (qlinear_forward gives each thread its tiles). Requires int8_gemm_available().
void int8_gemm(float* y, int64_t ldy, const Int8Activations& x, const Int8WeightTile& w);

// The same product for a few activation rows (decode: x.n <= kGemvMaxRows), the weights streamed
// as stored (no repacking: a decode step reads each weight once), rows of W split over the OpenMP
// threads; y [x.n, w.rows] with row stride ldy. Each block's integer sum S_b is exact as above; the
// scaling differs: s_b = fl(d_x,b * d_w,b), and the 8 four-product partial sums of a block (exact
// int32) are scaled and accumulated in 16 fp32 lanes (even blocks in lanes 0-7, odd ones in 8-15),
// then the lanes are added. So against the exact sum_b S_b d_x,b d_w,b:
//   |err| <= gamma(nb / 2 + 6) * sum_b sum_k |q_w,k q_x,k| d_x,b |d_w,b|
// (1 for s_b, nb/2 per lane's chain, 4 for the lane reduction, 1 for a last odd block's term).
// Row i's result does not depend on the other rows of x (batching never changes a sequence's
// output). Requires int8_gemm_available().
void int8_gemv(float* y, int64_t ldy, const Int8Activations& x, const WeightMat& w);

}  // namespace dsmoe::ops
