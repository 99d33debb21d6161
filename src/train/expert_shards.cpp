#include "train/expert_shards.h"

#include <algorithm>
#include <vector>

#include "core/error.h"

namespace dsmoe {

static void check_pairs(const ParamLayout& whole, const ParamLayout& shard) {
  DSMOE_ASSERT(whole.tensors().size() == shard.tensors().size(), "layouts of {} and {} tensors",
               whole.tensors().size(), shard.tensors().size());
}

void take_expert_shard(const ParamLayout& whole, const float* full, const ParamLayout& shard, float* part) {
  check_pairs(whole, shard);
  const int64_t first = shard.shard().all() ? 0 : shard.shard().first;
  for (size_t i = 0; i < whole.tensors().size(); ++i) {
    const ParamTensor &w = whole.tensors()[i], &s = shard.tensors()[i];
    const int64_t skip = w.routed_experts ? first * (w.numel / w.shape[0]) : 0;
    DSMOE_ASSERT(skip + s.numel <= w.numel, "tensor {}: shard past the whole", w.name);
    std::copy(full + w.offset + skip, full + w.offset + skip + s.numel, part + s.offset);
  }
}

void gather_expert_shards(const ParamLayout& shard, const float* part, const ParamLayout& whole, float* full,
                          Communicator& experts) {
  check_pairs(whole, shard);
  const int R = experts.size();
  // Each rank sends its expert tensors, concatenated in tensor order, to rank 0 (all_to_allv with
  // nothing for the other ranks: the interface's one variable-size exchange).
  std::vector<float> send;
  for (const auto& t : shard.tensors())
    if (t.routed_experts) send.insert(send.end(), part + t.offset, part + t.offset + t.numel);
  std::vector<int64_t> send_counts((size_t)R, 0), recv_counts((size_t)R, 0);
  send_counts[0] = (int64_t)send.size();
  std::vector<int64_t> all((size_t)R);
  experts.all_gather(&send_counts[0], all.data(), 1);
  if (experts.rank() == 0) recv_counts = all;
  int64_t total = 0;
  for (auto c : recv_counts) total += c;
  std::vector<float> recv((size_t)total);
  experts.all_to_allv(send.data(), send_counts.data(), recv.data(), recv_counts.data());
  if (experts.rank() != 0) return;
  // Replicated tensors from this rank; each expert tensor's block q from rank q.
  std::vector<int64_t> at((size_t)R, 0);
  for (int q = 1; q < R; ++q) at[(size_t)q] = at[(size_t)q - 1] + recv_counts[(size_t)q - 1];
  for (size_t i = 0; i < whole.tensors().size(); ++i) {
    const ParamTensor &w = whole.tensors()[i], &s = shard.tensors()[i];
    if (!w.routed_experts) {
      std::copy(part + s.offset, part + s.offset + s.numel, full + w.offset);
      continue;
    }
    DSMOE_ASSERT(s.numel * R == w.numel, "tensor {}: {} ranks of {} elements for {}", w.name, R, s.numel, w.numel);
    for (int q = 0; q < R; ++q) {
      std::copy(recv.begin() + at[(size_t)q], recv.begin() + at[(size_t)q] + s.numel, full + w.offset + q * s.numel);
      at[(size_t)q] += s.numel;
    }
  }
}

}  // namespace dsmoe
