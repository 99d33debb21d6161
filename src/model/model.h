// The DeepSeekMoE decoder (official modeling_deepseek.py semantics):
//   x = embed(tokens)
//   for each layer: h = x + Attn(RMSNorm(x)); x = h + FFN_or_MoE(RMSNorm(h))
//   logits = lm_head(RMSNorm(x))          (untied, no biases, fp32)
// Every layer has a forward that saves what its hand-written backward needs; backward accumulates
// into the gradient buffer (same layout as the parameters), llm.c style.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "model/config.h"
#include "model/expert_outputs.h"
#include "model/moe_layer.h"
#include "model/params.h"
#include "model/routing_stats.h"
#include "ops/matmul.h"
#include "ops/rope.h"

namespace dsmoe {

class Rng;

struct ForwardResult {
  double lm_loss = 0;        // mean cross-entropy over counted targets (0 if no targets)
  int64_t n_targets = 0;
  double expert_aux = 0;     // summed over MoE layers
  double device_aux = 0;
  double comm_aux = 0;
  bool aux_computed = false;  // the forward had compute_aux: a backward may then take the aux gradients
};

class Model {
 public:
  // With a shard (expert parallelism), the model holds only those routed experts of every MoE layer;
  // run it with a MoeParallel whose dispatcher owns the same experts.
  explicit Model(const ModelConfig& cfg, ExpertShard shard = {});

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  // Mutable access marks the bf16 copy of the weights stale (precision BF16: the next forward
  // rounds them again), so whoever changes the weights (the optimizer step, a checkpoint load, a
  // test) must take them through here, not through a reference kept from before the last forward.
  std::vector<float>& params() {
    bf16_stale_ = true;
    return params_;
  }
  const std::vector<float>& params() const { return params_; }
  std::vector<float>& grads() { return grads_; }  // allocated on first backward
  const ModelView& weights() const { return P_; }

  // normal(0, std) for every matrix, 1 for norm weights. A shard gets the values its experts have in
  // the whole model's initialisation (the same draws in the same order), whatever the layout.
  void init_weights(Rng& rng, double std);

  // tokens [B, T]; targets [B, T] or null (negative = ignored). compute_aux: balance losses (training).
  // Saves activations; logits() is valid afterwards. With an active routing override, compute_aux
  // must be false (throws dsmoe::Error).
  ForwardResult forward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T, bool compute_aux);
  // Backward of the last forward (which must have had targets and no routing override): dlogits =
  // lm_scale * dCE, every aux loss with gradient 1 (when with_aux). Accumulates into grads().
  // Throws dsmoe::Error without a completed forward, or with with_aux after a forward without
  // compute_aux (its aux statistics were not computed: absent on a fresh model, stale otherwise).
  // grads_final_from(o), when given, is called as backward goes down the model, each time every
  // gradient at offsets >= o of grads() is complete (after lm_head and the final norm, after each
  // layer, last with 0 after the embedding): for gradient all-reduces overlapped with backward.
  void backward(float lm_scale, bool with_aux, const std::function<void(int64_t)>& grads_final_from = {});

  // Evaluation-only routing change applied by every later forward without compute_aux (the paper's
  // specialization analyses; see RoutingOverride). Validated here against the config (throws
  // dsmoe::Error naming the field). RoutingOverride{} restores the config's routing.
  void set_routing_override(const RoutingOverride& o);
  const RoutingOverride& routing_override() const { return override_; }
  // Non-owning; null = off (the default: no cost). When set, every forward adds each MoE layer's
  // routing to *s (see RoutingStats), and MoE layers always take the grouped path (the decode-sized
  // token-major path keeps no routing probabilities).
  void set_routing_stats(RoutingStats* s) { routing_stats_ = s; }
  RoutingStats* routing_stats() const { return routing_stats_; }
  // Non-owning; null = off (the default). When set, every forward adds each MoE layer's shared and
  // routed output norms and the routed experts' output similarity to *s (see ExpertOutputStats);
  // MoE layers then take the grouped path too. Refused for a model holding a shard of the experts
  // (it runs every routed expert on the sampled tokens).
  void set_expert_output_stats(ExpertOutputStats* s);
  // Multi-process training (model/moe_layer.h MoeParallel; its pointers are non-owning and must
  // outlive the model's use). The default is one process.
  void set_parallel(const MoeParallel& p) { parallel_ = p; }
  const MoeParallel& parallel() const { return parallel_; }
  void zero_grads();

  // The precision of every projection's products in forward and backward (training.precision;
  // ops/matmul.h). F32 (the default) is the exact reference. BF16 keeps a bf16 copy of the
  // parameters, rounded at the first forward after they changed (once per optimizer step), and
  // rounds the activations at each product; master weights and gradients stay fp32. BF16 needs
  // ops::bf16_gemm_available() (throws dsmoe::Error otherwise; the trainer refuses it first).
  void set_precision(ops::Precision p);
  ops::Precision precision() const { return mode_.precision; }
  // The mode the model's products run in, with the bf16 copy brought up to date: for callers that
  // run the layer ops on the model's weights themselves (benchmarks, tests).
  const ops::MatmulMode& matmul_mode();

  const float* logits() const { return logits_.data(); }  // [B*T, V] of the last forward
  const std::vector<MoeStats>& moe_stats() const { return moe_stats_; }  // per layer (empty for dense)
  // The routing the last grouped forward of MoE layer `layer` saved (ids, gates, keep, ...), for tests
  // and analyses; null for a dense layer.
  const MoeActivations* moe_activations(int64_t layer) const {
    return cfg_.is_moe_layer(layer) ? &acts_.at((size_t)layer).moe : nullptr;
  }

 private:
  struct LayerActs {
    std::vector<float> x;                  // layer input [N, H] (the residual stream)
    std::vector<float> ln1, rstd1, q, k, v, probs, att, h, ln2, rstd2;
    std::vector<float> gu, act;            // dense FFN
    MoeActivations moe;
  };
  void ensure_buffers(int64_t B, int64_t T);
  void ensure_grad_buffers();

  ModelConfig cfg_;
  ParamLayout layout_;
  std::vector<float> params_, grads_;
  ModelView P_, G_;
  ops::RopeTable rope_;

  int64_t B_ = 0, T_ = 0;
  std::vector<int32_t> tokens_, targets_, pos_;
  std::vector<LayerActs> acts_;
  std::vector<float> x_final_, lnf_, rstdf_, logits_, losses_, ffn_out_;
  std::vector<float> lm_head_t_;  // the lm_head transposed [H, V] for the training forward (fp32, core/gemm_kernel)
  std::vector<MoeStats> moe_stats_;
  RoutingOverride override_;
  RoutingStats* routing_stats_ = nullptr;
  ExpertOutputStats* expert_output_stats_ = nullptr;
  MoeParallel parallel_;
  bool last_forward_overridden_ = false;  // its activations do not fit backward
  bool forward_done_ = false;             // a forward completed (a throwing one leaves this false)
  bool last_forward_aux_ = false;         // ... with compute_aux (what backward(with_aux) needs)
  // backward scratch
  std::vector<float> d_resid_, d_ln_, d_att_, d_q_, d_k_, d_v_, d_gu_, d_act_, d_logits_, mlp_scratch_;
  bool dlogits_ready_ = false;  // the last forward (training, with targets) left softmax - onehot in d_logits_
  MoeScratch moe_scratch_;
  ops::MatmulMode mode_;               // precision, and with BF16 the parameters' bf16 copy
  std::vector<uint16_t> params_bf16_;  // that copy (BF16 only)
  std::shared_ptr<ops::Bf16WeightPacks> packs_;  // and its weights in oneDNN's layout (ops/bf16_gemm.h)
  bool bf16_stale_ = true;             // params_ changed since the copy was made
};

}  // namespace dsmoe
