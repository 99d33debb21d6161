#include "model/moe_infer.h"

#include "core/buffers.h"

#include <algorithm>

#include "ops/experts.h"
#include "ops/linear.h"
#include "ops/router.h"

namespace dsmoe {

using ops::WeightMat;

MoeWeights moe_weights_f32(const ModelConfig& m, const LayerView& L) {
  const int64_t H = m.hidden_size, E = m.n_routed_experts, I = m.moe_intermediate_size;
  const int64_t Is = m.n_shared_experts > 0 ? m.shared_inter() : 0;
  MoeWeights w;
  w.router = L.router;
  w.experts_gate_up = WeightMat::f32(L.experts_gate_up, E * 2 * I, H);
  w.experts_down = WeightMat::f32(L.experts_down, E * H, I);
  w.shared_gate_up = WeightMat::f32(L.shared_gate_up, 2 * Is, H);
  w.shared_down = WeightMat::f32(L.shared_down, H, Is);
  return w;
}

void moe_infer(const ModelConfig& m, const MoeWeights& W, const float* x, const int32_t* tokens, int64_t N,
               float* out, MoeStats& stats, MoeInferScratch& s, MoeDispatch d, TokenDispatcher* dispatcher) {
  const int64_t H = m.hidden_size, E = m.n_routed_experts, k = m.num_experts_per_tok;
  const int64_t I = m.moe_intermediate_size;
  // --- Router (the training layer's ops) ---
  grow(s.ids, N * k);
  grow(s.gates, N * k);
  if (N == 0) {
    // No rows of this rank (expert parallelism: it still serves the other ranks' rows below).
  } else if (m.router_type == RouterType::SoftmaxTopK) {
    grow(s.logits, N * E);
    grow(s.probs, N * E);
    grow(s.vals, N * k);
    ops::linear_forward(s.logits.data(), x, W.router, N, H, E);
    ops::softmax_forward(s.probs.data(), s.logits.data(), N, E);
    ops::topk_forward(s.ids.data(), s.vals.data(), s.probs.data(), N, E, k, 0, m.routing_groups(),
                      m.routing_topk_groups());
    ops::gate_norm_forward(s.gates.data(), s.vals.data(), N, k, m.norm_topk_prob && k > 1);
  } else {
    ops::hash_route(s.ids.data(), s.gates.data(), tokens, N, E);
  }
  stats = MoeStats{};
  stats.load.assign(E, 0);
  for (int64_t i = 0; i < N * k; ++i) stats.load[s.ids[i]]++;
  auto gate_up = [&](int64_t e) { return W.experts_gate_up.slice_rows(e * 2 * I, 2 * I); };
  auto down = [&](int64_t e) { return W.experts_down.slice_rows(e * H, H); };

  if (!dispatcher && (d == MoeDispatch::TokenMajor || (d == MoeDispatch::Auto && N * k < E))) {
    grow(s.y, k * H);
    grow(s.gu, k * 2 * I);
    grow(s.act, k * I);
    for (int64_t t = 0; t < N; ++t) {
      // A token's k experts in parallel, one thread each (both of an expert's GEMVs then run
      // single-threaded, with no barrier between them: at batch 1 the barriers of 2k small parallel
      // products cost more than they split). Summed in slot order: deterministic.
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < k; ++j) {
        const int64_t e = s.ids[t * k + j];
        ops::swiglu_mlp_forward(s.y.data() + j * H, s.gu.data() + j * 2 * I, s.act.data() + j * I, x + t * H,
                                gate_up(e), down(e), 1);
      }
      float* o = out + t * H;
      std::fill(o, o + H, 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        const float g = s.gates[t * k + j];
        for (int64_t i = 0; i < H; ++i) o[i] += g * s.y[j * H + i];
      }
    }
  } else {
    LocalTokenDispatcher local(E);
    TokenDispatcher& dispatch = dispatcher ? *dispatcher : local;
    dispatch.dispatch(s.xs, x, s.ids.data(), nullptr, N, k, E, H, s.dispatch);
    const int64_t rows = (int64_t)s.xs.size() / H;
    grow(s.gu, rows * 2 * I);
    grow(s.act, rows * I);
    grow(s.ys, rows * H);
    // The training layer's experts op, in this storage: experts in parallel, one thread each.
    ops::experts_forward(s.ys.data(), s.gu.data(), s.act.data(), s.xs.data(), W.experts_gate_up, W.experts_down,
                         s.dispatch.expert_offsets.data(), dispatch.local_experts());
    dispatch.combine(out, s.ys.data(), s.gates.data(), H, s.dispatch);
  }
  // --- Shared experts: one SwiGLU MLP over all tokens, added unweighted ---
  if (m.n_shared_experts > 0 && N > 0) {
    const int64_t Is = m.shared_inter();
    grow(s.shared, N * H);
    grow(s.gu, N * 2 * Is);
    grow(s.act, N * Is);
    ops::swiglu_mlp_forward(s.shared.data(), s.gu.data(), s.act.data(), x, W.shared_gate_up, W.shared_down, N);
    for (int64_t i = 0; i < N * H; ++i) out[i] += s.shared[i];
  }
}

}  // namespace dsmoe
