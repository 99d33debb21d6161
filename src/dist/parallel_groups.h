// The process groups of expert x data parallelism (Megatron-Core's layout): P ranks, expert-parallel
// size E (dividing P). Ranks r with the same r / E form an expert-parallel group: together they hold
// every routed expert, rank (r % E) of it the E-th part [e0, e0 + N/E), and they exchange tokens by
// all-to-all. Ranks with the same r % E hold the same experts: the expert replicas, over which expert
// gradients are summed. Every rank holds a slice of the batch (rank r the r-th of P equal slices), and
// everything but the routed experts is replicated on all P ranks.
#pragma once
#include <memory>

#include "dist/communicator.h"

namespace dsmoe {

struct ParallelGroups {
  Communicator* world = nullptr;                 // all P ranks (non-owning)
  int64_t expert_parallel = 1;                   // E
  std::unique_ptr<Communicator> experts;         // this rank's expert-parallel group (E ranks)
  std::unique_ptr<Communicator> expert_replicas; // the P / E ranks holding this rank's experts
  int64_t data_parallel() const { return world->size() / expert_parallel; }
};

// Throws dsmoe::Error naming both numbers when E does not divide the world size.
ParallelGroups make_parallel_groups(Communicator& world, int64_t expert_parallel);

}  // namespace dsmoe
