#include "train/gradient_sync.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "train/optimizer.h"

namespace dsmoe {

GradientSync::GradientSync(const ParamLayout& layout, ParallelGroups& groups, int64_t bucket_floats)
    : groups_(groups) {
  DSMOE_ASSERT(bucket_floats > 0, "gradient bucket of {} floats", bucket_floats);
  if (groups.world->size() == 1) return;
  const auto& ts = layout.tensors();
  auto experts = [&](size_t i) { return ts[i].routed_experts && groups.expert_parallel > 1; };
  // Runs of consecutive tensors of one kind, from the last tensor down, each cut into buckets from
  // its end (the layout is contiguous: a run is one range of the buffer).
  size_t j = ts.size();
  while (j > 0) {
    const bool kind = experts(j - 1);
    size_t i = j;
    while (i > 0 && experts(i - 1) == kind) --i;
    const int64_t begin = ts[i].offset, end = ts[j - 1].offset + ts[j - 1].numel;
    Communicator* comm = kind ? groups.expert_replicas.get() : groups.world;
    if (comm->size() > 1)
      for (int64_t e = end; e > begin; e -= bucket_floats) {
        const int64_t b = std::max(begin, e - bucket_floats);
        buckets_.push_back({b, e - b, comm});
      }
    j = i;
  }
}

void GradientSync::ready_from(float* grads, int64_t from) {
  for (; started_ < buckets_.size() && buckets_[started_].offset >= from; ++started_)
    buckets_[started_].comm->start_all_reduce_sum(grads + buckets_[started_].offset, buckets_[started_].count);
  groups_.world->progress();
  if (groups_.expert_replicas) groups_.expert_replicas->progress();
}

void GradientSync::finish(float* grads) {
  if (groups_.world->size() == 1) return;
  groups_.world->barrier();
  ready_from(grads, 0);
  groups_.world->wait_started();
  if (groups_.expert_replicas) groups_.expert_replicas->wait_started();
}

void all_reduce_gradients(const ParamLayout& layout, std::vector<float>& grads, ParallelGroups& groups,
                          int64_t bucket_floats) {
  GradientSync(layout, groups, bucket_floats).finish(grads.data());
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
