#include "model/token_dispatcher.h"

#include "core/buffers.h"
#include "core/checked.h"
#include "core/error.h"

namespace dsmoe {

// --- LocalTokenDispatcher: the plan's rows are the experts' rows ---

void LocalTokenDispatcher::dispatch(std::vector<float>& xs, const float* x, const int32_t* ids, const uint8_t* keep,
                                    int64_t n, int64_t k, int64_t n_experts, int64_t H, DispatchState& st) {
  DSMOE_ASSERT(n_experts == n_experts_, "dispatch of {} experts by a dispatcher of {}", n_experts, n_experts_);
  ops::build_dispatch(st.plan, ids, keep, n, k, n_experts);
  fit(xs, st.plan.rows() * H);
  ops::dispatch_gather(xs.data(), x, st.plan, H);
  st.expert_offsets = st.plan.offsets;
}

void LocalTokenDispatcher::combine(float* out, const float* ys, const float* gates, int64_t H, DispatchState& st) {
  ops::combine_forward(out, ys, gates, st.plan, H);
}

void LocalTokenDispatcher::combine_backward(float* dys, float* dgates, const float* dout, const float* ys,
                                            const float* gates, int64_t H, DispatchState& st) {
  ops::combine_backward(dys, dgates, dout, ys, gates, st.plan, H);
}

void LocalTokenDispatcher::dispatch_backward(float* dx, const float* dxs, int64_t H, DispatchState& st) {
  ops::dispatch_gather_backward(dx, dxs, st.plan, H);
}

// --- AllToAllTokenDispatcher ---

AllToAllTokenDispatcher::AllToAllTokenDispatcher(Communicator& ep, int64_t n_experts)
    : ep_(ep), n_experts_(n_experts) {
  if (n_experts % ep.size() != 0)
    fail("expert parallelism: {} routed experts cannot be split evenly over an expert-parallel size of {}", n_experts,
         ep.size());
  local_ = n_experts / ep.size();
  first_ = ep.rank() * local_;
}

void AllToAllTokenDispatcher::dispatch(std::vector<float>& xs, const float* x, const int32_t* ids,
                                       const uint8_t* keep, int64_t n, int64_t k, int64_t n_experts, int64_t H,
                                       DispatchState& st) {
  DSMOE_ASSERT(n_experts == n_experts_, "dispatch of {} experts by a dispatcher of {}", n_experts, n_experts_);
  const int64_t R = ep_.size(), L = local_;
  // Sorted by global expert id, the plan's rows are already grouped by destination rank (each rank
  // owns a contiguous range of experts).
  ops::build_dispatch(st.plan, ids, keep, n, k, n_experts);
  st.send_counts.assign((size_t)(R * L), 0);
  for (int64_t e = 0; e < n_experts; ++e) st.send_counts[(size_t)e] = st.plan.offsets[e + 1] - st.plan.offsets[e];
  st.recv_counts.assign((size_t)(R * L), 0);
  ep_.all_to_all(st.send_counts.data(), st.recv_counts.data(), L);
  st.send_rows.assign((size_t)R, 0);
  st.recv_rows.assign((size_t)R, 0);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < L; ++j) {
      st.send_rows[(size_t)r] += st.send_counts[(size_t)(r * L + j)];
      st.recv_rows[(size_t)r] += st.recv_counts[(size_t)(r * L + j)];
    }
  // The received buffer is source-major (then local expert); the experts want expert-major rows
  // (then source rank, then the source's order).
  std::vector<int64_t> block_start((size_t)(R * L));
  int64_t at = 0;
  for (int64_t s = 0; s < R; ++s)
    for (int64_t j = 0; j < L; ++j) {
      block_start[(size_t)(s * L + j)] = at;
      at += st.recv_counts[(size_t)(s * L + j)];
    }
  const int64_t rows = at;
  DSMOE_ASSERT(rows <= INT32_MAX, "{} rows received by one rank", rows);
  st.expert_row_source.resize((size_t)rows);
  st.expert_offsets.assign((size_t)L + 1, 0);
  int64_t r = 0;
  for (int64_t j = 0; j < L; ++j) {
    for (int64_t s = 0; s < R; ++s)
      for (int64_t i = 0; i < st.recv_counts[(size_t)(s * L + j)]; ++i)
        st.expert_row_source[(size_t)r++] = (int32_t)(block_start[(size_t)(s * L + j)] + i);
    st.expert_offsets[(size_t)j + 1] = r;
  }
  fit(st.home, st.plan.rows() * H);
  ops::dispatch_gather(st.home.data(), x, st.plan, H);
  to_experts(xs, st.home.data(), H, st);
}

void AllToAllTokenDispatcher::to_experts(std::vector<float>& to, const float* home, int64_t H, DispatchState& st) {
  const int64_t R = ep_.size(), rows = (int64_t)st.expert_row_source.size();
  std::vector<int64_t> sc((size_t)R), rc((size_t)R);
  for (int64_t q = 0; q < R; ++q) {
    sc[(size_t)q] = checked_mul(st.send_rows[(size_t)q], H, "all-to-all floats");
    rc[(size_t)q] = checked_mul(st.recv_rows[(size_t)q], H, "all-to-all floats");
  }
  fit(st.stage, rows * H);
  ep_.all_to_allv(home, sc.data(), st.stage.data(), rc.data());
  fit(to, rows * H);
  const float* stage = st.stage.data();
  float* out = to.data();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = stage + (int64_t)st.expert_row_source[(size_t)r] * H;
    std::copy(src, src + H, out + r * H);
  }
}

void AllToAllTokenDispatcher::to_tokens(float* home, const float* from, int64_t H, DispatchState& st) {
  const int64_t R = ep_.size(), rows = (int64_t)st.expert_row_source.size();
  fit(st.stage, rows * H);
  float* stage = st.stage.data();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = from + r * H;
    std::copy(src, src + H, stage + (int64_t)st.expert_row_source[(size_t)r] * H);
  }
  std::vector<int64_t> sc((size_t)R), rc((size_t)R);
  for (int64_t q = 0; q < R; ++q) {
    sc[(size_t)q] = st.recv_rows[(size_t)q] * H;  // sizes checked by to_experts
    rc[(size_t)q] = st.send_rows[(size_t)q] * H;
  }
  ep_.all_to_allv(stage, sc.data(), home, rc.data());
}

void AllToAllTokenDispatcher::combine(float* out, const float* ys, const float* gates, int64_t H, DispatchState& st) {
  fit(st.home_ys, st.plan.rows() * H);
  to_tokens(st.home_ys.data(), ys, H, st);
  ops::combine_forward(out, st.home_ys.data(), gates, st.plan, H);
}

void AllToAllTokenDispatcher::combine_backward(float* dys, float* dgates, const float* dout, const float*,
                                               const float* gates, int64_t H, DispatchState& st) {
  // d ys at the tokens' ranks (plan order, against the outputs that came back), then to the experts.
  zero(st.home, st.plan.rows() * H);
  ops::combine_backward(st.home.data(), dgates, dout, st.home_ys.data(), gates, st.plan, H);
  std::vector<float> at_experts;
  to_experts(at_experts, st.home.data(), H, st);
  const int64_t n = (int64_t)at_experts.size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dys[i] += at_experts[i];
}

void AllToAllTokenDispatcher::dispatch_backward(float* dx, const float* dxs, int64_t H, DispatchState& st) {
  fit(st.home, st.plan.rows() * H);
  to_tokens(st.home.data(), dxs, H, st);
  ops::dispatch_gather_backward(dx, st.home.data(), st.plan, H);
}

}  // namespace dsmoe
