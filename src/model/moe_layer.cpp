#include "model/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/buffers.h"
#include "core/checked.h"
#include "core/error.h"
#include "model/moe_infer.h"
#include "ops/balance_loss.h"
#include "ops/experts.h"
#include "ops/linear.h"
#include "ops/router.h"

namespace dsmoe {


static ops::BalanceShape balance_shape(const ModelConfig& m, int64_t B, int64_t T) {
  return ops::BalanceShape{B, T, m.n_routed_experts, m.num_experts_per_tok, m.seq_aux};
}

void validate_routing_override(const ModelConfig& m, const RoutingOverride& o) {
  if (!o.active()) return;
  if (!m.is_moe())
    fail("routing override: the model is dense (n_routed_experts is 0), there is no routing to change");
  if (o.disable_top < 0) fail("routing override: disable_top must be >= 0, got {}", o.disable_top);
  if (o.top_k < 0) fail("routing override: top_k must be >= 1 (or 0 = the config's {}), got {}", m.num_experts_per_tok, o.top_k);
  if (m.router_type == RouterType::Hash && (o.disable_top != 0 || o.top_k != 0))
    fail("routing override: disable_top and top_k need routing probabilities to rank experts by; router_type "
         "hash routes each token to one fixed expert (only drop_shared applies), got disable_top {} top_k {}",
         o.disable_top, o.top_k);
  if (o.disable_top + o.k(m) > m.n_routed_experts)
    fail("routing override: disable_top ({}) + top_k ({}) must be <= n_routed_experts ({})", o.disable_top, o.k(m),
         m.n_routed_experts);
  if (m.group_limited() && o.disable_top != 0)
    fail("routing override: disable_top needs plain top-k routing; topk_method \"group_limited_greedy\" ranks experts "
         "within the kept groups (disabling the best experts would also change which groups are kept), got disable_top {}",
         o.disable_top);
  if (m.group_limited() && o.k(m) > m.topk_group * (m.n_routed_experts / m.n_group))
    fail("routing override: top_k ({}) must be <= topk_group ({}) x the {} experts of a group with topk_method "
         "\"group_limited_greedy\"", o.k(m), m.topk_group, m.n_routed_experts / m.n_group);
  if (o.drop_shared && m.n_shared_experts <= 0)
    fail("routing override: drop_shared, but the model has no shared experts (n_shared_experts is 0)");
}

nlohmann::json routing_override_json(const ModelConfig& m, const RoutingOverride& o) {
  return {{"disable_top", o.disable_top}, {"top_k", m.is_moe() ? o.k(m) : 0}, {"drop_shared", o.drop_shared}};
}

// The aux losses enabled by the config, on the group-level f (and f'') in `a` and the mean probs P.
static void balance_losses(const ModelConfig& m, const MoeActivations& a, const double* P, int64_t groups,
                           MoeStats& stats) {
  const int64_t E = m.n_routed_experts;
  if (m.aux_loss_alpha > 0)
    stats.expert_aux = ops::expert_balance_loss(a.freq.data(), P, groups, E, (float)m.aux_loss_alpha);
  if (m.device_aux_alpha > 0)
    stats.device_aux =
        ops::device_balance_loss(a.freq.data(), P, groups, E, m.n_device_groups, (float)m.device_aux_alpha);
  if (m.comm_aux_alpha > 0)
    stats.comm_aux = ops::comm_balance_loss(a.comm_freq.data(), P, groups, E, m.n_device_groups, (float)m.comm_aux_alpha);
}

// Balance statistics of this process's tokens: per sequence (seq_aux) or of the whole batch.
static void local_balance(const ModelConfig& m, const ops::BalanceShape& bs, MoeActivations& a, MoeStats& stats) {
  const int64_t E = m.n_routed_experts, D = m.n_device_groups;
  fit(a.freq, bs.groups() * E);
  ops::balance_frequencies(a.freq.data(), a.ids.data(), bs);
  if (m.comm_aux_alpha > 0) {
    std::vector<int64_t> sent((size_t)(bs.groups() * D));
    ops::comm_sent_counts(sent.data(), a.ids.data(), bs, D);
    fit(a.comm_freq, bs.groups() * D);
    ops::comm_frequencies(a.comm_freq.data(), sent.data(), bs.groups(), D, m.comm_device_limit(), bs.group_tokens());
  }
  balance_losses(m, a, ops::balance_prob_means(a.probs.data(), bs).data(), bs.groups(), stats);
}

// Batch-level balance statistics over every rank's slice of the batch: the selection counts, the
// tokens sent per device and the probability sums, added over ranks, give each rank the
// single-process f, f'' and P.
static void batch_balance_over_ranks(const ModelConfig& m, const ops::BalanceShape& bs, Communicator& batch,
                                     MoeActivations& a, MoeStats& stats) {
  const int64_t E = m.n_routed_experts, D = m.n_device_groups, n = bs.group_tokens(), total = n * batch.size();
  std::vector<int64_t> counts = stats.load;  // all top-k choices, as balance_frequencies counts them
  batch.all_reduce_sum(counts.data(), E);
  fit(a.freq, E);
  ops::balance_frequencies_from_counts(a.freq.data(), counts.data(), E, m.num_experts_per_tok, total);
  if (m.comm_aux_alpha > 0) {
    std::vector<int64_t> sent((size_t)D);
    ops::comm_sent_counts(sent.data(), a.ids.data(), bs, D);
    batch.all_reduce_sum(sent.data(), D);
    fit(a.comm_freq, D);
    ops::comm_frequencies(a.comm_freq.data(), sent.data(), 1, D, m.comm_device_limit(), total);
  }
  std::vector<double> P = ops::balance_prob_means(a.probs.data(), bs);
  for (auto& p : P) p *= (double)n;
  batch.all_reduce_sum(P.data(), E);
  for (auto& p : P) p /= (double)total;
  balance_losses(m, a, P.data(), 1, stats);
}

void capacity_keep_mask_for_batch(const ModelConfig& m, const int32_t* ids, const float* scores, int64_t N, int64_t k,
                                  Communicator* batch, std::vector<uint8_t>& keep) {
  const int64_t R = batch ? batch->size() : 1, rank = batch ? batch->rank() : 0;
  const int64_t slots = checked_mul(N, k, "routed slots"), total = checked_mul(slots, R, "routed slots");
  std::vector<int32_t> all_ids(ids, ids + slots);
  std::vector<float> all_scores(scores, scores + slots);
  if (R > 1) {  // every rank's (expert id, affinity bits), exactly, in rank order
    std::vector<int64_t> packed((size_t)slots), gathered((size_t)total);
    for (int64_t s = 0; s < slots; ++s) {
      uint32_t bits;
      std::memcpy(&bits, &scores[s], sizeof bits);
      packed[(size_t)s] = (int64_t)(((uint64_t)(uint32_t)ids[s] << 32) | bits);
    }
    batch->all_gather(packed.data(), gathered.data(), slots);
    all_ids.resize((size_t)total);
    all_scores.resize((size_t)total);
    for (int64_t s = 0; s < total; ++s) {
      const uint64_t v = (uint64_t)gathered[(size_t)s];
      const uint32_t bits = (uint32_t)(v & 0xffffffffu);
      all_ids[(size_t)s] = (int32_t)(v >> 32);
      std::memcpy(&all_scores[(size_t)s], &bits, sizeof bits);
    }
  }
  const int64_t E = m.n_routed_experts, D = m.n_device_groups;
  const int64_t units = D > 1 ? D : E;  // the capacity's unit: a device, or (one device) an expert
  if (D > 1)
    for (auto& id : all_ids) id = (int32_t)(id / (E / D));
  const int64_t capacity = (int64_t)std::ceil(m.capacity_factor * (double)total / (double)units);
  std::vector<uint8_t> all_keep((size_t)total);
  ops::capacity_keep_mask(all_keep.data(), all_ids.data(), all_scores.data(), N * R, k, units, capacity);
  keep.assign(all_keep.begin() + rank * slots, all_keep.begin() + (rank + 1) * slots);
}

void moe_forward(const ModelConfig& m, const LayerView& P, const float* x, const int32_t* tokens, int64_t B,
                 int64_t T, bool compute_aux, float* out, MoeActivations& a, MoeStats& stats,
                 const RoutingOverride& ovr, const MoeParallel& par, const ops::MatmulMode& mode) {
  // The balance losses and backward assume the config's k and full routing.
  DSMOE_ASSERT(!(compute_aux && ovr.active()), "routing override with compute_aux");
  const int64_t N = B * T, H = m.hidden_size, E = m.n_routed_experts, k = ovr.k(m);
  const int64_t I = m.moe_intermediate_size;
  fit(a.ids, N * k);
  fit(a.gates, N * k);
  // --- Router ---
  const bool learned = m.router_type == RouterType::SoftmaxTopK;
  if (learned) {
    fit(a.router_logits, N * E);
    fit(a.probs, N * E);
    fit(a.vals, N * k);
    ops::linear_forward(a.router_logits.data(), x, P.router, N, H, E, mode);
    ops::softmax_forward(a.probs.data(), a.router_logits.data(), N, E);
    ops::topk_forward(a.ids.data(), a.vals.data(), a.probs.data(), N, E, k, ovr.disable_top, m.routing_groups(),
                      m.routing_topk_groups());
    ops::gate_norm_forward(a.gates.data(), a.vals.data(), N, k, m.norm_topk_prob && k > 1);
  } else {
    ops::hash_route(a.ids.data(), a.gates.data(), tokens, N, E);
  }
  stats.load.assign(E, 0);
  for (int64_t i = 0; i < N * k; ++i) stats.load[a.ids[i]]++;
  // How far the router is from uniform over training (metrics.jsonl "routing_entropy").
  stats.entropy_sum = 0;
  stats.entropy_tokens = 0;
  if (learned && compute_aux) {
    stats.entropy_sum = ops::routing_entropy_sum(a.probs.data(), N, E);
    stats.entropy_tokens = N;
  }
  // --- Balance losses (on all top-k choices, as the official code) ---
  stats.expert_aux = stats.device_aux = stats.comm_aux = 0;
  if (learned && compute_aux && (m.aux_loss_alpha > 0 || m.device_aux_alpha > 0 || m.comm_aux_alpha > 0)) {
    const auto bs = balance_shape(m, B, T);
    if (par.batch_ranks() > 1 && !m.seq_aux) batch_balance_over_ranks(m, bs, *par.batch, a, stats);
    else local_balance(m, bs, a, stats);
  }
  // --- Dispatcher ---
  const uint8_t* keep = nullptr;
  stats.dropped = 0;
  if (m.capacity_factor > 0 && compute_aux) {
    capacity_keep_mask_for_batch(m, a.ids.data(), learned ? a.vals.data() : a.gates.data(), N, k, par.batch, a.keep);
    keep = a.keep.data();
    for (auto b : a.keep) stats.dropped += !b;
  }
  LocalTokenDispatcher local(E);
  TokenDispatcher& dispatcher = par.dispatcher ? *par.dispatcher : local;
  dispatcher.dispatch(a.xs, x, a.ids.data(), keep, N, k, E, H, a.dispatch);
  const int64_t rows = (int64_t)a.xs.size() / H;
  fit(a.gu, rows * 2 * I);
  fit(a.act, rows * I);
  fit(a.ys, rows * H);
  // --- Experts (this process's) ---
  ops::experts_forward(a.ys.data(), a.gu.data(), a.act.data(), a.xs.data(), P.experts_gate_up, P.experts_down,
                       a.dispatch.expert_offsets.data(), ops::ExpertsShape{dispatcher.local_experts(), H, I}, mode);
  // --- Combine ---
  dispatcher.combine(out, a.ys.data(), a.gates.data(), H, a.dispatch);
  // --- Shared experts: one SwiGLU MLP over all tokens (the E == 1 case of the experts op) ---
  if (m.n_shared_experts > 0 && !ovr.drop_shared) {
    const int64_t Is = m.shared_inter();
    fit(a.shared_gu, N * 2 * Is);
    fit(a.shared_act, N * Is);
    fit(a.shared_out, N * H);
    const int64_t all[2] = {0, N};
    ops::experts_forward(a.shared_out.data(), a.shared_gu.data(), a.shared_act.data(), x, P.shared_gate_up,
                         P.shared_down, all, ops::ExpertsShape{1, H, Is}, mode);
    const float* so = a.shared_out.data();
#pragma omp parallel for simd schedule(static) if (N * H > (1 << 16))
    for (int64_t i = 0; i < N * H; ++i) out[i] += so[i];
  }
}

void moe_forward_token_major(const ModelConfig& m, const LayerView& P, const float* x, const int32_t* tokens,
                             int64_t N, float* out, MoeStats& stats) {
  MoeInferScratch s;
  moe_infer(m, moe_weights_f32(m, P), x, tokens, N, out, stats, s, MoeDispatch::TokenMajor);
}

void moe_backward(const ModelConfig& m, const LayerView& P, const LayerView& G, const float* x, const float* dout,
                  int64_t B, int64_t T, bool with_aux, float* dx, MoeActivations& a, MoeScratch& s,
                  const MoeParallel& par, const ops::MatmulMode& mode) {
  const int64_t N = B * T, H = m.hidden_size, E = m.n_routed_experts, k = m.num_experts_per_tok;
  const int64_t I = m.moe_intermediate_size, rows = (int64_t)a.xs.size() / H;
  LocalTokenDispatcher local(E);
  TokenDispatcher& dispatcher = par.dispatcher ? *par.dispatcher : local;
  // Shared experts.
  if (m.n_shared_experts > 0) {
    const int64_t Is = m.shared_inter();
    fit(s.expert_scratch, std::max<size_t>(s.expert_scratch.size(), N * 3 * Is));
    const int64_t all[2] = {0, N};
    ops::experts_backward(dx, G.shared_gate_up, G.shared_down, dout, x, a.shared_gu.data(), a.shared_act.data(),
                          P.shared_gate_up, P.shared_down, all, ops::ExpertsShape{1, H, Is},
                          s.expert_scratch.data(), mode);
  }
  // Combine -> experts -> gather.
  zero(s.dys, rows * H);
  zero(s.dgates, N * k);
  dispatcher.combine_backward(s.dys.data(), s.dgates.data(), dout, a.ys.data(), a.gates.data(), H, a.dispatch);
  zero(s.dxs, rows * H);
  fit(s.expert_scratch, std::max<size_t>(s.expert_scratch.size(), rows * 3 * I));
  ops::experts_backward(s.dxs.data(), G.experts_gate_up, G.experts_down, s.dys.data(), a.xs.data(), a.gu.data(),
                        a.act.data(), P.experts_gate_up, P.experts_down, a.dispatch.expert_offsets.data(),
                        ops::ExpertsShape{dispatcher.local_experts(), H, I}, s.expert_scratch.data(), mode);
  dispatcher.dispatch_backward(dx, s.dxs.data(), H, a.dispatch);
  if (m.router_type != RouterType::SoftmaxTopK) return;  // hash gates are constants
  // Router: gates -> top-k values -> probs (+ aux-loss gradient) -> logits -> x and router weight.
  zero(s.dvals, N * k);
  ops::gate_norm_backward(s.dvals.data(), s.dgates.data(), a.vals.data(), N, k, m.norm_topk_prob && k > 1);
  zero(s.dprobs, N * E);
  ops::topk_backward(s.dprobs.data(), s.dvals.data(), a.ids.data(), N, E, k);
  if (with_aux) {
    // This rank's share of the loss's gradient (MoeParallel::batch); 1 in one process. With the
    // batch-level loss, a.freq is the f of the whole batch and bs this rank's slice.
    const float share = 1.0f / (float)par.batch_ranks();
    const auto bs = balance_shape(m, B, T);
    if (m.aux_loss_alpha > 0)
      ops::expert_balance_backward(s.dprobs.data(), a.freq.data(), bs, (float)m.aux_loss_alpha, share);
    if (m.device_aux_alpha > 0)
      ops::device_balance_backward(s.dprobs.data(), a.freq.data(), bs, m.n_device_groups,
                                   (float)m.device_aux_alpha, share);
    if (m.comm_aux_alpha > 0)
      ops::comm_balance_backward(s.dprobs.data(), a.comm_freq.data(), bs, m.n_device_groups, (float)m.comm_aux_alpha,
                                 share);
  }
  zero(s.dlogits, N * E);
  ops::softmax_backward(s.dlogits.data(), s.dprobs.data(), a.probs.data(), N, E);
  ops::linear_backward(dx, G.router, s.dlogits.data(), x, P.router, N, H, E, 1.0f, mode);
}

}  // namespace dsmoe
