// Router pieces (Megatron-Core's "Router"): softmax over the ROUTED experts, top-k that returns the
// ORIGINAL expert ids, optional renormalisation of the chosen gates, and the fixed hash of Hash Layer.
#pragma once
#include <cstdint>

namespace dsmoe::ops {

// Row-wise softmax in fp32 (max-subtracted). logits, probs [n, E].
void softmax_forward(float* probs, const float* logits, int64_t n, int64_t E);
// dlogits += probs * (dprobs - sum(dprobs * probs))
void softmax_backward(float* dlogits, const float* dprobs, const float* probs, int64_t n, int64_t E);

// Sum over the n rows of the routing distribution's entropy -sum_e p_e ln p_e, nats (0 ln 0 = 0), in
// fp64. Fixed blocks of rows are summed in parallel, then the blocks in order: the same bits at any
// thread count.
double routing_entropy_sum(const float* probs, int64_t n, int64_t E);

// For each row the k largest probs, in descending order; equal values are ordered by the LOWER expert
// id first (deterministic tie-break). ids [n, k] are original expert ids in [0, E); vals [n, k].
// skip > 0 (evaluation only: the paper's "disable the top routed experts", Fig. 4) first excludes the
// `skip` largest probs of each row (same order and tie-break), i.e. returns ranks [skip, skip + k):
// the masked experts cannot be chosen, and vals stay the softmax probs over ALL experts.
// Requires skip + k <= E.
// Device-limited routing (DeepSeek-V2 `topk_method: group_limited_greedy`) when n_group > 1: the E
// experts form n_group contiguous groups, a group's score is its best expert's prob, the topk_group
// best groups are kept (equal scores: the lower group id first) and the top-k (after `skip`) is taken
// among the kept groups' experts only; vals stay the probs. Requires n_group | E and
// skip + k <= topk_group * E / n_group. n_group = topk_group = 1 is plain top-k.
void topk_forward(int32_t* ids, float* vals, const float* probs, int64_t n, int64_t E, int64_t k, int64_t skip = 0,
                  int64_t n_group = 1, int64_t topk_group = 1);
// dprobs[t, ids[t, j]] += dvals[t, j]
void topk_backward(float* dprobs, const float* dvals, const int32_t* ids, int64_t n, int64_t E, int64_t k);

// gates = vals, or vals / (sum_j vals + 1e-20) when normalize (the official norm_topk_prob, applied
// only when k > 1; the caller passes normalize = norm_topk_prob && k > 1). vals, gates [n, k].
void gate_norm_forward(float* gates, const float* vals, int64_t n, int64_t k, bool normalize);
void gate_norm_backward(float* dvals, const float* dgates, const float* vals, int64_t n, int64_t k, bool normalize);

// Hash Layer (Roller et al. 2021): top-1 by a fixed hash of the token id, gate 1, no parameters.
// The hash is a fixed 32-bit integer mix of the id (stable across versions: checkpoints depend on it).
int32_t hash_expert(int32_t token_id, int64_t E);
void hash_route(int32_t* ids, float* gates, const int32_t* token_ids, int64_t n, int64_t E);

}  // namespace dsmoe::ops
