#include "infer/compute_mode.h"

#include <fmt/format.h>

#include "core/error.h"
#include "ops/bf16_gemm.h"
#include "ops/int8_gemm.h"

namespace dsmoe {

namespace {
using ops::Compute;
// Per storage (F32, BF16, Q8, Q4): what "auto" picks where the CPU has it (mixed without
// AVX512-VNNI becomes bf16, without AVX512_BF16 int8; bf16 without AVX512_BF16 f32): the fastest
// mode whose measured perplexity cost on the quickstart model is below 0.5% (bench/RESULTS.md
// "Compute modes"). Measured 2026-12-01: bf16 and int8 both cost under 0.02% on q8 and q4. Speed on
// this AMX machine (oneDNN's bf16 runs on AMX tiles): per product, int8 is faster than bf16 for few
// rows (a routed expert's share of a prompt, a batched decode step) and slower for many (attention,
// shared experts, long prompts), so q8 / q4 take mixed: each product the faster of the two
// (ops/qlinear.h kMixedInt8MaxRows, from bench Infer_Product). Without AMX (oneDNN's bf16 on
// AVX512_BF16 dot products only) int8 is the faster at every row count: measured 2026-12-02 on a
// Cooper Lake-class machine, 256-token prefill of the 16B-shaped q8 model at 1 thread: int8 367
// tok/s, bf16 103, mixed 102 (bench/RESULTS.md), so there mixed becomes int8.
constexpr Compute kAuto[] = {Compute::F32, Compute::BF16, Compute::MIXED, Compute::MIXED};

Compute parse_compute(const std::string& flag, ops::WType storage) {
  if (flag == "auto") return kAuto[(int)storage];
  if (flag == "f32") return Compute::F32;
  if (flag == "bf16") return Compute::BF16;
  if (flag == "int8") return Compute::INT8;
  if (flag == "mixed") return Compute::MIXED;
  usage_error("--compute '{}': expected auto, f32, bf16, int8 or mixed", flag);
}
}  // namespace

ComputeChoice choose_compute(const std::string& flag, ops::WType storage) {
  Compute want = parse_compute(flag, storage);
  // What the user asked for by name must run as asked, or be refused; "auto" adapts (below).
  const bool asked = flag != "auto";
  const bool integer = want == Compute::INT8 || want == Compute::MIXED;
  if (asked && want == Compute::BF16 && storage == ops::WType::F32)
    usage_error("--compute bf16 needs bf16, q8 or q4 weights (e.g. --dtype bf16); these are f32");
  if (asked && integer && storage != ops::WType::Q8 && storage != ops::WType::Q4)
    usage_error("--compute {} needs q8 or q4 weights (dsmoe quantize, or --dtype q8|q4); these are {}", flag,
                ops::wtype_name(storage));
  if (asked && integer && !ops::int8_gemm_available())
    usage_error("--compute {} needs AVX512-VNNI, which this CPU (or build) lacks: use --compute bf16 or f32", flag);
  if (asked && want == Compute::MIXED && !ops::bf16_gemm_available())
    usage_error("--compute mixed needs AVX512_BF16, which this CPU (or build) lacks: use --compute int8 or f32");
  std::string why;
  if (want == Compute::MIXED && !ops::int8_gemm_available()) {  // only "auto" gets here (asked: refused above)
    want = Compute::BF16;
    why = " (this CPU has no AVX512-VNNI for int8)";
  } else if (want == Compute::MIXED && !ops::bf16_gemm_available()) {  // only "auto" gets here
    want = Compute::INT8;
    why = " (this CPU has no AVX512_BF16 for the larger products)";
  } else if (want == Compute::MIXED && !asked && !ops::bf16_gemm_on_amx()) {
    want = Compute::INT8;
    why = " (this CPU's bf16 matmul runs without AMX, slower than int8 at every size)";
  }
  if (want == Compute::F32 || storage == ops::WType::F32) return {Compute::F32, "f32 activations"};
  if (want == Compute::MIXED)
    return {Compute::MIXED, fmt::format("int8 activations (one fp32 scale per 32, {}) in products of up to {} rows, "
                                        "bf16 activations and bf16-rounded {} weights ({}) above; decode included",
                                        ops::int8_gemm_implementation(), ops::kMixedInt8MaxRows,
                                        ops::wtype_name(storage), ops::bf16_gemm_implementation())};
  if (want == Compute::INT8)
    return {Compute::INT8, std::string("int8 activations (one fp32 scale per 32) and ") + ops::wtype_name(storage) +
                               " weights in prefill and decode (" + ops::int8_gemm_implementation() + ")" + why};
  if (!ops::bf16_gemm_available())
    return {Compute::F32, std::string("f32 activations: this CPU (or build) has no AVX512_BF16") +
                              (asked ? ", so --compute bf16 runs the f32 path" : "")};
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
