// Surface: an experiment suite JSON (configs/paper/suite.json) through load_suite, quick and full.
// Input: the suite, then optionally (after fuzz::kPartSeparator) one model config "m.json" it may
// name; beside them lies a fixed valid base config "base.json" that both may name or extend.
#include <cstddef>
#include <cstdint>

#include "experiment/suite.h"
#include "fuzz_support.h"

using namespace dsmoe;

namespace {

// A tiny MoE model: small enough that loading it is cheap, valid so the suite checks run past it.
constexpr const char* kBase = R"({"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
  "moe_intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
  "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1,
  "training": {"steps": 10, "warmup_steps": 2, "batch_size": 2, "seq_len": 8}})";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::reset_scratch();
  const auto parts = fuzz::split_parts(data, size, 2);
  fuzz::write_scratch("base.json", kBase);
  const std::string suite = fuzz::write_scratch("suite.json", parts[0]);
  if (parts.size() > 1) fuzz::write_scratch("m.json", parts[1]);
  fuzz::refuse_ok([&] { experiment::load_suite(suite, false); });
  fuzz::refuse_ok([&] {
    const auto s = experiment::load_suite(suite, true, "data-override");
    for (const auto& m : s.models) {
      s.find(m.id);
      s.in_group(m, "table1");
    }
  });
  return 0;
}
