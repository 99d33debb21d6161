// The weights of a model in their inference storage: every matrix (embedding, attention q/k/v/o,
// dense FFN, shared and routed experts, lm_head) in ONE storage type (f32, bf16, q8 or q4: see
// ops/qlinear.h), the router and the norm weights in fp32 (tiny, and routing decisions and
// normalisation stay full precision). One tensor per ParamLayout tensor, in the same order and with
// the same fused/stacked layout (gate_up, experts stacked on the slowest axis), so a Hugging Face
// tensor is a range of rows of one of them whatever the storage (blocks run along the input axis).
//
// The weights are the only resident copy: a checkpoint is read tensor by tensor (memory-mapped,
// dropped after loading) into them; an fp32 Model can also be viewed without any copy.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/huge_buffer.h"

#include "model/config.h"
#include "model/decoder_layer.h"
#include "model/moe_infer.h"
#include "model/params.h"
#include "ops/qlinear.h"

namespace dsmoe {

class Model;

class InferenceWeights {
 public:
  // One parameter tensor. Matrices (is_matrix) are [rows, cols] = [numel / last dim, last dim] in the
  // weights' type; the others are fp32 vectors/matrices used as is.
  struct Slot {
    ParamTensor t;
    bool is_matrix = false;
    ops::WeightMat mat;                 // type, rows, cols, data, scales (fp32 slots: type F32)
    HugeBuffer data;                    // owned storage (empty for views); huge pages: streamed per token
    HugeBuffer scales;
    uint8_t* mutable_data() { return (uint8_t*)mat.data; }
    uint16_t* mutable_scales() { return (uint16_t*)mat.scales; }
  };
  struct Layer {
    AttentionWeights attn;
    ops::WeightMat mlp_gate_up, mlp_down;  // dense layers
    MoeWeights moe;                        // MoE layers
  };

  // Zero-filled storage for `cfg`, matrices in `type`. With a shard (expert parallelism), every MoE
  // layer's routed-expert tensors hold only the shard's experts (ParamLayout's layout): the others
  // are neither stored nor read.
  static InferenceWeights allocate(const ModelConfig& cfg, ops::WType type, ExpertShard shard = {});
  // fp32 views of the model's parameters (no copy; the model must outlive the result; its shard). Writable
  // through the slots (the checkpoint loader fills a Model this way).
  static InferenceWeights view(Model& model);
  static InferenceWeights view(const Model& model) { return view(const_cast<Model&>(model)); }
  // The model's weights converted to `type` (f32: a copy).
  static InferenceWeights convert(const Model& model, ops::WType type);

  InferenceWeights(InferenceWeights&&) = default;
  InferenceWeights& operator=(InferenceWeights&&) = default;
  InferenceWeights(const InferenceWeights&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const ExpertShard& shard() const { return shard_; }
  ops::WType type() const { return type_; }
  // Activation precision of every matrix's prefill products (see ops::Compute; BF16 needs weights
  // other than f32, INT8 q8 / q4 ones: checked by the caller's choice, infer/compute_mode.h).
  void set_compute(ops::Compute c);
  ops::Compute compute() const { return compute_; }
  const ops::WeightMat& embed() const { return embed_; }
  const ops::WeightMat& lm_head() const { return lm_head_; }
  const float* final_norm() const { return final_norm_; }
  const Layer& layer(int64_t l) const { return layers_[l]; }
  std::vector<Slot>& slots() { return slots_; }
  const std::vector<Slot>& slots() const { return slots_; }
  // The slot holding parameter offset `offset` (floats, ParamLayout numbering).
  Slot& slot_at(int64_t offset);
  int64_t bytes() const;  // storage of every slot (data + scales)

  // Matrices in storage: every tensor of rank >= 2 but the router.
  static bool is_matrix(const ParamTensor& t);

 private:
  InferenceWeights() = default;
  static InferenceWeights layout_only(const ModelConfig& cfg, ops::WType type, ExpertShard shard);
  void build_views();
  ModelConfig cfg_;
  ExpertShard shard_;
  ops::WType type_ = ops::WType::F32;
  ops::Compute compute_ = ops::Compute::F32;
  std::vector<Slot> slots_;
  ops::WeightMat embed_, lm_head_;
  const float* final_norm_ = nullptr;
  std::vector<Layer> layers_;
};

}  // namespace dsmoe
