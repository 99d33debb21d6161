// Surface: the bytes of a .safetensors file (header JSON, offsets, dtypes, shapes, checksums),
// opened the way every checkpoint and dataset is, then every tensor read through each reader.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.h"
#include "io/safetensors.h"

using namespace dsmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_scratch("in.safetensors", {reinterpret_cast<const char*>(data), size});
  fuzz::refuse_ok([&] {
    SafeTensorsFile f(path);
    for (const auto& entry : f.tensors()) {
      const std::string& name = entry.first;  // (clang 14 lambdas cannot capture structured bindings)
      const TensorInfo& t = entry.second;
      // Each reader on its own: one refusing a tensor must not hide a bug in the next.
      fuzz::refuse_ok([&] { f.verify(t); });
      fuzz::refuse_ok([&] { f.read_bytes(name, t.dtype); });
      fuzz::refuse_ok([&] { f.read_f32(name); });
      fuzz::refuse_ok([&] { f.read_f32(name, t.shape, /*allow_nonfinite=*/true); });
      fuzz::refuse_ok([&] { f.read_i32(name); });
    }
    for (const auto& [k, v] : f.metadata()) (void)v.size();
  });
  return 0;
}
