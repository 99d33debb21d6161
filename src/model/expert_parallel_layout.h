// The expert x data layout of one process, in one place for training and inference: its process
// groups (dist/parallel_groups.h), the routed experts it holds (ExpertShard, ParamLayout's) and the
// all-to-all dispatcher over its expert-parallel group, which owns exactly those experts.
#pragma once
#include <cstdint>
#include <memory>

#include "dist/parallel_groups.h"
#include "model/config.h"
#include "model/params.h"
#include "model/token_dispatcher.h"

namespace dsmoe {

struct ExpertParallelLayout {
  ParallelGroups groups;
  ExpertShard shard;                                    // all() when expert_parallel == 1
  std::unique_ptr<AllToAllTokenDispatcher> dispatcher;  // null when expert_parallel == 1
  int64_t expert_parallel() const { return groups.expert_parallel; }
};

// Expert-parallel size E over `world`: rank r of its expert-parallel group holds routed experts
// [r * N / E, (r + 1) * N / E). Throws dsmoe::Error naming the numbers when E does not divide the
// world size or the routed experts (or E > 1 on a dense model).
ExpertParallelLayout make_expert_parallel_layout(Communicator& world, const ModelConfig& m, int64_t expert_parallel);

}  // namespace dsmoe
