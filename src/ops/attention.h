// Causal multi-head attention with grouped-query heads (Hq a multiple of Hkv; query head h reads
// kv head h / (Hq/Hkv)). Scale 1/sqrt(D), softmax in fp32.
// Queries are the LAST q_len positions of a kv_len-long sequence: query i attends to keys
// j <= i + (kv_len - q_len). Training uses q_len == kv_len; KV-cache decoding uses q_len < kv_len.
#pragma once
#include <cstdint>

namespace dsmoe::ops {

struct AttentionShape {
  int64_t batch, q_len, kv_len, q_heads, kv_heads, head_dim;
  // Row strides (in floats) between consecutive positions of q / k,v / out. Default layouts:
  // q, out [batch, q_len, q_heads * head_dim]; k, v [batch, kv_len, kv_heads * head_dim].
  int64_t q_stride() const { return q_heads * head_dim; }
  int64_t kv_stride() const { return kv_heads * head_dim; }
};

// probs [batch, q_heads, q_len, kv_len] saved for backward (may be null at inference).
void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v,
                       const AttentionShape& s);
// The same with keys and values stored as bf16 bits (the --kv-cache bf16 of inference; strides in
// elements as above). Each key and value is widened to fp32 exactly, a chunk of keys at a time, and
// the rest is the fp32 arithmetic above; only the chunking of the keys differs (256 keys
// per product), so the products sum in a different order than the fp32 cache's one product.
void attention_forward(float* out, float* probs, const float* q, const uint16_t* k, const uint16_t* v,
                       const AttentionShape& s);
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs, const float* q,
                        const float* k, const float* v, const AttentionShape& s);

}  // namespace dsmoe::ops
