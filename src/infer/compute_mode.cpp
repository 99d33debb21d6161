#include "infer/compute_mode.h"

#include "core/error.h"
#include "ops/bf16_gemm.h"

namespace dsmoe {

namespace {
// Per storage (F32, BF16, Q8, Q4): whether "auto" picks bf16. Set from the measured perplexity cost
// on the quickstart model (bench/RESULTS.md "Compute modes"): every storage where it is below 0.5%.
constexpr bool kAutoBf16[] = {false, true, true, true};
}  // namespace

ComputeChoice choose_compute(const std::string& flag, ops::WType storage) {
  if (flag != "auto" && flag != "f32" && flag != "bf16")
    usage_error("--compute '{}': expected auto, f32 or bf16", flag);
  if (flag == "bf16" && storage == ops::WType::F32)
    usage_error("--compute bf16 needs bf16, q8 or q4 weights (e.g. --dtype bf16); these are f32");
  if (flag == "f32" || storage == ops::WType::F32 || (flag == "auto" && !kAutoBf16[(int)storage]))
    return {ops::Compute::F32, "f32 activations"};
  if (!ops::bf16_gemm_available())
    return {ops::Compute::F32, std::string("f32 activations: this CPU (or build) has no AVX512_BF16") +
                                   (flag == "bf16" ? ", so --compute bf16 runs the f32 path" : "")};
  const std::string impl = ops::bf16_gemm_implementation();
  return {ops::Compute::BF16, storage == ops::WType::BF16
                                  ? "bf16 activations in prefill (" + impl + "), f32 in decode"
                                  : std::string("bf16 activations and bf16-rounded ") + ops::wtype_name(storage) +
                                        " weights in prefill (" + impl + "), f32 in decode"};
}

ComputeChoice apply_compute(InferenceWeights& w, const std::string& flag) {
  ComputeChoice c = choose_compute(flag, w.type());
  w.set_compute(c.compute);
  return c;
}

}  // namespace dsmoe
