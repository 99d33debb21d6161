// Next-token cross-entropy over fp32 logits.
#pragma once
#include <cstdint>

namespace dsmoe::ops {

// logits [n, V], targets [n] (a negative target means "ignore": loss 0, no gradient) -> losses [n]
void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t n, int64_t V);
// dlogits += scale * (softmax(logits) - onehot(target)) for every non-ignored row
// (scale = 1 / number of counted tokens, further divided by gradient-accumulation steps).
void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, float scale, int64_t n,
                            int64_t V);
// Training's fused pass: losses as cross_entropy_forward, and dlogits = softmax(logits) -
// onehot(target), UNSCALED and OVERWRITTEN (ignored rows: zeros), from one visit of each row while it
// is in cache (the caller applies the loss scale later, e.g. as the lm_head GEMMs' alpha).
void cross_entropy_forward_backward(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                                    int64_t n, int64_t V);

}  // namespace dsmoe::ops
