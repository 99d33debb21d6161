// bfloat16 <-> fp32 bit conversions (bf16 = the upper 16 bits of an fp32). Inline because the
// weight kernels (ops/qlinear) and the checkpoint code (io/safetensors) both convert per element.
#pragma once
#include <cstdint>
#include <cstring>

namespace dsmoe {

inline float bf16_to_f32(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even; NaN stays NaN (a quiet NaN), infinities stay infinite.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}

}  // namespace dsmoe
