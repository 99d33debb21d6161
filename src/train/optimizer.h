// AdamW over the model's parameter buffer: moments in buffers of the same layout; weight decay only
// for tensors flagged by ParamLayout (matrices, not norm weights). Gradient clipping by global norm.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"

namespace dsmoe {

class AdamW {
 public:
  AdamW(const ParamLayout& layout, const TrainConfig& t);
  // One update with learning rate lr; `step` is the 1-based optimizer step (bias correction).
  void step(float* params, const float* grads, double lr, int64_t step);
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }

 private:
  const ParamLayout& layout_;
  TrainConfig t_;
  std::vector<float> m_, v_;
};

// Global L2 norm of the gradient (accumulated in double, in a fixed order: deterministic).
double grad_norm(const std::vector<float>& grads);
// Scales grads by max_norm / (norm + 1e-6) when norm > max_norm (torch.nn.utils.clip_grad_norm_).
void clip_grads(std::vector<float>& grads, double norm, double max_norm);
// Name of the first parameter tensor whose gradient holds NaN or Inf, or "" if all are finite.
std::string first_nonfinite(const ParamLayout& layout, const std::vector<float>& buf);

}  // namespace dsmoe
