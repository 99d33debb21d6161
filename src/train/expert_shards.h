// Expert-parallel state and the one logical checkpoint: a process that holds only its routed experts
// (ParamLayout with an ExpertShard) still reads and writes the whole model's checkpoint, so a run
// saved with one layout resumes with another. Buffers are laid out by the layouts named (parameters,
// AdamW moments or gradients alike).
#pragma once

#include "dist/communicator.h"
#include "model/params.h"

namespace dsmoe {

// part (laid out by `shard`, a shard of `whole`) = its tensors' values in full (laid out by `whole`).
void take_expert_shard(const ParamLayout& whole, const float* full, const ParamLayout& shard, float* part);

// The whole model from the shards of an expert-parallel group: every rank of `experts` passes its part
// (laid out by its `shard`; rank q holds the q-th contiguous group of experts); rank 0 of `experts`
// receives it into full (laid out by `whole`; unused elsewhere). The replicated tensors are rank 0's.
void gather_expert_shards(const ParamLayout& shard, const float* part, const ParamLayout& whole, float* full,
                          Communicator& experts);

}  // namespace dsmoe
