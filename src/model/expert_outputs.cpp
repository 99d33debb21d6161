#include "model/expert_outputs.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include <fmt/format.h>

#include "core/buffers.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "ops/experts.h"

namespace dsmoe {

void ExpertOutputStats::accumulate(const ModelConfig& m, const LayerView& W, int64_t layer, const float* x,
                                   const float* out, const float* shared, int64_t N) {
  DSMOE_ASSERT(sample_every >= 1, "sample_every must be >= 1");
  const int64_t E = m.n_routed_experts, H = m.hidden_size, I = m.moe_intermediate_size;
  auto it = std::find_if(layers.begin(), layers.end(), [&](const ExpertOutputLayerStats& s) { return s.layer >= layer; });
  if (it == layers.end() || it->layer != layer) {
    ExpertOutputLayerStats s;
    s.layer = layer;
    s.n_experts = E;
    s.has_shared = shared != nullptr;
    s.cos_sum.assign(E * E, 0.0);
    it = layers.insert(it, std::move(s));
  }
  if (it->has_shared != (shared != nullptr))
    fail("expert output stats of layer {}: shared experts ran in some forwards and not in others (reset the stats "
         "when the routing override changes)", layer);
  ExpertOutputLayerStats& s = *it;
  // Norms of the shared and routed parts, in double (N small sums of H squares).
  for (int64_t t = 0; t < N; ++t) {
    double sh = 0, ro = 0;
    for (int64_t h = 0; h < H; ++h) {
      const double sv = shared ? (double)shared[t * H + h] : 0.0;
      const double rv = (double)out[t * H + h] - sv;
      sh += sv * sv;
      ro += rv * rv;
    }
    s.shared_norm_sum += std::sqrt(sh);
    s.routed_norm_sum += std::sqrt(ro);
  }
  s.tokens += N;
  // Every routed expert on the sampled tokens: expert e's rows are [e * S, (e + 1) * S), the same
  // S token rows each, through the training forward's grouped expert op.
  // Local tokens first, first + sample_every, ...: those whose index in the whole batch is a multiple.
  const int64_t first = (sample_every - token_offset % sample_every) % sample_every;
  const int64_t S = N > first ? (N - first + sample_every - 1) / sample_every : 0;
  if (S == 0 || E < 1) return;
  fit(xs_, E * S * H);
  fit(gu_, E * S * 2 * I);
  fit(act_, E * S * I);
  fit(ys_, E * S * H);
  offsets_.resize(E + 1);
  for (int64_t e = 0; e <= E; ++e) offsets_[e] = e * S;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t j = 0; j < S; ++j)
      std::copy(x + (first + j * sample_every) * H, x + (first + j * sample_every) * H + H, xs_.data() + (e * S + j) * H);
  ops::experts_forward(ys_.data(), gu_.data(), act_.data(), xs_.data(), W.experts_gate_up, W.experts_down,
                       offsets_.data(), ops::ExpertsShape{E, H, I});
  std::vector<double> norm(E);
  for (int64_t j = 0; j < S; ++j) {
    for (int64_t e = 0; e < E; ++e) {
      const float* y = ys_.data() + (e * S + j) * H;
      double n2 = 0;
      for (int64_t h = 0; h < H; ++h) n2 += (double)y[h] * (double)y[h];
      norm[e] = std::sqrt(n2);
    }
    for (int64_t a = 0; a < E; ++a)
      for (int64_t b = a + 1; b < E; ++b) {
        const float* ya = ys_.data() + (a * S + j) * H;
        const float* yb = ys_.data() + (b * S + j) * H;
        double dot = 0;
        for (int64_t h = 0; h < H; ++h) dot += (double)ya[h] * (double)yb[h];
        const double c = norm[a] > 0 && norm[b] > 0 ? dot / (norm[a] * norm[b]) : 0.0;
        s.cos_sum[a * E + b] += c;
        s.cos_sum[b * E + a] += c;
      }
  }
  s.sampled_tokens += S;
}

void all_reduce_sum(ExpertOutputStats& s, Communicator& world) {
  if (world.size() == 1) return;
  std::string shape;
  for (const ExpertOutputLayerStats& l : s.layers)
    shape += fmt::format("layer {}: {} experts, shared {}\n", l.layer, l.n_experts, l.has_shared);
  check_same_on_all_ranks(world, shape, "the expert output statistics' layers");
  std::vector<int64_t> counts;
  std::vector<double> sums;
  for (const ExpertOutputLayerStats& l : s.layers) {
    counts.insert(counts.end(), {l.tokens, l.sampled_tokens});
    sums.insert(sums.end(), {l.shared_norm_sum, l.routed_norm_sum});
    sums.insert(sums.end(), l.cos_sum.begin(), l.cos_sum.end());
  }
  world.all_reduce_sum(counts.data(), (int64_t)counts.size());
  world.all_reduce_sum(sums.data(), (int64_t)sums.size());
  const int64_t* c = counts.data();
  const double* d = sums.data();
  for (ExpertOutputLayerStats& l : s.layers) {
    l.tokens = *c++;
    l.sampled_tokens = *c++;
    l.shared_norm_sum = *d++;
    l.routed_norm_sum = *d++;
    std::copy(d, d + l.cos_sum.size(), l.cos_sum.begin());
    d += l.cos_sum.size();
  }
}

double mean_pairwise_cosine(const ExpertOutputLayerStats& s) {
  const int64_t E = s.n_experts;
  if (s.sampled_tokens == 0 || E < 2) return std::numeric_limits<double>::quiet_NaN();
  double sum = 0;
  for (int64_t a = 0; a < E; ++a)
    for (int64_t b = a + 1; b < E; ++b) sum += s.cos_sum[a * E + b];
  return sum / ((double)s.sampled_tokens * (double)(E * (E - 1) / 2));
}

}  // namespace dsmoe
