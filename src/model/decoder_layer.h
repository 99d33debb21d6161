// The composition of ONE decoder layer, shared by training (Model::forward) and inference
// (InferenceEngine::step):
//
//   ln1 = rmsnorm(x); q, k, v = ln1 Wq, ln1 Wk, ln1 Wv; rope(q, k at pos)
//   att = ATTEND(q, k, v)                       the attention strategy
//   h = x + att Wo; ln2 = rmsnorm(h)
//   out = h + FFN(ln2)                          the FFN strategy (dense SwiGLU or MoE)
//
// The two callers differ only in the strategies and the weight storage: training attends over the
// whole batch and saves the probabilities for backward, and runs the MoE layer that saves its
// activations; inference attends each sequence over its KV cache and runs the weights in their
// inference storage (fp32, bf16, q8, q4: the projections are WeightMats, see ops/qlinear.h).
#pragma once
#include <cstdint>
#include <functional>

#include "model/config.h"
#include "model/params.h"
#include "ops/qlinear.h"
#include "ops/rope.h"

namespace dsmoe {

struct AttentionWeights {
  const float* input_norm;
  ops::WeightMat q, k, v, o;  // [Hq*D, H], [Hkv*D, H], [Hkv*D, H], [H, Hq*D]
  const float* post_norm;
};

// The fp32 attention weights of a training layer (views, no copy), their products in `mode`'s
// precision (training.precision; null = fp32).
inline AttentionWeights attention_weights(const ModelConfig& m, const LayerView& L,
                                          const ops::MatmulMode* mode = nullptr) {
  const int64_t H = m.hidden_size, qd = m.num_attention_heads * m.head_dim(), kvd = m.num_key_value_heads * m.head_dim();
  using ops::WeightMat;
  return {L.input_norm, WeightMat::f32(L.q, qd, H, mode), WeightMat::f32(L.k, kvd, H, mode),
          WeightMat::f32(L.v, kvd, H, mode), WeightMat::f32(L.o, H, qd, mode), L.post_norm};
}

// Buffers of one layer over N rows. rstd1/rstd2 may be null (nothing saved for backward); ln1 and
// ln2 may alias (ln1 is dead once q, k, v exist); out may alias x (x is dead once h exists).
struct DecoderLayerBuffers {
  const float* x;              // [N, H] layer input
  float *ln1, *rstd1;          // [N, H], [N]
  float *q, *k, *v;            // [N, Hq*D], [N, Hkv*D], [N, Hkv*D]
  float* att;                  // [N, Hq*D]
  float *h, *ln2, *rstd2;      // [N, H], [N, H], [N]
  float* ffn;                  // [N, H] FFN output
  float* out;                  // [N, H] layer output
};

// attend(att, q, k, v): att [N, Hq*D] from the rotated q, k and v of the N rows.
using AttendFn = std::function<void(float* att, const float* q, const float* k, const float* v)>;
// ffn(out, x): out [N, H] = FFN(x) for x = ln2 [N, H].
using FfnFn = std::function<void(float* out, const float* x)>;

void decoder_layer_forward(const ModelConfig& m, const AttentionWeights& W, int64_t N, const int32_t* pos,
                           const ops::RopeTable& rope, const DecoderLayerBuffers& b, const AttendFn& attend,
                           const FfnFn& ffn);

}  // namespace dsmoe
