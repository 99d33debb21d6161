#include "model/dispatch_tally.h"

#include <algorithm>

#include "core/error.h"

namespace dsmoe {

void TallyingTokenDispatcher::dispatch(std::vector<float>& xs, const float* x, const int32_t* ids, const uint8_t* keep,
                                       int64_t n, int64_t k, int64_t n_experts, int64_t H, DispatchState& st) {
  inner_.dispatch(xs, x, ids, keep, n, k, n_experts, H, st);
  if (st.send_rows.empty()) {  // a local dispatcher: every row stays here
    sent_[0] += st.plan.rows();
    received_[0] += st.plan.rows();
    return;
  }
  DSMOE_ASSERT(st.send_rows.size() == sent_.size() && st.recv_rows.size() == received_.size(),
               "dispatch over {} ranks tallied as {}", st.send_rows.size(), sent_.size());
  for (size_t r = 0; r < sent_.size(); ++r) {
    sent_[r] += st.send_rows[r];
    received_[r] += st.recv_rows[r];
  }
}

void TallyingTokenDispatcher::reset() {
  std::fill(sent_.begin(), sent_.end(), 0);
  std::fill(received_.begin(), received_.end(), 0);
}

}  // namespace dsmoe
