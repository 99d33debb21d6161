// Token dispatchers (Megatron-Core's MoE "TokenDispatcher"): how the rows of a MoE layer reach the
// experts that own them, and how the experts' outputs come back for the weighted combine. The MoE
// layer (training, model/moe_layer.h) and inference (model/moe_infer.h) run the same four steps
// whatever the dispatcher:
//   dispatch           x [n, H], routed ids [n, k]  ->  xs [rows, H]: the rows of this process's
//                      experts, grouped by local expert (DispatchState::expert_offsets)
//   (the grouped experts op on xs -> ys)
//   combine            ys  ->  out [n, H] = sum_j gate_j * y_j, in token order
//   combine_backward   d out  ->  d ys (and d gates)       (the backward of combine is a dispatch)
//   dispatch_backward  d xs   ->  d x                      (the backward of dispatch is a combine)
// LocalTokenDispatcher: one process holds every expert (a counting sort by expert, ops/dispatch.h).
// AllToAllTokenDispatcher: the routed experts are split into contiguous groups over the ranks of an
// expert-parallel communicator; per-rank counts go by all_to_all, rows by all_to_allv, and the
// received rows are regrouped by local expert (source rank order within an expert, which is the
// global token order when each rank holds a contiguous slice of the batch).
#pragma once
#include <cstdint>
#include <vector>

#include "dist/communicator.h"
#include "ops/dispatch.h"

namespace dsmoe {

// What dispatch leaves for combine and the backwards (reused across steps).
struct DispatchState {
  ops::DispatchPlan plan;                // this process's (token, slot) pairs sorted by global expert id
  std::vector<int64_t> expert_offsets;   // [local experts + 1]: rows of local expert j in xs
  // All-to-all only:
  std::vector<int64_t> send_counts;      // [ranks * local experts]: rows this rank sends per (rank, expert)
  std::vector<int64_t> recv_counts;      // [ranks * local experts]: rows it receives per (source, local expert)
  std::vector<int64_t> send_rows, recv_rows;  // [ranks] row totals
  std::vector<int32_t> expert_row_source;     // [rows]: expert-grouped row -> row of the received buffer
  std::vector<float> home, stage;        // [plan rows, H] at the token's rank; [received rows, H]
  std::vector<float> home_ys;            // [plan rows, H]: expert outputs back at the token's rank
};

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  // The experts this process runs: global ids [first_expert(), first_expert() + local_experts()).
  virtual int64_t first_expert() const = 0;
  virtual int64_t local_experts() const = 0;
  // ids [n, k] (global expert ids in [0, n_experts)); keep [n*k] or null (capacity drops).
  // xs is resized to the received rows.
  virtual void dispatch(std::vector<float>& xs, const float* x, const int32_t* ids, const uint8_t* keep, int64_t n,
                        int64_t k, int64_t n_experts, int64_t H, DispatchState& st) = 0;
  // out [n, H] (overwritten) from ys [rows, H] (rows in xs's order) and gates [n, k].
  virtual void combine(float* out, const float* ys, const float* gates, int64_t H, DispatchState& st) = 0;
  // dys [rows, H] += d out/d ys; dgates [n*k] += d out/d gates (dout [n, H]; ys as given to combine).
  virtual void combine_backward(float* dys, float* dgates, const float* dout, const float* ys, const float* gates,
                                int64_t H, DispatchState& st) = 0;
  // dx [n, H] += the rows of dxs [rows, H] summed back onto their tokens.
  virtual void dispatch_backward(float* dx, const float* dxs, int64_t H, DispatchState& st) = 0;
};

// Every expert in this process.
class LocalTokenDispatcher final : public TokenDispatcher {
 public:
  explicit LocalTokenDispatcher(int64_t n_experts) : n_experts_(n_experts) {}
  int64_t first_expert() const override { return 0; }
  int64_t local_experts() const override { return n_experts_; }
  void dispatch(std::vector<float>& xs, const float* x, const int32_t* ids, const uint8_t* keep, int64_t n, int64_t k,
                int64_t n_experts, int64_t H, DispatchState& st) override;
  void combine(float* out, const float* ys, const float* gates, int64_t H, DispatchState& st) override;
  void combine_backward(float* dys, float* dgates, const float* dout, const float* ys, const float* gates, int64_t H,
                        DispatchState& st) override;
  void dispatch_backward(float* dx, const float* dxs, int64_t H, DispatchState& st) override;

 private:
  int64_t n_experts_;
};

// Experts split over the ranks of `ep` (non-owning; must outlive the dispatcher): rank r holds the
// n_experts / ep.size() experts starting at r * n_experts / ep.size().
class AllToAllTokenDispatcher final : public TokenDispatcher {
 public:
  AllToAllTokenDispatcher(Communicator& ep, int64_t n_experts);
  int64_t first_expert() const override { return first_; }
  int64_t local_experts() const override { return local_; }
  void dispatch(std::vector<float>& xs, const float* x, const int32_t* ids, const uint8_t* keep, int64_t n, int64_t k,
                int64_t n_experts, int64_t H, DispatchState& st) override;
  void combine(float* out, const float* ys, const float* gates, int64_t H, DispatchState& st) override;
  void combine_backward(float* dys, float* dgates, const float* dout, const float* ys, const float* gates, int64_t H,
                        DispatchState& st) override;
  void dispatch_backward(float* dx, const float* dxs, int64_t H, DispatchState& st) override;

 private:
  // Rows of `home` [plan rows, H] to their experts' ranks -> `to` [rows, H] grouped by local expert.
  void to_experts(std::vector<float>& to, const float* home, int64_t H, DispatchState& st);
  // Rows `from` [rows, H] grouped by local expert back to their tokens' ranks -> st.home (plan order).
  void to_tokens(float* home, const float* from, int64_t H, DispatchState& st);
  Communicator& ep_;
  int64_t n_experts_, first_, local_;
};

}  // namespace dsmoe
