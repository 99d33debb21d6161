// Auxiliary balance losses of DeepSeekMoE (see shared/reference/deepseekmoe.md section 2).
// N = routed experts, K = activated routed experts, T = tokens of a group (one sequence when
// seq_aux, all B*T tokens otherwise). Per group:
//   f_i = N/(K T) * #{t : t selects i}   (counts: no gradient)      P_i = mean_t s_{i,t}
//   expert loss = a1 * sum_i f_i P_i
//   device loss = a2 * sum_d f'_d P'_d,  f'_d = mean_{i in E_d} f_i,  P'_d = sum_{i in E_d} P_i,
//   with the routed experts split into D contiguous groups E_d of N/D experts.
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

float expert_balance_forward(const float* f, const float* probs, const BalanceShape& s, float alpha);
// dprobs[t, i] += dloss * alpha * f[g(t), i] / (T * groups)
void expert_balance_backward(float* dprobs, const float* f, const BalanceShape& s, float alpha, float dloss);

float device_balance_forward(const float* f, const float* probs, const BalanceShape& s, int64_t n_groups_D,
                             float alpha);
// dprobs[t, i] += dloss * alpha * f'[g(t), d(i)] / (T * groups)
void device_balance_backward(float* dprobs, const float* f, const BalanceShape& s, int64_t n_groups_D, float alpha,
                             float dloss);

}  // namespace dsmoe::ops
