#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/buffers.h"
#include "core/error.h"
#include "core/gemm.h"
#include "core/gemm_kernel.h"
#include "core/rng.h"
#include "ops/attention.h"
#include "ops/bf16_gemm.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/experts.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "model/decoder_layer.h"

namespace dsmoe {


Model::Model(const ModelConfig& cfg, ExpertShard shard) : cfg_(cfg), layout_(cfg, shard) {
  // A config within validate()'s bounds can still describe more parameters than memory holds: say
  // so, instead of std::bad_alloc / length_error with no numbers.
  try {
    params_.assign(layout_.total(), 0.0f);
  } catch (const std::exception&) {
    fail("cannot allocate the model's {} parameters ({:.1f} GiB of fp32): the config (vocab_size {}, hidden_size {}, "
         "{} layers) describes a model too large for this machine",
         layout_.total(), (double)layout_.total() * 4 / (1 << 30), cfg.vocab_size, cfg.hidden_size,
         cfg.num_hidden_layers);
  }
  P_ = layout_.view(params_.data());
  rope_ = ops::rope_table(cfg.max_position_embeddings, cfg.head_dim(), cfg.rope_theta);
}

void Model::set_expert_output_stats(ExpertOutputStats* s) {
  if (s && !layout_.shard().holds_all_of(cfg_.n_routed_experts))
    fail("expert output statistics run every routed expert on sampled tokens: this process holds {} of the {} "
         "routed experts (expert parallelism)", layout_.shard().count, cfg_.n_routed_experts);
  expert_output_stats_ = s;
}

void Model::init_weights(Rng& rng, double std) {
  bf16_stale_ = true;
  const ExpertShard& shard = layout_.shard();
  const ParamLayout whole(cfg_);
  size_t here = 0;  // this layout's tensors, in the same order as the whole model's
  for (const auto& t : whole.tensors()) {
    const ParamTensor& mine = layout_.tensors()[here++];
    float* p = params_.data() + mine.offset;
    if (!t.weight_decay) {
      std::fill(p, p + t.numel, 1.0f);  // norm weights
    } else if (!t.routed_experts || shard.all()) {
      for (int64_t i = 0; i < t.numel; ++i) p[i] = (float)(std * rng.normal());
    } else {  // every expert's draws, kept for this shard's
      const int64_t per_expert = t.numel / t.shape[0], lo = shard.first * per_expert, hi = lo + mine.numel;
      for (int64_t i = 0; i < t.numel; ++i) {
        const float v = (float)(std * rng.normal());
        if (i >= lo && i < hi) p[i - lo] = v;
      }
    }
  }
}

void Model::ensure_buffers(int64_t B, int64_t T) {
  if (B == B_ && T == T_) return;
  if (T > cfg_.max_position_embeddings)
    fail("sequence length {} exceeds max_position_embeddings ({})", T, cfg_.max_position_embeddings);
  B_ = B;
  T_ = T;
  const int64_t N = B * T, H = cfg_.hidden_size, D = cfg_.head_dim();
  const int64_t Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads;
  acts_.resize(cfg_.num_hidden_layers);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    LayerActs& a = acts_[l];
    fit(a.x, N * H);
    fit(a.ln1, N * H);
    fit(a.rstd1, N);
    fit(a.q, N * Hq * D);
    fit(a.k, N * Hkv * D);
    fit(a.v, N * Hkv * D);
    fit(a.probs, B * Hq * T * T);
    fit(a.att, N * Hq * D);
    fit(a.h, N * H);
    fit(a.ln2, N * H);
    fit(a.rstd2, N);
    if (!cfg_.is_moe_layer(l)) {
      fit(a.gu, N * 2 * cfg_.intermediate_size);
      fit(a.act, N * cfg_.intermediate_size);
    }
  }
  fit(x_final_, N * H);
  fit(lnf_, N * H);
  fit(rstdf_, N);
  fit(logits_, N * cfg_.vocab_size);
  fit(losses_, N);
  fit(ffn_out_, N * H);
  fit(pos_, N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) pos_[b * T + t] = (int32_t)t;
}

void Model::set_precision(ops::Precision p) {
  if (p == ops::Precision::BF16 && !ops::bf16_gemm_available())
    fail("precision bf16 needs a CPU with AVX512_BF16 (this one has none, or DSMOE_NO_AVX512_BF16 is set)");
  mode_.precision = p;
  bf16_stale_ = true;
  if (p == ops::Precision::F32) {
    mode_ = ops::MatmulMode{};
    params_bf16_ = {};
    packs_.reset();
  }
}

const ops::MatmulMode& Model::matmul_mode() {
  // (A copied Model points at the other's buffers until it rounds its own.)
  if (mode_.precision == ops::Precision::BF16 && (bf16_stale_ || mode_.params != params_.data())) {
    // Once per optimizer step: every weight rounded here, none at the products (ops/matmul.h).
    params_bf16_.resize(params_.size());
    const int64_t n = (int64_t)params_.size(), chunk = int64_t(1) << 16;
    const float* src = params_.data();
    uint16_t* dst = params_bf16_.data();
#pragma omp parallel for schedule(static) if (n > chunk)
    for (int64_t c0 = 0; c0 < n; c0 += chunk) ops::round_to_bf16(dst + c0, src + c0, std::min(chunk, n - c0));
    if (!packs_) packs_ = std::make_shared<ops::Bf16WeightPacks>();
    packs_->invalidate();
    mode_.params = src;
    mode_.params_bf16 = dst;
    mode_.count = n;
    mode_.packs = packs_.get();
    bf16_stale_ = false;
  }
  return mode_;
}

void Model::set_routing_override(const RoutingOverride& o) {
  validate_routing_override(cfg_, o);
  override_ = o;
}

ForwardResult Model::forward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t T, bool compute_aux) {
  if (compute_aux && override_.active())
    fail("forward with compute_aux (training) while a routing override is set (disable_top {}, top_k {}, "
         "drop_shared {}): overrides are for evaluation only; clear it with set_routing_override({{}})",
         override_.disable_top, override_.top_k, override_.drop_shared);
  forward_done_ = false;  // until this forward completes, there is nothing consistent to differentiate
  ensure_buffers(B, T);
  const int64_t N = B * T, H = cfg_.hidden_size, V = cfg_.vocab_size, D = cfg_.head_dim();
  const int64_t Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads;
  const float eps = (float)cfg_.rms_norm_eps;
  for (int64_t i = 0; i < N; ++i)
    if (tokens[i] < 0 || tokens[i] >= V) fail("token id {} at position {} is outside the vocabulary [0, {})", tokens[i], i, V);
  tokens_.assign(tokens, tokens + N);
  if (targets) targets_.assign(targets, targets + N);
  else targets_.clear();
  moe_stats_.assign(cfg_.num_hidden_layers, MoeStats{});
  last_forward_overridden_ = override_.active();
  const ops::MatmulMode& mode = matmul_mode();
  const bool exact = mode.precision == ops::Precision::F32;

  ops::embedding_forward(acts_[0].x.data(), tokens, P_.embed, N, H);
  ForwardResult r;
  const ops::AttentionShape as{B, T, T, Hq, Hkv, D};
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    LayerActs& a = acts_[l];
    const LayerView& W = P_.layers[l];
    float* out = l + 1 < cfg_.num_hidden_layers ? acts_[l + 1].x.data() : x_final_.data();
    // Attention over the whole batch, saving the probabilities for backward.
    const auto attend = [&](float* att, const float* q, const float* k, const float* v) {
      ops::attention_forward(att, a.probs.data(), q, k, v, as);
    };
    const auto ffn = [&](float* ffn_out, const float* ln2) {
      if (cfg_.is_moe_layer(l) && !compute_aux && !targets && N * cfg_.num_experts_per_tok < cfg_.n_routed_experts &&
          !override_.active() && !routing_stats_ &&
          !expert_output_stats_ && !parallel_.dispatcher && exact) {
        // Decode-sized batch at inference: fewer token-expert pairs than experts, so sorting rows by
        // expert buys nothing; run each token's experts directly.
        moe_forward_token_major(cfg_, W, ln2, tokens, N, ffn_out, moe_stats_[l]);
      } else if (cfg_.is_moe_layer(l)) {
        moe_forward(cfg_, W, ln2, tokens, B, T, compute_aux, ffn_out, a.moe, moe_stats_[l], override_, parallel_, mode);
        if (routing_stats_)
          routing_stats_->accumulate(l, a.moe.ids.data(), cfg_.has_router_weights() ? a.moe.probs.data() : nullptr, B, T,
                                     cfg_.n_routed_experts, override_.k(cfg_));
        if (expert_output_stats_) {
          const bool shared = cfg_.n_shared_experts > 0 && !override_.drop_shared;
          expert_output_stats_->accumulate(cfg_, W, l, ln2, ffn_out, shared ? a.moe.shared_out.data() : nullptr, N);
        }
        r.expert_aux += moe_stats_[l].expert_aux;
        r.device_aux += moe_stats_[l].device_aux;
        r.comm_aux += moe_stats_[l].comm_aux;
      } else {
        const int64_t all[2] = {0, N};
        ops::experts_forward(ffn_out, a.gu.data(), a.act.data(), ln2, W.mlp_gate_up, W.mlp_down,
                             all, ops::ExpertsShape{1, H, cfg_.intermediate_size}, mode);
      }
    };
    const DecoderLayerBuffers buf{a.x.data(), a.ln1.data(), a.rstd1.data(), a.q.data(), a.k.data(), a.v.data(),
                                  a.att.data(), a.h.data(), a.ln2.data(), a.rstd2.data(), ffn_out_.data(), out};
    decoder_layer_forward(cfg_, attention_weights(cfg_, W, &mode), N, pos_.data(), rope_, buf, attend, ffn);
  }
  ops::rmsnorm_forward(lnf_.data(), rstdf_.data(), x_final_.data(), P_.final_norm, N, H, eps);
  if (targets)
    for (int64_t i = 0; i < N; ++i)
      if (targets[i] >= V) fail("target id {} at position {} is outside the vocabulary [0, {})", targets[i], i, V);
  dlogits_ready_ = targets && compute_aux;
  if (dlogits_ready_) {
    // Training: lm_head, loss and the loss's gradient one block of rows at a time, while the block's
    // logits (~1 MB) are still in cache: OpenBLAS's zeroing of C, the cross-entropy pass and the
    // gradient pass then hit L2 instead of streaming the whole [N, V] logits through memory three
    // more times (and backward no longer zeroes [N, V] gradients to accumulate into).
    fit(d_logits_, N * V);
    const int64_t rows = std::max<int64_t>(16, ((int64_t(1) << 18) / V) / 16 * 16);
    // fp32 with core/gemm_kernel: the lm_head laid out once for all the blocks, so that no block's
    // product copies the [V, H] weight again (OpenBLAS packed it per block: half the time of the
    // lm_head's forward at hidden 64). Where every block's product runs on the kernel, in the
    // column panels it reads (read from a plain transposed [H, V] copy, each panel was a gather of H
    // rows 4V bytes apart, again for every block); otherwise transposed. The same products, the
    // same rounding.
    const int64_t first = std::min(rows, N), last = N % rows ? N % rows : first;
    const bool packed =
        exact && gemm_is_exact(false, false, first, V, H) && gemm_is_exact(false, false, last, V, H);
    const bool transposed = !packed && exact && gemm_exact_available() && gemm_exact_applies(first, V, H);
    if (packed || transposed) fit(lm_head_t_, H * V);
    if (packed) pack_b_panels(lm_head_t_.data(), P_.lm_head, H, V, H);
    if (transposed) transpose_for_gemm(lm_head_t_.data(), P_.lm_head, H, V, H);
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
      const int64_t n = std::min(rows, N - r0);
      if (packed)
        gemm_panels(n, V, H, 1.0f, lnf_.data() + r0 * H, H, lm_head_t_.data(), 0.0f, logits_.data() + r0 * V, V);
      else if (transposed && gemm_exact_applies(n, V, H))
        gemm(false, false, n, V, H, 1.0f, lnf_.data() + r0 * H, H, lm_head_t_.data(), V, 0.0f, logits_.data() + r0 * V,
             V);
      else
        ops::linear_forward(logits_.data() + r0 * V, lnf_.data() + r0 * H, P_.lm_head, n, H, V, mode);
      ops::cross_entropy_forward_backward(losses_.data() + r0, d_logits_.data() + r0 * V, logits_.data() + r0 * V,
                                          targets + r0, n, V);
    }
  } else {
    ops::linear_forward(logits_.data(), lnf_.data(), P_.lm_head, N, H, V, mode);
    if (targets) ops::cross_entropy_forward(losses_.data(), logits_.data(), targets, N, V);
  }
  if (targets) {
    double sum = 0;
    for (int64_t i = 0; i < N; ++i)
      if (targets[i] >= 0) {
        sum += losses_[i];
        r.n_targets++;
      }
    r.lm_loss = r.n_targets ? sum / (double)r.n_targets : 0.0;
  }
  r.aux_computed = compute_aux;
  last_forward_aux_ = compute_aux;
  forward_done_ = true;
  return r;
}

void Model::zero_grads() {
  ensure_grad_buffers();
  zero_span(grads_.data(), grads_.size());
}

void Model::ensure_grad_buffers() {
  if (grads_.size() != params_.size()) {
    grads_.assign(params_.size(), 0.0f);
    G_ = layout_.view(grads_.data());
  }
}

void Model::backward(float lm_scale, bool with_aux, const std::function<void(int64_t)>& grads_final_from) {
  if (!forward_done_) fail("Model::backward: no completed forward to differentiate (call forward with targets first)");
  if (targets_.empty()) fail("Model::backward: the last forward had no targets (nothing to differentiate)");
  if (with_aux && !last_forward_aux_)
    fail("Model::backward(with_aux = true): the last forward ran with compute_aux = false, so it computed no "
         "aux-loss statistics; run the forward with compute_aux or call backward with with_aux = false");
  // An overridden forward saved activations for a different k (and no shared-expert activations).
  if (last_forward_overridden_) fail("backward after a forward with a routing override: overrides are for evaluation only");
  ensure_grad_buffers();
  const int64_t B = B_, T = T_, N = B * T, H = cfg_.hidden_size, V = cfg_.vocab_size, D = cfg_.head_dim();
  const int64_t Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads;
  const ops::AttentionShape as{B, T, T, Hq, Hkv, D};
  const ops::MatmulMode& mode = mode_;  // the forward's (its bf16 copy of the weights, if any)

  zero(d_ln_, N * H);
  if (dlogits_ready_) {  // softmax - onehot from the training forward; the loss scale goes in as alpha
    ops::linear_backward(d_ln_.data(), G_.lm_head, d_logits_.data(), lnf_.data(), P_.lm_head, N, H, V, lm_scale, mode);
  } else {
    zero(d_logits_, N * V);
    ops::cross_entropy_backward(d_logits_.data(), logits_.data(), targets_.data(), lm_scale, N, V);
    ops::linear_backward(d_ln_.data(), G_.lm_head, d_logits_.data(), lnf_.data(), P_.lm_head, N, H, V, 1.0f, mode);
  }
  zero(d_resid_, N * H);  // dL/d(residual stream), carried down through the layers
  ops::rmsnorm_backward(d_resid_.data(), G_.final_norm, d_ln_.data(), x_final_.data(), P_.final_norm, rstdf_.data(), N, H);
  // The layout is embed, layers 0..L-1, final_norm, lm_head (model/params.h), each layer one range
  // starting at its input norm: what is done so far is everything from the start of what came last.
  auto done_from = [&](const float* first_tensor) {
    if (grads_final_from) grads_final_from((int64_t)(first_tensor - grads_.data()));
  };
  done_from(G_.final_norm);

  for (int64_t l = cfg_.num_hidden_layers - 1; l >= 0; --l) {
    LayerActs& a = acts_[l];
    const LayerView &W = P_.layers[l], &G = G_.layers[l];
    // FFN block: out = h + ffn(rmsnorm(h)); d_resid is dL/dout and becomes dL/dh.
    zero(d_ln_, N * H);
    if (cfg_.is_moe_layer(l)) {
      moe_backward(cfg_, W, G, a.ln2.data(), d_resid_.data(), B, T, with_aux, d_ln_.data(), a.moe, moe_scratch_,
                   parallel_, mode);
    } else {
      const int64_t I = cfg_.intermediate_size, all[2] = {0, N};
      fit(mlp_scratch_, std::max<size_t>(mlp_scratch_.size(), N * 3 * I));
      ops::experts_backward(d_ln_.data(), G.mlp_gate_up, G.mlp_down, d_resid_.data(), a.ln2.data(), a.gu.data(),
                            a.act.data(), W.mlp_gate_up, W.mlp_down, all, ops::ExpertsShape{1, H, I},
                            mlp_scratch_.data(), mode);
    }
    ops::rmsnorm_backward(d_resid_.data(), G.post_norm, d_ln_.data(), a.h.data(), W.post_norm, a.rstd2.data(), N, H);
    // Attention block: h = x + o(attn(rope(q), rope(k), v)); d_resid becomes dL/dx.
    zero(d_att_, N * Hq * D);
    ops::linear_backward(d_att_.data(), G.o, d_resid_.data(), a.att.data(), W.o, N, Hq * D, H, 1.0f, mode);
    zero(d_q_, N * Hq * D);
    zero(d_k_, N * Hkv * D);
    zero(d_v_, N * Hkv * D);
    ops::attention_backward(d_q_.data(), d_k_.data(), d_v_.data(), d_att_.data(), a.probs.data(), a.q.data(),
                            a.k.data(), a.v.data(), as);
    ops::rope_backward(d_q_.data(), pos_.data(), rope_, N, Hq);
    ops::rope_backward(d_k_.data(), pos_.data(), rope_, N, Hkv);
    zero(d_ln_, N * H);
    ops::linear_backward(d_ln_.data(), G.q, d_q_.data(), a.ln1.data(), W.q, N, H, Hq * D, 1.0f, mode);
    ops::linear_backward(d_ln_.data(), G.k, d_k_.data(), a.ln1.data(), W.k, N, H, Hkv * D, 1.0f, mode);
    ops::linear_backward(d_ln_.data(), G.v, d_v_.data(), a.ln1.data(), W.v, N, H, Hkv * D, 1.0f, mode);
    ops::rmsnorm_backward(d_resid_.data(), G.input_norm, d_ln_.data(), a.x.data(), W.input_norm, a.rstd1.data(), N, H);
    done_from(G.input_norm);
  }
  ops::embedding_backward(G_.embed, d_resid_.data(), tokens_.data(), N, H);
  done_from(G_.embed);
}

}  // namespace dsmoe
