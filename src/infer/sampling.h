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

// The fp64 log-softmax of a row of fp32 logits, shifted by its max for range:
// log p(t) = logits[t] - max - log_sum. One implementation for scoring and the server's logprobs.
struct LogSoftmax {
  double max = 0, log_sum = 0;
  double logprob(float logit) const { return (double)logit - max - log_sum; }
};
LogSoftmax log_softmax(const float* logits, int64_t V);

// The k (<= V) most likely token ids, most likely first; ties go to the lower id, as greedy's do.
std::vector<int32_t> top_tokens(const float* logits, int64_t V, int64_t k);

}  // namespace dsmoe
