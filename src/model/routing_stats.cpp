#include "model/routing_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include <fmt/format.h>

#include "core/error.h"
#include "dist/communicator.h"
#include "ops/router.h"

namespace dsmoe {

static RoutingLayerStats& layer_slot(std::vector<RoutingLayerStats>& layers, int64_t layer, int64_t E, int64_t k,
                                     bool has_entropy) {
  auto it = std::find_if(layers.begin(), layers.end(), [&](const RoutingLayerStats& s) { return s.layer >= layer; });
  if (it == layers.end() || it->layer != layer) {
    RoutingLayerStats s;
    s.layer = layer;
    s.n_experts = E;
    s.top_k = k;
    s.has_entropy = has_entropy;
    s.load.assign(E, 0);
    s.top1_load.assign(E, 0);
    s.cooc.assign(E * E, 0);
    it = layers.insert(it, std::move(s));
  }
  // Mixing counts of different k (or experts) would make every derived figure meaningless.
  if (it->n_experts != E || it->top_k != k || it->has_entropy != has_entropy)
    fail("routing stats of layer {} hold {} experts with top_k {}, this forward routes {} experts with top_k {}: "
         "reset() the stats when the routing override changes",
         layer, it->n_experts, it->top_k, E, k);
  return *it;
}

void RoutingStats::accumulate(int64_t layer, const int32_t* ids, const float* probs, int64_t B, int64_t T, int64_t E,
                              int64_t k) {
  RoutingLayerStats& s = layer_slot(layers, layer, E, k, probs != nullptr);
  const int64_t N = B * T;
  s.tokens += N;
  for (int64_t t = 0; t < N; ++t) {
    const int32_t* id = ids + t * k;
    s.top1_load[id[0]]++;
    for (int64_t j = 0; j < k; ++j) {
      s.load[id[j]]++;
      for (int64_t i = 0; i < j; ++i) {  // distinct experts: top-k never repeats one
        s.cooc[id[i] * E + id[j]]++;
        s.cooc[id[j] * E + id[i]]++;
      }
    }
  }
  if (probs) s.entropy_sum += ops::routing_entropy_sum(probs, N, E);
  // Locality along each sequence (pairs never straddle two sequences).
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 1; t < T; ++t) {
      const int32_t* cur = ids + (b * T + t) * k;
      const int32_t* prev = cur - k;
      s.adjacent_pairs++;
      s.top1_repeats += cur[0] == prev[0];
      for (int64_t j = 0; j < k; ++j)
        s.overlap_sum += std::count(prev, prev + k, cur[j]);
    }
}

void RoutingStats::merge(const RoutingStats& other) {
  for (const RoutingLayerStats& o : other.layers) {
    RoutingLayerStats& s = layer_slot(layers, o.layer, o.n_experts, o.top_k, o.has_entropy);
    s.tokens += o.tokens;
    for (size_t i = 0; i < s.load.size(); ++i) {
      s.load[i] += o.load[i];
      s.top1_load[i] += o.top1_load[i];
    }
    for (size_t i = 0; i < s.cooc.size(); ++i) s.cooc[i] += o.cooc[i];
    s.entropy_sum += o.entropy_sum;
    s.adjacent_pairs += o.adjacent_pairs;
    s.top1_repeats += o.top1_repeats;
    s.overlap_sum += o.overlap_sum;
  }
}

void all_reduce_sum(RoutingStats& s, Communicator& world) {
  if (world.size() == 1) return;
  // The same layers with the same shapes on every rank, or the sums would mix unrelated counts.
  std::string shape;
  for (const RoutingLayerStats& l : s.layers)
    shape += fmt::format("layer {}: {} experts, top_k {}, entropy {}\n", l.layer, l.n_experts, l.top_k, l.has_entropy);
  check_same_on_all_ranks(world, shape, "the routing statistics' layers");
  std::vector<int64_t> counts;
  std::vector<double> sums;
  for (const RoutingLayerStats& l : s.layers) {
    counts.insert(counts.end(), {l.tokens, l.adjacent_pairs, l.top1_repeats, l.overlap_sum});
    counts.insert(counts.end(), l.load.begin(), l.load.end());
    counts.insert(counts.end(), l.top1_load.begin(), l.top1_load.end());
    counts.insert(counts.end(), l.cooc.begin(), l.cooc.end());
    sums.push_back(l.entropy_sum);
  }
  world.all_reduce_sum(counts.data(), (int64_t)counts.size());
  world.all_reduce_sum(sums.data(), (int64_t)sums.size());
  const int64_t* c = counts.data();
  for (size_t i = 0; i < s.layers.size(); ++i) {
    RoutingLayerStats& l = s.layers[i];
    l.tokens = *c++;
    l.adjacent_pairs = *c++;
    l.top1_repeats = *c++;
    l.overlap_sum = *c++;
    for (auto* v : {&l.load, &l.top1_load, &l.cooc}) {
      std::copy(c, c + v->size(), v->begin());
      c += v->size();
    }
    l.entropy_sum = sums[i];
  }
}

RoutingLayerSummary summarize(const RoutingLayerStats& s, int64_t top_pairs) {
  RoutingLayerSummary r;
  r.layer = s.layer;
  const int64_t E = s.n_experts;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (E == 0 || s.tokens == 0) {
    r.load_max_over_mean = r.load_cv = r.entropy_mean = r.entropy_normalised = nan;
    r.top1_repeat_fraction = r.top1_repeat_chance = r.overlap_mean = nan;
    return r;
  }
  double sum = 0, mx = 0;
  for (int64_t v : s.load) {
    sum += (double)v;
    mx = std::max(mx, (double)v);
  }
  const double mean = sum / (double)E;
  double var = 0;
  for (int64_t v : s.load) var += ((double)v - mean) * ((double)v - mean);
  r.load_max_over_mean = mx / mean;
  r.load_cv = std::sqrt(var / (double)E) / mean;
  r.entropy_mean = s.has_entropy ? s.entropy_sum / (double)s.tokens : nan;
  // ln(1) = 0: a single expert has no choice to spread over.
  r.entropy_normalised = s.has_entropy && E > 1 ? r.entropy_mean / std::log((double)E) : nan;
  double chance = 0;
  for (int64_t v : s.top1_load) chance += ((double)v / (double)s.tokens) * ((double)v / (double)s.tokens);
  r.top1_repeat_chance = chance;
  r.top1_repeat_fraction = s.adjacent_pairs ? (double)s.top1_repeats / (double)s.adjacent_pairs : nan;
  r.overlap_mean = s.adjacent_pairs ? (double)s.overlap_sum / (double)s.adjacent_pairs : nan;
  std::vector<ExpertPair> pairs;
  for (int32_t a = 0; a < E; ++a)
    for (int32_t b = a + 1; b < E; ++b) {
      const int64_t c = s.cooc[a * E + b];
      if (c == 0) continue;
      // Independence: P(a and b) = P(a) P(b) with P(e) = load_e / tokens.
      const double lift = (double)c * (double)s.tokens / ((double)s.load[a] * (double)s.load[b]);
      pairs.push_back({a, b, c, lift});
    }
  const size_t n = std::min<size_t>(pairs.size(), (size_t)std::max<int64_t>(top_pairs, 0));
  std::partial_sort(pairs.begin(), pairs.begin() + n, pairs.end(), [](const ExpertPair& x, const ExpertPair& y) {
    return x.count > y.count || (x.count == y.count && (x.a < y.a || (x.a == y.a && x.b < y.b)));
  });
  pairs.resize(n);
  r.top_pairs = std::move(pairs);
  return r;
}

// JSON has no NaN: absent figures are null.
static nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

nlohmann::json routing_stats_json(const RoutingStats& st, int64_t top_pairs) {
  nlohmann::json layers = nlohmann::json::array();
  for (const RoutingLayerStats& s : st.layers) {
    const RoutingLayerSummary r = summarize(s, top_pairs);
    nlohmann::json cooc = nlohmann::json::array();
    for (int64_t i = 0; i < s.n_experts; ++i)
      cooc.push_back(std::vector<int64_t>(s.cooc.begin() + i * s.n_experts, s.cooc.begin() + (i + 1) * s.n_experts));
    nlohmann::json pairs = nlohmann::json::array();
    for (const ExpertPair& p : r.top_pairs)
      pairs.push_back({{"experts", {p.a, p.b}}, {"count", p.count}, {"lift", p.lift}});
    layers.push_back({{"layer", s.layer},
                      {"experts", s.n_experts},
                      {"top_k", s.top_k},
                      {"tokens", s.tokens},
                      {"load", s.load},
                      {"top1_load", s.top1_load},
                      {"cooccurrence", cooc},
                      {"entropy_sum", s.has_entropy ? nlohmann::json(s.entropy_sum) : nlohmann::json(nullptr)},
                      {"adjacent_pairs", s.adjacent_pairs},
                      {"top1_repeats", s.top1_repeats},
                      {"overlap_sum", s.overlap_sum},
                      {"summary",
                       {{"load_max_over_mean", num(r.load_max_over_mean)},
                        {"load_cv", num(r.load_cv)},
                        {"entropy_mean", num(r.entropy_mean)},
                        {"entropy_normalised", num(r.entropy_normalised)},
                        {"top1_repeat_fraction", num(r.top1_repeat_fraction)},
                        {"top1_repeat_chance", num(r.top1_repeat_chance)},
                        {"overlap_mean", num(r.overlap_mean)},
                        {"top_pairs", pairs}}}});
  }
  return {{"layers", layers}};
}

}  // namespace dsmoe
