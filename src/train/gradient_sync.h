// Gradients of multi-process training (dist/parallel_groups.h): after the backward of a step, each
// rank holds its slice of the batch's contribution; the step's gradient is their sum, over all ranks
// for replicated parameters and over the expert replicas for the routed experts a rank holds.
#pragma once
#include <cstdint>
#include <vector>

#include "dist/parallel_groups.h"
#include "model/params.h"

namespace dsmoe {

// Sums grads over the ranks that hold each tensor, in buckets of at most `bucket_floats` consecutive
// floats of one kind (one collective per bucket, as DDP's buckets; not yet overlapped with backward).
void all_reduce_gradients(const ParamLayout& layout, std::vector<float>& grads, ParallelGroups& groups,
                          int64_t bucket_floats = int64_t(1) << 22);

// The L2 norm of the whole model's gradient when this rank holds only its routed experts' part: the
// replicated tensors (the same on every rank after all_reduce_gradients) plus every expert group's
// experts, summed over the expert-parallel group. The same value on every rank. With E == 1 this is
// grad_norm (train/optimizer.h) of the buffer.
double global_grad_norm(const ParamLayout& layout, const std::vector<float>& grads, ParallelGroups& groups);

}  // namespace dsmoe
