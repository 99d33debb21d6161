#include "infer/compute_mode.h"

#include "core/error.h"
#include "ops/bf16_gemm.h"

namespace dsmoe {

ComputeChoice choose_compute(const std::string& flag, ops::WType storage) {
  if (flag != "auto" && flag != "f32" && flag != "bf16")
    usage_error("--compute '{}': expected auto, f32 or bf16", flag);
  const bool bf16_weights = storage == ops::WType::BF16;
  if (flag == "bf16" && !bf16_weights)
    usage_error("--compute bf16 needs bf16 weights (--dtype bf16); these are {}", ops::wtype_name(storage));
  if (flag == "f32" || !bf16_weights) return {ops::Compute::F32, "f32 activations"};
  if (!ops::bf16_gemm_available())
    return {ops::Compute::F32, std::string("f32 activations: this CPU (or build) has no AVX512_BF16") +
                                   (flag == "bf16" ? ", so --compute bf16 runs the f32 path" : "")};
  return {ops::Compute::BF16, "bf16 activations in prefill (AVX512_BF16), f32 in decode"};
}

}  // namespace dsmoe
