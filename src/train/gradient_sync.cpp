#include "train/gradient_sync.h"

#include <algorithm>
#include <cmath>

#include "train/optimizer.h"

namespace dsmoe {

void all_reduce_gradients(const ParamLayout& layout, std::vector<float>& grads, ParallelGroups& groups,
                          int64_t bucket_floats) {
  if (groups.world->size() == 1) return;
  // Runs of consecutive tensors of one kind, cut into buckets.
  const auto& ts = layout.tensors();
  size_t i = 0;
  while (i < ts.size()) {
    const bool experts = ts[i].routed_experts && groups.expert_parallel > 1;
    size_t j = i;
    int64_t end = ts[i].offset;
    while (j < ts.size() && (ts[j].routed_experts && groups.expert_parallel > 1) == experts) end = ts[j].offset + ts[j++].numel;
    Communicator& comm = experts ? *groups.expert_replicas : *groups.world;
    if (comm.size() > 1)
      for (int64_t o = ts[i].offset; o < end; o += bucket_floats)
        comm.all_reduce_sum(grads.data() + o, std::min(bucket_floats, end - o));
    i = j;
  }
}

static double sum_squares(const float* g, int64_t n) {
  double s = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += (double)g[i] * g[i];
  return s;
}

double global_grad_norm(const ParamLayout& layout, const std::vector<float>& grads, ParallelGroups& groups) {
  if (groups.expert_parallel == 1) return grad_norm(grads);
  double replicated = 0, experts = 0;
  for (const auto& t : layout.tensors())
    (t.routed_experts ? experts : replicated) += sum_squares(grads.data() + t.offset, t.numel);
  groups.experts->all_reduce_sum(&experts, 1);
  return std::sqrt(replicated + experts);
}

}  // namespace dsmoe
