// Surface: a Hugging Face model folder, the three files a download brings: config.json,
// model.safetensors.index.json and a shard. Input: config.json, index and shard bytes separated by
// fuzz::kPartSeparator; no index part (or an empty one) makes a single-file folder
// (model.safetensors). The folder is then loaded the way `dsmoe generate --model` loads one.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.h"
#include "infer/hf_checkpoint.h"
#include "model/params.h"

using namespace dsmoe;

// The allocation a fuzzed config may ask for: load_inference_model allocates the whole model before
// it reads a tensor, so a valid but large config is an out-of-memory, not a bug.
constexpr int64_t kMaxParams = int64_t(1) << 22;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::reset_scratch();
  const auto parts = fuzz::split_parts(data, size, 3);
  fuzz::write_scratch("config.json", parts[0]);
  const std::string_view index = parts.size() > 1 ? parts[1] : std::string_view();
  const std::string_view shard = parts.size() > 2 ? parts[2] : std::string_view();
  if (index.empty()) {
    fuzz::write_scratch("model.safetensors", shard);
  } else {
    fuzz::write_scratch("model.safetensors.index.json", index);
    fuzz::write_scratch("model-00001-of-00001.safetensors", shard);
  }
  const std::string& dir = fuzz::scratch_dir();
  fuzz::refuse_ok([&] { model_dir_kind(dir); });
  fuzz::refuse_ok([&] {
    const Config c = load_hf_config(dir);
    if (model_stats(c.model, 1).total_params > kMaxParams) return;
    load_inference_model(dir);
  });
  return 0;
}
