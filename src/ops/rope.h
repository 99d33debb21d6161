// Rotary position embedding, HALF-SPLIT convention (official DeepSeek / LLaMA HF code):
//   out = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[d/2:], x[:d/2]),
//   cos/sin of angle pos * inv_freq[i mod d/2], inv_freq[i] = theta^(-2i/d).
#pragma once
#include <cstdint>
#include <vector>

namespace dsmoe::ops {

// cos/sin tables [max_pos, head_dim/2] (the two halves share one angle), computed in double.
struct RopeTable {
  int64_t max_pos = 0, head_dim = 0;
  std::vector<float> cos, sin;
};
RopeTable rope_table(int64_t max_pos, int64_t head_dim, double theta);

// In place on x [n, heads, head_dim]; token i is at position pos[i] (< table.max_pos).
void rope_forward(float* x, const int32_t* pos, const RopeTable& t, int64_t n, int64_t heads);
// The rotation is orthogonal: backward applies the inverse rotation to dx in place.
void rope_backward(float* dx, const int32_t* pos, const RopeTable& t, int64_t n, int64_t heads);

}  // namespace dsmoe::ops
