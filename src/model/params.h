// All parameters of a model live in ONE fp32 buffer (llm.c style); gradients and the optimizer's
// moments are buffers of the same layout. ParamLayout names every tensor of that buffer and maps it
// to the Hugging Face checkpoint names, each of which is a contiguous slice:
//   - gate_proj / up_proj of a dense MLP, the shared experts and every routed expert are the two row
//     halves of one fused [2I, H] "gate_up" matrix (one GEMM gives both);
//   - routed experts are stored as one 3-D tensor per projection, experts the slowest dimension
//     ([E, 2I, H] and [E, H, I]), so HF's per-expert tensors are consecutive blocks.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/config.h"

namespace dsmoe {

struct ParamTensor {
  std::string name;              // dsmoe name, e.g. "layers.3.experts.gate_up"
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0; // into the flat buffer (floats)
  bool weight_decay = true;      // matrices decay; norm weights do not
  bool routed_experts = false;   // a routed-expert tensor: split over the ranks of an expert-parallel group
};

// The routed experts one process holds under expert parallelism: global ids [first, first + count).
// count < 0: all of them (one process, or data parallelism only).
struct ExpertShard {
  int64_t first = 0, count = -1;
  bool all() const { return count < 0; }
  bool holds_all_of(int64_t n_experts) const { return all() || count >= n_experts; }
};

struct HfTensor {
  std::string name;              // Hugging Face name, e.g. "model.layers.3.mlp.experts.5.up_proj.weight"
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0;
};

// Pointers of one layer into a buffer laid out by ParamLayout (parameters or gradients).
struct LayerView {
  float *input_norm, *q, *k, *v, *o, *post_norm;
  float *mlp_gate_up = nullptr, *mlp_down = nullptr;                     // dense layer
  float *router = nullptr, *experts_gate_up = nullptr, *experts_down = nullptr;  // MoE layer
  float *shared_gate_up = nullptr, *shared_down = nullptr;               // MoE layer with shared experts
};
struct ModelView {
  float* embed;
  std::vector<LayerView> layers;
  float* final_norm;
  float* lm_head;
};

class ParamLayout {
 public:
  // With a shard, every MoE layer's expert tensors hold only its experts ([count, 2I, H],
  // [count, H, I]) and hf_tensors() names only theirs (with their global ids).
  explicit ParamLayout(const ModelConfig& m, ExpertShard shard = {});
  const ExpertShard& shard() const { return shard_; }
  int64_t total() const { return total_; }
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  const std::vector<HfTensor>& hf_tensors() const { return hf_; }
  const ParamTensor* find(const std::string& name) const;
  const HfTensor* find_hf(const std::string& hf_name) const;
  ModelView view(float* base) const;

 private:
  int64_t add(const std::string& name, std::vector<int64_t> shape, bool decay, bool routed_experts = false);
  void add_hf(const std::string& name, std::vector<int64_t> shape, int64_t offset);
  ModelConfig m_;
  ExpertShard shard_;
  std::vector<ParamTensor> tensors_;
  std::vector<HfTensor> hf_;
  // Name -> position, for find() and find_hf(): loaders look up every tensor by name, and a model
  // has tens of thousands (deepseek-moe-16b: 28 layers x 64 experts x 3); a linear search made
  // loading quadratic (a GGUF with a large layer and expert count took seconds before its first check).
  std::unordered_map<std::string, size_t> index_, hf_index_;
  int64_t total_ = 0;
};

// Parameter and compute counts as the paper counts them (see `dsmoe info`).
struct ModelStats {
  int64_t total_params;
  int64_t activated_params;          // per token: everything but the routed experts not chosen
  int64_t activated_nonembed_params; // activated minus the embedding table (a lookup, not a matmul)
  double train_flops_per_token;      // 6 * activated_nonembed + 12 * layers * hidden * seq (attention)
  double fwd_flops_per_token;        // one third of the above
};
ModelStats model_stats(const ModelConfig& m, int64_t seq_len);

}  // namespace dsmoe
