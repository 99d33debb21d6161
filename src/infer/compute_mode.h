// Which operand precision prefill products use (ops::Compute), chosen from the user's --compute
// value and the weights' storage. "auto" is the fastest mode whose measured cost on a trained model
// is below 0.5% perplexity (bench/RESULTS.md "Compute modes"; the table in compute_mode.cpp).
// int8 (q8 / q4 weights) needs AVX512-VNNI, mixed (int8 for few rows, bf16 for many) that and
// AVX512_BF16: asked for on a CPU without them, it is a usage error.
#pragma once
#include <string>

#include "infer/infer_weights.h"
#include "ops/qlinear.h"

namespace dsmoe {

struct ComputeChoice {
  ops::Compute compute = ops::Compute::F32;
  std::string note;  // said on stderr: what was chosen and why (e.g. the CPU lacks AVX512_BF16)
};

// flag: "auto" | "f32" | "bf16" | "int8" | "mixed". Throws UsageError naming --compute for an unknown
// value, for bf16 with f32 weights (their bf16 storage is --dtype bf16), for int8 / mixed with
// weights other than q8 / q4 or on a CPU without the instructions they need.
ComputeChoice choose_compute(const std::string& flag, ops::WType storage);
// choose_compute for w's storage, applied to w (InferenceWeights::set_compute); the choice returned
// for the caller to say.
ComputeChoice apply_compute(InferenceWeights& w, const std::string& flag);

}  // namespace dsmoe
