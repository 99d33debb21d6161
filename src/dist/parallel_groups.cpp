#include "dist/parallel_groups.h"

#include "core/error.h"

namespace dsmoe {

ParallelGroups make_parallel_groups(Communicator& world, int64_t expert_parallel) {
  const int64_t P = world.size();
  if (expert_parallel < 1 || P % expert_parallel != 0)
    fail("expert-parallel size {} must divide the number of processes ({}): the ranks form P / E expert-parallel "
         "groups of E", expert_parallel, P);
  ParallelGroups g;
  g.world = &world;
  g.expert_parallel = expert_parallel;
  const int r = world.rank(), E = (int)expert_parallel;
  g.experts = world.split(r / E, r);
  g.expert_replicas = world.split(r % E, r);
  return g;
}

}  // namespace dsmoe
