#include "infer/infer_weights.h"

#include <algorithm>
#include <cstring>
#include <string_view>
#include <unordered_map>

#include "core/error.h"
#include "model/model.h"

namespace dsmoe {

using ops::WeightMat;
using ops::WType;

bool InferenceWeights::is_matrix(const ParamTensor& t) {
  const std::string suffix = ".router";
  const bool router = t.name.size() >= suffix.size() && t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) == 0;
  return t.shape.size() >= 2 && !router;
}

// Slots with shapes and types but no storage yet.
InferenceWeights InferenceWeights::layout_only(const ModelConfig& cfg, WType type, ExpertShard shard) {
  InferenceWeights w;
  w.cfg_ = cfg;
  w.shard_ = shard;
  w.type_ = type;
  ParamLayout layout(cfg, shard);
  w.slots_.resize(layout.tensors().size());
  for (size_t i = 0; i < layout.tensors().size(); ++i) {
    Slot& s = w.slots_[i];
    s.t = layout.tensors()[i];
    s.is_matrix = is_matrix(s.t);
    const int64_t cols = s.t.shape.back();
    s.mat = WeightMat{s.is_matrix ? type : WType::F32, s.t.numel / cols, cols, nullptr, nullptr};
  }
  return w;
}

InferenceWeights InferenceWeights::allocate(const ModelConfig& cfg, WType type, ExpertShard shard) {
  InferenceWeights w = layout_only(cfg, type, shard);
  for (Slot& s : w.slots_) {
    s.data = HugeBuffer((size_t)(s.mat.rows * s.mat.row_bytes()));  // zero-filled
    s.mat.data = s.data.data();
    if (WeightMat::has_scales(s.mat.type)) {
      s.scales = HugeBuffer((size_t)(s.mat.rows * s.mat.blocks()) * 2);
      s.mat.scales = (const uint16_t*)s.scales.data();
    }
  }
  w.build_views();
  return w;
}

InferenceWeights InferenceWeights::view(Model& model) {
  InferenceWeights w = layout_only(model.config(), WType::F32, model.layout().shard());
  for (Slot& s : w.slots_) s.mat.data = model.params().data() + s.t.offset;
  w.build_views();
  return w;
}

InferenceWeights InferenceWeights::convert(const Model& model, WType type) {
  InferenceWeights w = allocate(model.config(), type, model.layout().shard());
  for (Slot& s : w.slots_)
    ops::quantize_rows(s.mat.type, model.params().data() + s.t.offset, s.mat.rows, s.mat.cols, s.mutable_data(),
                       s.mutable_scales());
  return w;
}

void InferenceWeights::set_compute(ops::Compute c) {
  DSMOE_ASSERT((c == ops::Compute::F32 || type_ != WType::F32) &&
                   ((c != ops::Compute::INT8 && c != ops::Compute::MIXED) || type_ == WType::Q8 || type_ == WType::Q4),
               "compute {} with {} weights", ops::compute_name(c), ops::wtype_name(type_));
  compute_ = c;
  for (Slot& s : slots_)
    if (s.is_matrix) s.mat.compute = c;
  build_views();
}

InferenceWeights::Slot& InferenceWeights::slot_at(int64_t offset) {
  // Slots are in layout order (offsets never decrease): the last one starting at or before
  // `offset`, stepping back over empty ones that share its start.
  auto it = std::upper_bound(slots_.begin(), slots_.end(), offset,
                             [](int64_t o, const Slot& s) { return o < s.t.offset; });
  while (it != slots_.begin()) {
    --it;
    if (offset < it->t.offset + it->t.numel) return *it;
    if (it->t.numel != 0) break;
  }
  fail("internal: no parameter tensor holds offset {}", offset);
}

int64_t InferenceWeights::bytes() const {
  int64_t b = 0;
  for (const Slot& s : slots_) b += s.mat.bytes();
  return b;
}

void InferenceWeights::build_views() {
  std::unordered_map<std::string_view, const Slot*> by_name;  // a dozen lookups per layer
  for (const Slot& s : slots_) by_name.emplace(s.t.name, &s);
  auto find = [&](const std::string& name) -> const Slot* {
    const auto it = by_name.find(name);
    return it == by_name.end() ? nullptr : it->second;
  };
  auto mat = [&](const std::string& name) -> WeightMat {
    const Slot* s = find(name);
    return s ? s->mat : WeightMat{type_, 0, 0, nullptr, nullptr};
  };
  auto vec = [&](const std::string& name) -> const float* {
    const Slot* s = find(name);
    return s ? (const float*)s->mat.data : nullptr;
  };
  embed_ = mat("embed");
  lm_head_ = mat("lm_head");
  final_norm_ = vec("final_norm");
  layers_.clear();
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    const std::string p = "layers." + std::to_string(l);
    Layer L;
    L.attn = AttentionWeights{vec(p + ".input_norm"), mat(p + ".q"), mat(p + ".k"), mat(p + ".v"), mat(p + ".o"),
                              vec(p + ".post_norm")};
    L.mlp_gate_up = mat(p + ".mlp.gate_up");
    L.mlp_down = mat(p + ".mlp.down");
    L.moe.router = vec(p + ".router");
    L.moe.experts_gate_up = mat(p + ".experts.gate_up");  // [E, 2I, H] viewed as [E*2I, H]
    L.moe.experts_down = mat(p + ".experts.down");        // [E, H, I] viewed as [E*H, I]
    L.moe.shared_gate_up = mat(p + ".shared.gate_up");
    L.moe.shared_down = mat(p + ".shared.down");
    layers_.push_back(L);
  }
}

}  // namespace dsmoe
