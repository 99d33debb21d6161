// A TokenDispatcher that forwards every call to another and counts the rows its forward dispatches
// move: rows sent to and received from each rank of the dispatcher's group (the backward moves the
// same rows again, the other way). The one count of the expert-parallel traffic: metrics.jsonl's
// rows per rank pair, and the all-to-all bytes derived from them (train/trainer.cpp add_rank_metrics).
#pragma once
#include <cstdint>
#include <vector>

#include "model/token_dispatcher.h"

namespace dsmoe {

class TallyingTokenDispatcher final : public TokenDispatcher {
 public:
  // `inner` (non-owning) dispatches over `ranks` ranks (1 for a local dispatcher).
  TallyingTokenDispatcher(TokenDispatcher& inner, int64_t ranks)
      : inner_(inner), sent_((size_t)ranks, 0), received_((size_t)ranks, 0) {}
  int64_t first_expert() const override { return inner_.first_expert(); }
  int64_t local_experts() const override { return inner_.local_experts(); }
  void dispatch(std::vector<float>& xs, const float* x, const int32_t* ids, const uint8_t* keep, int64_t n, int64_t k,
                int64_t n_experts, int64_t H, DispatchState& st) override;
  void combine(float* out, const float* ys, const float* gates, int64_t H, DispatchState& st) override {
    inner_.combine(out, ys, gates, H, st);
  }
  void combine_backward(float* dys, float* dgates, const float* dout, const float* ys, const float* gates, int64_t H,
                        DispatchState& st) override {
    inner_.combine_backward(dys, dgates, dout, ys, gates, H, st);
  }
  void dispatch_backward(float* dx, const float* dxs, int64_t H, DispatchState& st) override {
    inner_.dispatch_backward(dx, dxs, H, st);
  }
  // Since the last reset: rows this rank sent to rank r of the group / received from it (itself included).
  const std::vector<int64_t>& sent() const { return sent_; }
  const std::vector<int64_t>& received() const { return received_; }
  void reset();

 private:
  TokenDispatcher& inner_;
  std::vector<int64_t> sent_, received_;
};

}  // namespace dsmoe
