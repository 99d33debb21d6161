// Auxiliary balance losses of DeepSeekMoE (see shared/reference/deepseekmoe.md section 2).
// N = routed experts, K = activated routed experts, T = tokens of a group (one sequence when
// seq_aux, all B*T tokens otherwise). Per group:
//   f_i = N/(K T) * #{t : t selects i}   (counts: no gradient)      P_i = mean_t s_{i,t}
//   expert loss = a1 * sum_i f_i P_i
//   device loss = a2 * sum_d f'_d P'_d,  f'_d = mean_{i in E_d} f_i,  P'_d = sum_{i in E_d} P_i,
//   with the routed experts split into D contiguous groups E_d of N/D experts.
//   communication loss (DeepSeek-V2) = a3 * sum_d f''_d P'_d,
//     f''_d = D/(M T) * #{t : at least one of t's experts is on device d}, M = the most devices one
//     token can reach (ModelConfig::comm_device_limit: topk_group under device-limited routing with
//     one group per device, min(k, D) for plain top-k), so uniform routing over M devices gives 1.
// The reported loss is the mean over groups. Selection counts use ALL top-k choices (before any
// capacity drop), as the official code does.
#pragma once
#include <cstdint>
#include <vector>

namespace dsmoe::ops {

struct BalanceShape {
  int64_t batch, seq, n_experts, top_k;
  bool seq_aux;
  int64_t groups() const { return seq_aux ? batch : 1; }
  int64_t group_tokens() const { return seq_aux ? seq : batch * seq; }
};

// f [groups, N] gets the selection frequencies (kept for backward and for load statistics).
// probs [batch*seq, N] full routed softmax; ids [batch*seq, K].
void balance_frequencies(float* f, const int32_t* ids, const BalanceShape& s);

// The same f [1, N] of a batch-level group from the selection counts [N] of its `tokens` tokens:
// with the batch split over processes, the counts are summed over ranks and each rank computes
// the single-process f (bit-identical: the same formula on the same integers).
void balance_frequencies_from_counts(float* f, const int64_t* counts, int64_t n_experts, int64_t top_k,
                                     int64_t tokens);
// P [groups, N]: each group's mean routing probability of every expert, accumulated in double in a
// fixed order (independent of the thread count).
std::vector<double> balance_prob_means(const float* probs, const BalanceShape& s);

// The losses from f [groups, N] and P [groups, N] (the forwards below are these on their own f, P).
float expert_balance_loss(const float* f, const double* P, int64_t groups, int64_t n_experts, float alpha);
float device_balance_loss(const float* f, const double* P, int64_t groups, int64_t n_experts, int64_t n_groups_D,
                          float alpha);

float expert_balance_forward(const float* f, const float* probs, const BalanceShape& s, float alpha);
// dprobs[t, i] += dloss * alpha * f[g(t), i] / (T * groups)
void expert_balance_backward(float* dprobs, const float* f, const BalanceShape& s, float alpha, float dloss);

float device_balance_forward(const float* f, const float* probs, const BalanceShape& s, int64_t n_groups_D,
                             float alpha);
// dprobs[t, i] += dloss * alpha * f'[g(t), d(i)] / (T * groups)
void device_balance_backward(float* dprobs, const float* f, const BalanceShape& s, int64_t n_groups_D, float alpha,
                             float dloss);

// sent [groups, D]: the tokens of each group sending at least one slot to device d (no gradient).
void comm_sent_counts(int64_t* sent, const int32_t* ids, const BalanceShape& s, int64_t n_groups_D);
// f'' [groups, D] = D / (M tokens) * sent (tokens of one group; summed over ranks for a batch-level
// group split over processes, like balance_frequencies_from_counts).
void comm_frequencies(float* f2, const int64_t* sent, int64_t groups, int64_t n_groups_D, int64_t M, int64_t tokens);
float comm_balance_loss(const float* f2, const double* P, int64_t groups, int64_t n_experts, int64_t n_groups_D,
                        float alpha);
// dprobs[t, i] += dloss * alpha * f''[g(t), d(i)] / (T * groups)
void comm_balance_backward(float* dprobs, const float* f2, const BalanceShape& s, int64_t n_groups_D, float alpha,
                           float dloss);

}  // namespace dsmoe::ops
