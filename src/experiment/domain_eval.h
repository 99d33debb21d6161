// Specialisation measured per domain, on any model and any data prepared with domain labels
// (`dsmoe eval --per-domain FILE`): the held-out loss of each domain, and for each MoE layer the
// expert load per domain, the mutual information between domain and expert choice, how
// concentrated each expert's tokens are on one domain, the shared experts' output norm against the
// routed experts' gated sum, and the similarity of the routed experts' outputs on the same tokens.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "model/model.h"
#include "train/data.h"

namespace dsmoe {

// Figures of a domain x expert table of counts (each routed selection of a token of domain d by
// expert e counts once in C[d][e]: a token routed to k experts counts k times, so the "expert
// choice" is one selection slot drawn at random).
struct DomainExpertFigures {
  double mutual_information = 0;  // I(domain; expert) in nats, of the joint P(d, e) = C[d][e] / sum C
  double domain_entropy = 0;      // H(domain), nats (ln D when every domain has the same tokens)
  double expert_entropy = 0;      // H(expert), nats
  double mi_normalised = 0;       // I / min(H(domain), H(expert)): 0 = independent, 1 = one determines
                                  // the other as far as its entropy allows; NaN when min is 0
  std::vector<int32_t> top_domain;            // [E] argmax_d C[d][e] (lowest index on ties; -1: no tokens)
  std::vector<double> top_domain_fraction;    // [E] max_d C[d][e] / sum_d C[d][e] (NaN: no tokens)
};
// counts [D][E]; throws dsmoe::Error when rows differ in length or a count is negative.
DomainExpertFigures domain_expert_figures(const std::vector<std::vector<int64_t>>& counts);

struct DomainEvalOptions {
  int64_t batch = 0, seq_len = 0, n_batches = 0;  // evaluation windows per domain: as `evaluate`
  bool expert_outputs = true;                     // shared/routed norms and expert output similarity
  int64_t sample_every = 8;                       // ExpertOutputStats::sample_every
  // Several processes (`dsmoe eval --per-domain` under mpirun): each evaluates its rows of every
  // batch as `evaluate` splits them, and the statistics are summed over the ranks, so every rank
  // returns the one-process figures. Null: one process. Expert outputs need every routed expert in
  // each process (data parallelism only).
  Communicator* world = nullptr;
};

// Evaluates `split` (which must have domain labels) one domain at a time, each on the same number
// of windows (n_batches x batch x seq_len tokens, evenly spaced over that domain's documents), with
// the model's current routing override. Returns the JSON documented in the README (per-domain
// loss; per MoE layer: load [D][E], mutual information, top-domain fractions, norms, cosines).
// on_batch(done, total) reports progress.
nlohmann::json evaluate_domains(Model& model, const TokenSplit& split, const DomainEvalOptions& o,
                                const std::function<void(int64_t, int64_t)>& on_batch = {});

}  // namespace dsmoe
