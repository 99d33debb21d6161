#include "infer/compute_mode.h"

#include "core/error.h"
#include "ops/bf16_gemm.h"
#include "ops/int8_gemm.h"

namespace dsmoe {

namespace {
using ops::Compute;
// Per storage (F32, BF16, Q8, Q4): what "auto" picks where the CPU has it (int8 without AVX512-VNNI
// becomes bf16, bf16 without AVX512_BF16 f32): the fastest mode whose measured perplexity cost on the
// quickstart model is below 0.5% (bench/RESULTS.md "Compute modes"). Measured 2026-12-01: bf16 and
// int8 both cost under 0.02% on q8 and q4. Speed on this AMX machine (oneDNN's bf16 runs on AMX
// tiles): per product, int8 is 1.6-2.4x bf16 at 12-24 rows (the routed experts of a short prompt)
// but 0.8-0.9x at 128-256 rows (attention, shared experts, long prompts); the whole 128-token
// prefill was level to 1.3x ahead on a heavily loaded machine. Not measurably the faster mode
// across prompt lengths, so q8 / q4 stay bf16 (int8 for few-row products only would be faster: not
// a mode the user can name yet).
constexpr Compute kAuto[] = {Compute::F32, Compute::BF16, Compute::BF16, Compute::BF16};

Compute parse_compute(const std::string& flag, ops::WType storage) {
  if (flag == "auto") return kAuto[(int)storage];
  if (flag == "f32") return Compute::F32;
  if (flag == "bf16") return Compute::BF16;
  if (flag == "int8") return Compute::INT8;
  usage_error("--compute '{}': expected auto, f32, bf16 or int8", flag);
}
}  // namespace

ComputeChoice choose_compute(const std::string& flag, ops::WType storage) {
  Compute want = parse_compute(flag, storage);
  if (flag == "bf16" && storage == ops::WType::F32)
    usage_error("--compute bf16 needs bf16, q8 or q4 weights (e.g. --dtype bf16); these are f32");
  if (flag == "int8" && storage != ops::WType::Q8 && storage != ops::WType::Q4)
    usage_error("--compute int8 needs q8 or q4 weights (dsmoe quantize, or --dtype q8|q4); these are {}",
                ops::wtype_name(storage));
  if (flag == "int8" && !ops::int8_gemm_available())
    usage_error("--compute int8 needs AVX512-VNNI, which this CPU (or build) lacks: use --compute bf16 or f32");
  std::string why;
  if (want == Compute::INT8 && !ops::int8_gemm_available()) {  // only "auto" gets here
    want = Compute::BF16;
    why = " (this CPU has no AVX512-VNNI for int8)";
  }
  if (want == Compute::F32 || storage == ops::WType::F32) return {Compute::F32, "f32 activations"};
  if (want == Compute::INT8)
    return {Compute::INT8, std::string("int8 activations (one fp32 scale per 32) and ") + ops::wtype_name(storage) +
                               " weights in prefill (" + ops::int8_gemm_implementation() + "), f32 in decode"};
  if (!ops::bf16_gemm_available())
    return {Compute::F32, std::string("f32 activations: this CPU (or build) has no AVX512_BF16") +
                              (flag == "bf16" ? ", so --compute bf16 runs the f32 path" : "")};
  const std::string impl = ops::bf16_gemm_implementation();
  return {Compute::BF16, (storage == ops::WType::BF16
                              ? "bf16 activations in prefill (" + impl + "), f32 in decode"
                              : std::string("bf16 activations and bf16-rounded ") + ops::wtype_name(storage) +
                                    " weights in prefill (" + impl + "), f32 in decode") +
                             why};
}

ComputeChoice apply_compute(InferenceWeights& w, const std::string& flag) {
  ComputeChoice c = choose_compute(flag, w.type());
  w.set_compute(c.compute);
  return c;
}

}  // namespace dsmoe
