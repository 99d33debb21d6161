// Which activation precision prefill products use (ops::Compute), chosen from the user's --compute
// value and the weights' storage. "auto" is the fastest mode whose measured cost on a trained model
// is negligible: bf16 for bf16 weights (mean NLL 4.062375 vs 4.062379 with f32 activations on the
// quickstart model's held-out windows: bench/RESULTS.md "Compute modes"),
// f32 for every other storage (no faster mode exists for them yet).
#pragma once
#include <string>

#include "ops/qlinear.h"

namespace dsmoe {

struct ComputeChoice {
  ops::Compute compute = ops::Compute::F32;
  std::string note;  // said on stderr: what was chosen and why (e.g. the CPU lacks AVX512_BF16)
};

// flag: "auto" | "f32" | "bf16". Throws UsageError naming --compute for an unknown value or for
// bf16 with weights that are not stored in bf16.
ComputeChoice choose_compute(const std::string& flag, ops::WType storage);

}  // namespace dsmoe
