// Token sampling: the options and the choice of the next token from a row of logits. Generation
// itself (prefill + KV-cache decoding, batches) is infer/engine.h.
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.h"

namespace dsmoe {

struct SamplingOptions {
  double temperature = 0.8;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off
  int64_t max_new_tokens = 200;
  int32_t eos_token = -1;    // stop when sampled; -1 = none
};

// Picks the next token from logits [V]. Greedy ties go to the lowest id.
int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& o, Rng& rng);

}  // namespace dsmoe
