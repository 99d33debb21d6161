// Token dispatch and combine (Megatron-Core's "TokenDispatcher"), dropless by default.
// The n*k (token, slot) assignments are counting-sorted by expert id, stable in token order, so the
// rows of each expert are one contiguous block of the permuted buffer: one GEMM per expert (or one
// grouped GEMM) over them, then a weighted combine back to token order. Backward mirrors it.
#pragma once
#include <cstdint>
#include <vector>

namespace dsmoe::ops {

struct DispatchPlan {
  int64_t n_tokens = 0, top_k = 0, n_experts = 0;
  std::vector<int64_t> offsets;      // [E+1]: expert e owns permuted rows [offsets[e], offsets[e+1])
  std::vector<int32_t> row_token;    // [rows]: token of permuted row r
  std::vector<int32_t> row_slot;     // [rows]: flat slot t*k + j of permuted row r
  std::vector<int32_t> slot_row;     // [n*k]: permuted row of each slot, -1 if the slot was dropped
  int64_t rows() const { return (int64_t)row_token.size(); }
};

// ids [n, k] expert ids; keep [n*k] (null = keep all) marks slots that survive capacity limits.
void build_dispatch(DispatchPlan& plan, const int32_t* ids, const uint8_t* keep, int64_t n, int64_t k, int64_t E);

// Expert capacity (GShard/Switch-era option): each expert keeps at most `capacity` slots, those with
// the highest affinity `scores` [n, k] (ties: lower token index first); keep [n*k] gets 1/0.
void capacity_keep_mask(uint8_t* keep, const int32_t* ids, const float* scores, int64_t n, int64_t k, int64_t E,
                        int64_t capacity);

// xs [rows, dim] = x[row_token[r]]
void dispatch_gather(float* xs, const float* x, const DispatchPlan& p, int64_t dim);
// dx[row_token[r]] += dxs[r]  (deterministic: each token sums its own slots in slot order)
void dispatch_gather_backward(float* dx, const float* dxs, const DispatchPlan& p, int64_t dim);

// y[t] = sum over kept slots j of gates[t*k+j] * ys[slot_row[t*k+j]]  (overwrites y [n, dim])
void combine_forward(float* y, const float* ys, const float* gates, const DispatchPlan& p, int64_t dim);
// dys[r] += gates[row_slot[r]] * dy[row_token[r]];  dgates[s] += <dy[token], ys[slot_row[s]]>
void combine_backward(float* dys, float* dgates, const float* dy, const float* ys, const float* gates,
                      const DispatchPlan& p, int64_t dim);

}  // namespace dsmoe::ops
