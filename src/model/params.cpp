#include "model/params.h"

#include "core/checked.h"
#include "core/error.h"

namespace dsmoe {

// A programmatic config may skip validate()'s bounds: the sizes are still checked, so a too-large
// model is an error naming the tensor rather than a wrapped (negative or tiny) parameter count.
static int64_t prod(const std::vector<int64_t>& s, const std::string& name) {
  return checked_numel(s, "parameter tensor '" + name + "' size");
}

int64_t ParamLayout::add(const std::string& name, std::vector<int64_t> shape, bool decay, bool routed_experts) {
  ParamTensor t{name, shape, total_, prod(shape, name), decay, routed_experts};
  total_ = checked_add(total_, t.numel, "total parameter count");
  index_.emplace(name, tensors_.size());
  tensors_.push_back(t);
  return t.offset;
}

void ParamLayout::add_hf(const std::string& name, std::vector<int64_t> shape, int64_t offset) {
  hf_index_.emplace(name, hf_.size());
  hf_.push_back(HfTensor{name, shape, offset, prod(shape, name)});
}

ParamLayout::ParamLayout(const ModelConfig& m, ExpertShard shard) : m_(m), shard_(shard) {
  if (!shard.all())
    DSMOE_ASSERT(shard.first >= 0 && shard.count >= 1 && shard.first + shard.count <= m.n_routed_experts,
                 "expert shard [{}, {}) of {} routed experts", shard.first, shard.first + shard.count,
                 m.n_routed_experts);
  const int64_t H = m.hidden_size, V = m.vocab_size, D = m.head_dim();
  const int64_t Hq = m.num_attention_heads, Hkv = m.num_key_value_heads;
  add_hf("model.embed_tokens.weight", {V, H}, add("embed", {V, H}, true));
  // A fused [2I, H] gate_up matrix is two HF tensors: gate rows, then up rows.
  auto add_mlp = [&](const std::string& ours, const std::string& hf, int64_t I) {
    int64_t gu = add(ours + ".gate_up", {checked_mul<int64_t>(2, I, ours + ".gate_up rows"), H}, true);
    add_hf(hf + ".gate_proj.weight", {I, H}, gu);
    add_hf(hf + ".up_proj.weight", {I, H}, gu + I * H);
    add_hf(hf + ".down_proj.weight", {H, I}, add(ours + ".down", {H, I}, true));
  };
  for (int64_t l = 0; l < m.num_hidden_layers; ++l) {
    const std::string p = "layers." + std::to_string(l), hp = "model.layers." + std::to_string(l);
    add_hf(hp + ".input_layernorm.weight", {H}, add(p + ".input_norm", {H}, false));
    add_hf(hp + ".self_attn.q_proj.weight", {Hq * D, H}, add(p + ".q", {Hq * D, H}, true));
    add_hf(hp + ".self_attn.k_proj.weight", {Hkv * D, H}, add(p + ".k", {Hkv * D, H}, true));
    add_hf(hp + ".self_attn.v_proj.weight", {Hkv * D, H}, add(p + ".v", {Hkv * D, H}, true));
    add_hf(hp + ".self_attn.o_proj.weight", {H, Hq * D}, add(p + ".o", {H, Hq * D}, true));
    add_hf(hp + ".post_attention_layernorm.weight", {H}, add(p + ".post_norm", {H}, false));
    if (!m.is_moe_layer(l)) {
      add_mlp(p + ".mlp", hp + ".mlp", m.intermediate_size);
      continue;
    }
    const int64_t E = m.n_routed_experts, I = m.moe_intermediate_size;
    checked_numel({E, 2, I, H}, p + ".experts size");  // the offsets below are then in range
    if (m.has_router_weights()) add_hf(hp + ".mlp.gate.weight", {E, H}, add(p + ".router", {E, H}, true));
    const int64_t first = shard.all() ? 0 : shard.first, here = shard.all() ? E : shard.count;
    int64_t gu = add(p + ".experts.gate_up", {here, 2 * I, H}, true, true);
    int64_t dn = add(p + ".experts.down", {here, H, I}, true, true);
    for (int64_t e = 0; e < here; ++e) {
      const std::string he = hp + ".mlp.experts." + std::to_string(first + e);
      add_hf(he + ".gate_proj.weight", {I, H}, gu + e * 2 * I * H);
      add_hf(he + ".up_proj.weight", {I, H}, gu + e * 2 * I * H + I * H);
      add_hf(he + ".down_proj.weight", {H, I}, dn + e * H * I);
    }
    if (m.n_shared_experts > 0) add_mlp(p + ".shared", hp + ".mlp.shared_experts", m.shared_inter());
  }
  add_hf("model.norm.weight", {H}, add("final_norm", {H}, false));
  add_hf("lm_head.weight", {V, H}, add("lm_head", {V, H}, true));
}

const ParamTensor* ParamLayout::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const HfTensor* ParamLayout::find_hf(const std::string& name) const {
  const auto it = hf_index_.find(name);
  return it == hf_index_.end() ? nullptr : &hf_[it->second];
}

ModelView ParamLayout::view(float* base) const {
  auto at = [&](const std::string& name) -> float* {
    const ParamTensor* t = find(name);
    DSMOE_ASSERT(t, "no parameter {}", name);
    return base + t->offset;
  };
  auto maybe = [&](const std::string& name) -> float* {
    const ParamTensor* t = find(name);
    return t ? base + t->offset : nullptr;
  };
  ModelView v;
  v.embed = at("embed");
  for (int64_t l = 0; l < m_.num_hidden_layers; ++l) {
    const std::string p = "layers." + std::to_string(l);
    LayerView L{at(p + ".input_norm"), at(p + ".q"), at(p + ".k"), at(p + ".v"), at(p + ".o"), at(p + ".post_norm")};
    L.mlp_gate_up = maybe(p + ".mlp.gate_up");
    L.mlp_down = maybe(p + ".mlp.down");
    L.router = maybe(p + ".router");
    L.experts_gate_up = maybe(p + ".experts.gate_up");
    L.experts_down = maybe(p + ".experts.down");
    L.shared_gate_up = maybe(p + ".shared.gate_up");
    L.shared_down = maybe(p + ".shared.down");
    v.layers.push_back(L);
  }
  v.final_norm = at("final_norm");
  v.lm_head = at("lm_head");
  return v;
}

ModelStats model_stats(const ModelConfig& m, int64_t seq_len) {
  ParamLayout layout(m);
  ModelStats s{};
  s.total_params = layout.total();
  const int64_t H = m.hidden_size, E = m.n_routed_experts, I = m.moe_intermediate_size;
  int64_t inactive = 0;
  for (int64_t l = 0; l < m.num_hidden_layers; ++l)
    if (m.is_moe_layer(l))  // bounded by total_params, which the layout computed with checks
      inactive += (E - m.num_experts_per_tok) * 3 * H * I;
  s.activated_params = s.total_params - inactive;
  s.activated_nonembed_params = s.activated_params - m.vocab_size * H;
  s.train_flops_per_token =
      6.0 * (double)s.activated_nonembed_params + 12.0 * (double)m.num_hidden_layers * (double)H * (double)seq_len;
  s.fwd_flops_per_token = s.train_flops_per_token / 3.0;
  return s;
}

}  // namespace dsmoe
