#include "bench_model.h"

#include <cstring>

#include "core/bf16.h"
#include "core/rng.h"

namespace dsmoe::bench {

using ops::WType;

ModelConfig bench_config(int64_t vocab_size) {
  ModelConfig m;
  m.vocab_size = vocab_size;
  m.hidden_size = 2048;
  m.intermediate_size = 10944;
  m.moe_intermediate_size = 1408;
  m.num_hidden_layers = 4;
  m.num_attention_heads = 16;
  m.num_key_value_heads = 16;
  m.n_shared_experts = 2;
  m.n_routed_experts = 64;
  m.num_experts_per_tok = 6;
  m.first_k_dense_replace = 1;
  m.max_position_embeddings = 4096;
  return m;
}

void fill_random(InferenceWeights& w, uint64_t seed) {
  Rng rng(seed);
  for (auto& s : w.slots()) {
    if (!s.is_matrix) {  // norms 1, router small normal (the same routing spread as trained models)
      float* p = (float*)s.mutable_data();
      const bool norm = s.t.shape.size() == 1;
      for (int64_t i = 0; i < s.t.numel; ++i) p[i] = norm ? 1.0f : (float)(0.05 * rng.normal());
      continue;
    }
    const int64_t n = s.mat.rows * s.mat.row_bytes();
    uint8_t* p = s.mutable_data();
    const uint64_t base = rng.next_u64();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n / 8; ++i) {
      uint64_t x = (base + (uint64_t)i) * 0x9E3779B97F4A7C15ull;  // splitmix64
      x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
      x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
      x ^= x >> 31;
      if (s.mat.type == WType::BF16)  // sign, exponent 2^-10..2^-7, 7 random mantissa bits
        x = (x & 0x807F807F807F807Full) | 0x3A803A803A803A80ull;
      if (s.mat.type == WType::Q8)  // int8 in [-64, 63]
        x = (x & 0x7F7F7F7F7F7F7F7Full) - 0x4040404040404040ull;
      std::memcpy(p + 8 * i, &x, 8);
    }
    if (s.mat.scales) {
      const uint16_t d = f32_to_bf16(s.mat.type == WType::Q8 ? 0.02f / 127 : 0.02f / 7);
      std::fill(s.mutable_scales(), s.mutable_scales() + s.mat.rows * s.mat.blocks(), d);
    }
  }
}

}  // namespace dsmoe::bench
