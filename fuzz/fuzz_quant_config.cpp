// Surface: the quantization_config of a quantized folder's config.json (stored_quantization), and
// the rest of that config.json as load_hf_config reads it.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.h"
#include "infer/hf_checkpoint.h"

using namespace dsmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::write_scratch("config.json", {reinterpret_cast<const char*>(data), size});
  const std::string& dir = fuzz::scratch_dir();
  fuzz::refuse_ok([&] { stored_quantization(dir); });
  fuzz::refuse_ok([&] { load_hf_config(dir); });
  return 0;
}
