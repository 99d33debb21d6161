// Gradients of multi-process training (dist/parallel_groups.h): after the backward of a step, each
// rank holds its slice of the batch's contribution; the step's gradient is their sum, over all ranks
// for replicated parameters and over the expert replicas for the routed experts a rank holds.
#pragma once
#include <cstdint>
#include <vector>

#include "dist/parallel_groups.h"
#include "model/params.h"

namespace dsmoe {

// The default bucket: 1M floats (4 MB). Small enough that a layer's gradients leave while the
// layers below are still in backward, large enough that a collective's latency (~2 us here) is
// nothing against its transfer.
inline constexpr int64_t kGradientBucketFloats = int64_t(1) << 20;

// One step's gradient sum in buckets (as DDP's): runs of consecutive tensors of one kind (replicated,
// or routed experts reduced over the expert replicas), cut into buckets of at most `bucket_floats`
// floats, taken from the END of the layout, the order in which backward finishes them (lm_head and
// the last layer first, the embedding last: model/model.h Model::backward). Each bucket is one
// non-blocking all-reduce; the buckets, and so the bits of the result, are the same whether a bucket
// starts while backward still runs (ready_from) or after it (finish alone).
class GradientSync {
 public:
  GradientSync(const ParamLayout& layout, ParallelGroups& groups, int64_t bucket_floats = kGradientBucketFloats);
  // The gradients at offsets >= `from` are final (backward will not add to them): starts every bucket
  // inside that range not started yet, and lets the started ones progress.
  void ready_from(float* grads, int64_t from);
  // After backward: waits for the slowest rank (a barrier: CollectiveClock's waiting), starts the
  // buckets left and waits for all. grads then hold the sums, the same on every rank that holds them.
  void finish(float* grads);
  int64_t buckets() const { return (int64_t)buckets_.size(); }

 private:
  struct Bucket {
    int64_t offset, count;
    Communicator* comm;
  };
  ParallelGroups& groups_;
  std::vector<Bucket> buckets_;  // in backward order: descending offsets
  size_t started_ = 0;
};

// Sums grads over the ranks that hold each tensor, after backward (GradientSync::finish alone).
void all_reduce_gradients(const ParamLayout& layout, std::vector<float>& grads, ParallelGroups& groups,
                          int64_t bucket_floats = kGradientBucketFloats);

// The L2 norm of the whole model's gradient when this rank holds only its routed experts' part: the
// replicated tensors (the same on every rank after all_reduce_gradients) plus every expert group's
// experts, summed over the expert-parallel group. The same value on every rank. With E == 1 this is
// grad_norm (train/optimizer.h) of the buffer.
double global_grad_norm(const ParamLayout& layout, const std::vector<float>& grads, ParallelGroups& groups);

}  // namespace dsmoe
