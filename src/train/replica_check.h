// Data parallelism keeps one model: every parameter must hold the same bits on every rank that holds
// it (the all-reduce gives each rank the same gradient sum, and AdamW then the same update). A rank
// whose copy drifted (a runtime whose reduction is not the same on every rank, memory corruption, a
// bug) would silently train another model, and only rank 0's copy reaches the checkpoint; this check
// makes it an error instead. Run at every checkpoint (cheap: one hash per tensor).
#pragma once

#include "dist/parallel_groups.h"
#include "model/params.h"

namespace dsmoe {

// XXH3-64 of every tensor, compared over the ranks that hold it: the replicated tensors over all
// ranks, the routed experts over the expert replicas. Throws dsmoe::Error on every rank naming the
// first tensor that differs and the ranks, unless all agree. `what` names the buffer ("parameters").
void check_replicas_identical(const ParamLayout& layout, const float* values, ParallelGroups& groups,
                              const std::string& what);

}  // namespace dsmoe
