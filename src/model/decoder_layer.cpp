#include "model/decoder_layer.h"

#include "ops/rmsnorm.h"

namespace dsmoe {

namespace {

// out = a + b over all threads (out may alias a): the residual adds were serial loops.
void add_residual(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

}  // namespace

void decoder_layer_forward(const ModelConfig& m, const AttentionWeights& W, int64_t N, const int32_t* pos,
                           const ops::RopeTable& rope, const DecoderLayerBuffers& b, const AttendFn& attend,
                           const FfnFn& ffn) {
  const int64_t H = m.hidden_size;
  const float eps = (float)m.rms_norm_eps;
  // Attention block.
  ops::rmsnorm_forward(b.ln1, b.rstd1, b.x, W.input_norm, N, H, eps);
  ops::qlinear_forward(b.q, b.ln1, W.q, N);
  ops::qlinear_forward(b.k, b.ln1, W.k, N);
  ops::qlinear_forward(b.v, b.ln1, W.v, N);
  ops::rope_forward(b.q, pos, rope, N, m.num_attention_heads);
  ops::rope_forward(b.k, pos, rope, N, m.num_key_value_heads);
  attend(b.att, b.q, b.k, b.v);
  ops::qlinear_forward(b.h, b.att, W.o, N);
  add_residual(b.h, b.h, b.x, N * H);
  // FFN block.
  ops::rmsnorm_forward(b.ln2, b.rstd2, b.h, W.post_norm, N, H, eps);
  ffn(b.ffn, b.ln2);
  add_residual(b.out, b.h, b.ffn, N * H);
}

}  // namespace dsmoe
