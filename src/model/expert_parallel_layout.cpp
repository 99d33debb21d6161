#include "model/expert_parallel_layout.h"

#include "core/error.h"

namespace dsmoe {

ExpertParallelLayout make_expert_parallel_layout(Communicator& world, const ModelConfig& m, int64_t expert_parallel) {
  if (expert_parallel > 1) validate_expert_parallel(m, expert_parallel, "expert-parallel size", "layout");
  ExpertParallelLayout l;
  l.groups = make_parallel_groups(world, expert_parallel);
  if (expert_parallel > 1) {
    const int64_t local = m.n_routed_experts / expert_parallel;
    l.shard = ExpertShard{l.groups.experts->rank() * local, local};
    l.dispatcher = std::make_unique<AllToAllTokenDispatcher>(*l.groups.experts, m.n_routed_experts);
  }
  return l;
}

}  // namespace dsmoe
