// What the experts of each MoE layer output, accumulated over evaluation forwards, for the
// specialisation analyses: the size of the shared experts' output against the routed experts'
// gated sum (how much of the layer's work the always-on experts do), and how similar the routed
// experts' outputs are on the same tokens (redundancy: experts that compute the same function).
// Collected by Model::forward when an ExpertOutputStats is attached (Model::set_expert_output_stats).
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/params.h"

namespace dsmoe {

class Communicator;

// Sums of one MoE layer (mergeable by adding).
struct ExpertOutputLayerStats {
  int64_t layer = -1;
  int64_t n_experts = 0;        // E (routed)
  bool has_shared = false;      // the shared experts ran (a model with them, without drop_shared)
  int64_t tokens = 0;           // tokens whose norms are summed
  double shared_norm_sum = 0;   // sum over tokens of ||shared(x_t)||_2 (0 without shared experts)
  double routed_norm_sum = 0;   // sum over tokens of ||sum_k g_k expert_k(x_t)||_2 (the routed part of the output)
  int64_t sampled_tokens = 0;   // tokens on which every routed expert was run
  std::vector<double> cos_sum;  // [E * E] sum over sampled tokens of cos(expert_i(x_t), expert_j(x_t)); a zero
                                // output counts as cosine 0
};

struct ExpertOutputStats {
  // Every routed expert runs on one token in `sample_every` of each forward (tokens t with
  // (token_offset + t) % sample_every == 0, t = b * T + pos): E times the work of one expert on those
  // tokens. token_offset: the index of this process's first row's first token in the whole batch,
  // when the batch's rows are split over processes, so that they sample the tokens one process would.
  int64_t sample_every = 8;
  int64_t token_offset = 0;
  std::vector<ExpertOutputLayerStats> layers;  // one per MoE layer, in layer order

  // One forward of MoE layer `layer`: x [N, H] its input (post-attention RMSNorm), out [N, H] the
  // layer's output, shared [N, H] the shared experts' part of it (null when they did not run), so
  // that the routed part is out - shared.
  void accumulate(const ModelConfig& m, const LayerView& W, int64_t layer, const float* x, const float* out,
                  const float* shared, int64_t N);

 private:
  std::vector<float> xs_, gu_, act_, ys_;
  std::vector<int64_t> offsets_;
};

// Mean over sampled tokens of the cosine of experts i and j (i != j), averaged over the E(E-1)/2
// pairs; NaN without sampled tokens or with one expert.
double mean_pairwise_cosine(const ExpertOutputLayerStats& s);

// Several processes, each of which collected its own rows of every batch (with every routed expert:
// data parallelism, not expert parallelism): every rank's sums added into every rank's `s`.
// Collective. Refuses stats of different layers, experts or shared-expert use on different ranks.
void all_reduce_sum(ExpertOutputStats& s, Communicator& world);

}  // namespace dsmoe
