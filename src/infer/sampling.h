// Token sampling and autoregressive generation over the shared Model forward.
// generate() here recomputes the (sliding) window each token and is kept for the training-time sample;
// the inference engine (infer/engine.h: prefill + KV cache, batches) is what the CLI uses.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/rng.h"

namespace dsmoe {

class Model;

struct SamplingOptions {
  double temperature = 0.8;  // 0 = greedy
  int64_t top_k = 0;         // 0 = off
  double top_p = 1.0;        // 1 = off
  int64_t max_new_tokens = 200;
  int32_t eos_token = -1;    // stop when sampled; -1 = none
};

// Picks the next token from logits [V]. Greedy ties go to the lowest id.
int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& o, Rng& rng);

// Extends `prompt`; on_token is called with every new token as it is produced (streaming).
std::vector<int32_t> generate(Model& model, const std::vector<int32_t>& prompt, const SamplingOptions& o, Rng& rng,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace dsmoe
