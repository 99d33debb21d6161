// Model and training configuration. Model keys are Hugging Face DeepseekConfig's (model_type
// "deepseek"), with the same defaults for absent keys, so a config.json of a released checkpoint
// loads as is; dsmoe adds a few model keys of its own (router kind, capacity, device groups) and a
// "training" object.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "ops/precision.h"

namespace dsmoe {

enum class RouterType { SoftmaxTopK, Hash };
// DeepSeek-V2's `topk_method`: plain top-k over all routed experts, or device-limited routing
// (experts in n_group contiguous groups; keep the topk_group groups whose best expert scores
// highest, then top-k among the kept groups' experts only).
enum class TopkMethod { Greedy, GroupLimitedGreedy };

// Upper bounds of the config keys: each is far above what a real model needs (DeepSeek-V3: hidden
// 7168, 61 layers, 256 experts, vocab 129280, 163840 positions) and low enough that every size
// derived from them (parameter counts, activations, FLOPs) fits in int64 without overflow.
// A value past its bound is refused by validate(), naming the key, the value and the bound.
namespace limits {
inline constexpr int64_t kMaxVocabSize = int64_t(1) << 24;         // vocab_size, token ids (also the tokenizer's)
inline constexpr int64_t kMaxHiddenSize = 65536;                   // hidden_size
inline constexpr int64_t kMaxIntermediateSize = int64_t(1) << 20;  // intermediate_size, moe_intermediate_size
inline constexpr int64_t kMaxLayers = 1024;                        // num_hidden_layers, first_k_dense_replace, moe_layer_freq
inline constexpr int64_t kMaxHeads = 1024;                         // num_attention_heads, num_key_value_heads
inline constexpr int64_t kMaxExperts = 4096;                       // n_routed_experts, n_shared_experts
inline constexpr int64_t kMaxPositions = int64_t(1) << 20;         // max_position_embeddings
inline constexpr int64_t kMaxSteps = int64_t(1) << 40;             // training.steps (and the intervals)
inline constexpr int64_t kMaxBatch = int64_t(1) << 20;             // training.batch_size, grad_accum, eval_batches
}  // namespace limits
enum class Schedule { Step, Cosine, Constant };

struct ModelConfig {
  // --- Hugging Face DeepseekConfig keys (defaults of configuration_deepseek.py) ---
  int64_t vocab_size = 102400;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t moe_intermediate_size = 1407;
  int64_t num_hidden_layers = 30;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // absent -> num_attention_heads
  int64_t n_shared_experts = 0;      // null in HF = no shared experts
  int64_t n_routed_experts = 0;      // null in HF = dense model
  int64_t num_experts_per_tok = 0;
  int64_t moe_layer_freq = 1;
  int64_t first_k_dense_replace = 0;
  bool norm_topk_prob = false;
  std::string scoring_func = "softmax";
  double aux_loss_alpha = 0.001;
  bool seq_aux = true;
  std::string hidden_act = "silu";
  int64_t max_position_embeddings = 2048;
  double initializer_range = 0.02;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  double rope_theta = 10000.0;
  int64_t bos_token_id = 100000;
  int64_t eos_token_id = 100001;
  // --- dsmoe model keys ---
  RouterType router_type = RouterType::SoftmaxTopK;  // "router_type": "softmax_topk" | "hash"
  double capacity_factor = 0.0;    // 0 = dropless; > 0: each expert keeps ceil(cf * N * k / E) slots
  int64_t n_device_groups = 1;     // D of the device-level balance loss
  double device_aux_alpha = 0.0;   // alpha2 of the device-level balance loss
  // --- DeepSeek-V2 keys (HF DeepseekV2Config names): device-limited routing, communication loss ---
  TopkMethod topk_method = TopkMethod::Greedy;  // "topk_method": "greedy" | "group_limited_greedy"
  int64_t n_group = 1;             // groups of contiguous routed experts (the devices M is counted in)
  int64_t topk_group = 1;          // M: groups a token's experts may lie in
  double comm_aux_alpha = 0.0;     // alpha3 of the communication balance loss (over the D devices)

  bool is_moe() const { return n_routed_experts > 0; }
  bool is_moe_layer(int64_t i) const {
    return is_moe() && i >= first_k_dense_replace && i % moe_layer_freq == 0;
  }
  int64_t moe_layer_count() const {
    int64_t n = 0;
    for (int64_t l = 0; l < num_hidden_layers; ++l) n += is_moe_layer(l);
    return n;
  }
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  int64_t shared_inter() const { return moe_intermediate_size * n_shared_experts; }
  bool has_router_weights() const { return router_type == RouterType::SoftmaxTopK; }
  // The (n_group, topk_group) routing applies: {1, 1} (every expert in one group) for greedy.
  bool group_limited() const { return topk_method == TopkMethod::GroupLimitedGreedy; }
  int64_t routing_groups() const { return group_limited() ? n_group : 1; }
  int64_t routing_topk_groups() const { return group_limited() ? topk_group : 1; }
  // M of the communication loss for the D = n_device_groups devices: the most devices one token's
  // experts can lie on (ops/balance_loss.h comm_device_limit).
  int64_t comm_device_limit() const;
};

struct TrainConfig {
  double lr = 1e-3;            // peak learning rate
  double min_lr = -1;          // cosine floor; < 0 -> 0.1 * lr
  int64_t warmup_steps = 100;
  int64_t steps = 1000;
  Schedule schedule = Schedule::Step;  // "step" (paper: x0.316 at 80% and 90%), "cosine", "constant"
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  double grad_clip = 1.0;      // 0 = off
  int64_t batch_size = 8;      // sequences per micro-batch
  int64_t seq_len = 256;
  int64_t grad_accum = 1;
  uint64_t seed = 1234;
  double init_std = -1;        // < 0 -> initializer_range
  int64_t log_interval = 10;
  int64_t eval_interval = 0;   // 0 -> only at the end
  int64_t eval_batches = 16;
  int64_t checkpoint_interval = 0;  // 0 -> only at the end
  // "f32" | "bf16": the inputs of every projection's product in forward and backward (ops/matmul.h);
  // fp32 master weights, gradients and AdamW moments either way.
  ops::Precision precision = ops::Precision::F32;

  double min_lr_value() const { return min_lr < 0 ? 0.1 * lr : min_lr; }
};

// How training spreads over the processes of `mpirun -np P dsmoe train` ("parallel" in a config, or
// --ep): not a property of the model, so it is not saved with it (a run resumes with any layout).
struct ParallelConfig {
  int64_t expert_parallel_size = 1;  // E: ranks that split every MoE layer's routed experts (P / E replicas)
  // Start each gradient bucket's all-reduce as soon as backward has finished it (train/gradient_sync.h),
  // instead of after the whole backward. The same sums, the same bits; only the timing differs. On by
  // default: measured faster on the quiet 2-core machine (bench/RESULTS.md, "gradient overlap").
  bool overlap_grad_sync = true;
};

struct Config {
  ModelConfig model;
  TrainConfig train;
  ParallelConfig parallel;
};

// Parse and validate. `source` names the file in error messages. Errors name the key and the
// constraint it broke (dsmoe::Error).
Config parse_config(const nlohmann::json& j, const std::string& source);
Config load_config(const std::string& path);
// The JSON of a config file with its "extends" chain resolved (a file's keys replace its base's;
// "training" merges key by key). load_config = parse_config(load_config_json(path), path).
nlohmann::json load_config_json(const std::string& path);
// Throws if any value violates a constraint (called by parse_config; public for programmatic configs).
void validate(const Config& c, const std::string& source);
// E (the config's parallel.expert_parallel_size or --ep, named `key`) against the model: in [1, limits],
// 1 for a dense model, dividing n_routed_experts. Throws dsmoe::Error naming `key` and both numbers.
void validate_expert_parallel(const ModelConfig& m, int64_t ep, const std::string& key, const std::string& source);
// The config as JSON: HF keys (loadable by the official code) plus ours and the training object.
nlohmann::json to_json(const Config& c);

const char* router_type_name(RouterType r);
const char* topk_method_name(TopkMethod t);
const char* schedule_name(Schedule s);

// Learning rate for 1-based optimizer step s.
double learning_rate(const TrainConfig& t, int64_t step);

}  // namespace dsmoe
