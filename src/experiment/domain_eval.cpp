#include "experiment/domain_eval.h"

#include <cmath>
#include <limits>

#include "core/error.h"
#include "model/expert_outputs.h"
#include "model/routing_stats.h"
#include "train/trainer.h"

namespace dsmoe {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// JSON has no NaN: absent figures are null.
nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

double entropy_of(const std::vector<double>& mass, double total) {
  double h = 0;
  for (double m : mass)
    if (m > 0) h -= m / total * std::log(m / total);
  return h;
}

}  // namespace

DomainExpertFigures domain_expert_figures(const std::vector<std::vector<int64_t>>& counts) {
  DomainExpertFigures f;
  const size_t D = counts.size(), E = D ? counts[0].size() : 0;
  std::vector<double> row(D, 0), col(E, 0);
  double total = 0;
  for (size_t d = 0; d < D; ++d) {
    if (counts[d].size() != E) fail("domain x expert counts: row {} has {} experts, row 0 has {}", d, counts[d].size(), E);
    for (size_t e = 0; e < E; ++e) {
      if (counts[d][e] < 0) fail("domain x expert counts: C[{}][{}] = {} is negative", d, e, counts[d][e]);
      row[d] += (double)counts[d][e];
      col[e] += (double)counts[d][e];
      total += (double)counts[d][e];
    }
  }
  f.top_domain.assign(E, -1);
  f.top_domain_fraction.assign(E, kNaN);
  if (total == 0) {
    f.mutual_information = f.domain_entropy = f.expert_entropy = f.mi_normalised = kNaN;
    return f;
  }
  double mi = 0;
  for (size_t d = 0; d < D; ++d)
    for (size_t e = 0; e < E; ++e) {
      const double c = (double)counts[d][e];
      if (c > 0) mi += c / total * std::log(c * total / (row[d] * col[e]));
    }
  f.mutual_information = std::max(mi, 0.0);  // >= 0 mathematically; rounding can leave -1e-17
  f.domain_entropy = entropy_of(row, total);
  f.expert_entropy = entropy_of(col, total);
  const double h = std::min(f.domain_entropy, f.expert_entropy);
  f.mi_normalised = h > 0 ? f.mutual_information / h : kNaN;
  for (size_t e = 0; e < E; ++e) {
    if (col[e] == 0) continue;
    int64_t best = -1;
    for (size_t d = 0; d < D; ++d)
      if (best < 0 || counts[d][e] > counts[best][e]) best = (int64_t)d;
    f.top_domain[e] = (int32_t)best;
    f.top_domain_fraction[e] = (double)counts[best][e] / col[e];
  }
  return f;
}

nlohmann::json evaluate_domains(Model& model, const TokenSplit& split, const DomainEvalOptions& o,
                                const std::function<void(int64_t, int64_t)>& on_batch) {
  if (!split.has_domains())
    fail("{}: the data has no domain labels (prepare it with `dsmoe prepare --corpus mixed` or --manifest)",
         split.path.empty() ? "split" : split.path);
  DSMOE_ASSERT(o.batch >= 1 && o.seq_len >= 1 && o.n_batches >= 1 && o.sample_every >= 1, "domain eval options");
  const ModelConfig& m = model.config();
  const size_t D = split.domains.size();
  std::vector<TokenSplit> subsets;
  for (size_t d = 0; d < D; ++d) {
    subsets.push_back(split.domain_subset((int32_t)d));
    if ((int64_t)subsets.back().tokens.size() < o.seq_len + 1)
      fail("{}: domain '{}' holds {} tokens, fewer than seq_len + 1 = {}: too few to evaluate", split.path,
           split.domains[d], subsets.back().tokens.size(), o.seq_len + 1);
  }
  std::vector<RoutingStats> routing(D);
  std::vector<ExpertOutputStats> outputs(D);
  nlohmann::json loss = nlohmann::json::object(), ppl = nlohmann::json::object(), tokens = nlohmann::json::object();
  RoutingStats* saved_routing = model.routing_stats();
  const int64_t total = (int64_t)D * o.n_batches;
  try {
    for (size_t d = 0; d < D; ++d) {
      if (m.is_moe()) {
        model.set_routing_stats(&routing[d]);
        outputs[d].sample_every = o.sample_every;
        if (o.world) outputs[d].token_offset = eval_rows(o.batch, o.world->rank(), o.world->size()).first * o.seq_len;
        if (o.expert_outputs) model.set_expert_output_stats(&outputs[d]);
      }
      const double l = evaluate(model, subsets[d], o.batch, o.seq_len, o.n_batches, [&](int64_t i) {
        if (on_batch) on_batch((int64_t)d * o.n_batches + i + 1, total);
      }, o.world);
      model.set_routing_stats(saved_routing);
      model.set_expert_output_stats(nullptr);
      if (o.world && m.is_moe()) {
        all_reduce_sum(routing[d], *o.world);
        if (o.expert_outputs) all_reduce_sum(outputs[d], *o.world);
      }
      if (!std::isfinite(l)) fail("evaluation loss on domain '{}' is {}", split.domains[d], l);
      loss[split.domains[d]] = l;
      ppl[split.domains[d]] = std::exp(l);
      tokens[split.domains[d]] = {{"available", subsets[d].tokens.size()},
                                  {"evaluated", o.n_batches * o.batch * o.seq_len}};
    }
  } catch (...) {
    model.set_routing_stats(saved_routing);
    model.set_expert_output_stats(nullptr);
    throw;
  }
  nlohmann::json layers = nlohmann::json::array();
  if (m.is_moe()) {
    for (size_t li = 0; li < routing[0].layers.size(); ++li) {
      const int64_t layer = routing[0].layers[li].layer, E = routing[0].layers[li].n_experts;
      std::vector<std::vector<int64_t>> load(D);
      for (size_t d = 0; d < D; ++d) load[d] = routing[d].layers.at(li).load;
      const DomainExpertFigures f = domain_expert_figures(load);
      nlohmann::json top_frac = nlohmann::json::array();
      for (double v : f.top_domain_fraction) top_frac.push_back(num(v));
      nlohmann::json j = {{"layer", layer},
                          {"experts", E},
                          {"top_k", routing[0].layers[li].top_k},
                          {"load", load},
                          {"mutual_information", num(f.mutual_information)},
                          {"domain_entropy", num(f.domain_entropy)},
                          {"expert_entropy", num(f.expert_entropy)},
                          {"mutual_information_normalised", num(f.mi_normalised)},
                          {"top_domain", f.top_domain},
                          {"top_domain_fraction", top_frac}};
      if (o.expert_outputs) {
        nlohmann::json shared = nlohmann::json::object(), routed = nlohmann::json::object(),
                       ratio = nlohmann::json::object();
        ExpertOutputLayerStats all;  // every domain's sampled tokens together, for the similarity
        all.n_experts = E;
        all.cos_sum.assign(E * E, 0.0);
        bool has_shared = false;
        for (size_t d = 0; d < D; ++d) {
          const ExpertOutputLayerStats& s = outputs[d].layers.at(li);
          DSMOE_ASSERT(s.layer == layer, "expert output stats out of step with routing stats");
          has_shared = s.has_shared;
          const double sh = s.shared_norm_sum / (double)s.tokens, ro = s.routed_norm_sum / (double)s.tokens;
          shared[split.domains[d]] = s.has_shared ? num(sh) : nlohmann::json(nullptr);
          routed[split.domains[d]] = num(ro);
          ratio[split.domains[d]] = s.has_shared && ro > 0 ? num(sh / ro) : nlohmann::json(nullptr);
          all.sampled_tokens += s.sampled_tokens;
          for (int64_t i = 0; i < E * E; ++i) all.cos_sum[i] += s.cos_sum[i];
        }
        nlohmann::json cos = nlohmann::json::array();
        for (int64_t a = 0; a < E; ++a) {
          nlohmann::json r = nlohmann::json::array();
          for (int64_t b = 0; b < E; ++b)
            r.push_back(a == b ? nlohmann::json(1.0) : num(all.cos_sum[a * E + b] / (double)all.sampled_tokens));
          cos.push_back(r);
        }
        j["shared_norm_mean"] = shared;
        j["routed_norm_mean"] = routed;
        j["shared_over_routed"] = ratio;
        j["has_shared"] = has_shared;
        j["output_cosine_mean"] = num(mean_pairwise_cosine(all));
        j["output_cosine"] = cos;
        j["output_sampled_tokens"] = all.sampled_tokens;
      }
      layers.push_back(j);
    }
  }
  return {{"domains", split.domains},
          {"windows_per_domain", o.n_batches * o.batch},
          {"seq_len", o.seq_len},
          {"tokens", tokens},
          {"loss", loss},
          {"perplexity", ppl},
          {"mi_normalisation", "mutual_information / min(domain_entropy, expert_entropy); one sample per routed "
                               "selection (a token routed to k experts counts k times)"},
          {"expert_output_sample_every", o.sample_every},
          {"layers", layers}};
}

}  // namespace dsmoe
