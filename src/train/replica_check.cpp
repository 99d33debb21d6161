#include "train/replica_check.h"

#include <xxhash.h>

#include <vector>

#include "core/error.h"

namespace dsmoe {

namespace {

// Every rank of `comm` passes the hashes of the same tensors (names[i] <-> hashes[i]); returns
// "" or a description of the first tensor whose hash differs from rank 0's.
std::string first_difference(Communicator& comm, const std::vector<std::string>& names,
                             const std::vector<int64_t>& hashes, const char* over) {
  const int64_t n = (int64_t)hashes.size();
  if (comm.size() == 1 || n == 0) return "";
  std::vector<int64_t> all((size_t)(n * comm.size()));
  comm.all_gather(hashes.data(), all.data(), n);
  for (int64_t i = 0; i < n; ++i)
    for (int r = 1; r < comm.size(); ++r)
      if (all[(size_t)(r * n + i)] != all[(size_t)i])
        return fmt::format("tensor '{}' differs between rank 0 and rank {} of the {}", names[(size_t)i], r, over);
  return "";
}

}  // namespace

void check_replicas_identical(const ParamLayout& layout, const float* values, ParallelGroups& groups,
                              const std::string& what) {
  std::vector<std::string> rep_names, exp_names;
  std::vector<int64_t> rep, exp;
  for (const auto& t : layout.tensors()) {
    const int64_t h = (int64_t)XXH3_64bits(values + t.offset, (size_t)t.numel * sizeof(float));
    if (t.routed_experts) {
      exp_names.push_back(t.name);
      exp.push_back(h);
    } else {
      rep_names.push_back(t.name);
      rep.push_back(h);
    }
  }
  std::string bad = first_difference(*groups.world, rep_names, rep, "world");
  // The routed experts of an expert-parallel run are compared over the ranks holding the same ones
  // (with E == 1 they are replicated like the rest).
  if (groups.expert_parallel > 1) {
    const std::string e = first_difference(*groups.expert_replicas, exp_names, exp, "expert replicas");
    if (bad.empty()) bad = e;
  } else {
    const std::string e = first_difference(*groups.world, exp_names, exp, "world");
    if (bad.empty()) bad = e;
  }
  if (!bad.empty())
    fail("the ranks' {} have diverged: {}; data-parallel replicas must hold the same bits (training stopped before "
         "a checkpoint of one rank's copy is written)", what, bad);
}

}  // namespace dsmoe
