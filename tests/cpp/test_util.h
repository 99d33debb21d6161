// Helpers shared by the C++ tests: run the PyTorch oracle, compare tensors with a report that says
// what differed and where.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace dsmoe {
class Model;
class AdamW;
}  // namespace dsmoe

namespace dsmoe::test {

// How far an AdamW trajectory may drift from another of the same model whose gradients differ, per
// element, by at most grad_rel * max |g| of the element's Hugging Face tensor at every step (e.g. the
// fp64 oracle's, or another fp32 run's with sums in another order). Derivation (test_model's
// trajectory test): Adam's direction r = m^/(sqrt(v^) + eps) moves to first order by
// |dr| <= (1 + |r|) G / (sqrt(v^) + eps), never more than 2 R_s (R_s = max |r| over all gradient
// histories, by Cauchy-Schwarz); an element's weight error grows per step by lr_s |dr| plus the fp32
// rounding of the update (2u |p| + 6u lr_s |r|). m and v average past gradients, so their errors are
// bounded by the largest G so far. A row whose gradients have all been exactly 0 so far (no token
// reached it) has r = 0 exactly on both sides; a single exact 0 in a live row is an fp32 sum that
// cancelled, and gets the general bound.
class AdamTrajectoryBudget {
 public:
  explicit AdamTrajectoryBudget(const Model& model, const TrainConfig& tc);
  // Bound on the change of a loss at the current weights from the budget so far, to first order:
  // sum_i |dL/dp_i| tol_i, with grads the step's CLIPPED gradient and clip its clip factor.
  double loss_drift(const std::vector<float>& grads, double clip) const;
  // After optimizer step s (1-based) of the reference: model.grads() its clipped gradient (clip its
  // factor), opt its moments after the update, lr the step's learning rate.
  void add_step(Model& model, AdamW& opt, int64_t s, double lr, double clip, double grad_rel);
  const std::vector<double>& tol() const { return tol_; }

 private:
  TrainConfig tc_;
  std::vector<double> tol_, g_err_;
};
// The clip factor train_step applied to a gradient of norm `norm` (1 when not clipped).
double clip_factor(const TrainConfig& tc, double norm);

// Seed for the random inputs of this test run: $DSMOE_TEST_SEED if set, else fresh from the clock.
// Printed so a failure can be replayed with DSMOE_TEST_SEED=<seed>.
uint64_t test_seed();

// A fresh scratch path under the build tree's test folder (a subfolder per $OMP_NUM_THREADS).
std::string tmp_path(const std::string& name);

// Runs `/usr/bin/python3 tests/oracle/<script> args...` (the interpreter that sees Debian's torch;
// override with $DSMOE_PYTHON). Fails the current test with the oracle's output if it exits non-zero.
bool run_oracle(const std::string& script, const std::vector<std::string>& args);
// The same, with the file `stdin_path` as the oracle's standard input (none when empty); what it
// prints goes to `output`.
bool run_oracle(const std::string& script, const std::vector<std::string>& args, const std::string& stdin_path,
                std::string& output);

// Element-wise |got - want| <= atol + rtol * |want|. On failure: the number of mismatches, the worst
// element's multi-index (from `shape`), both values, and the max abs error.
::testing::AssertionResult all_close(const std::string& what, const float* got, const float* want, int64_t n,
                                     const std::vector<int64_t>& shape, double atol, double rtol);
inline ::testing::AssertionResult all_close(const std::string& what, const std::vector<float>& got,
                                            const std::vector<float>& want, const std::vector<int64_t>& shape,
                                            double atol, double rtol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " vs expected " << want.size();
  return all_close(what, got.data(), want.data(), (int64_t)got.size(), shape, atol, rtol);
}

// Element-wise |got - want| <= tol[i] (a tolerance derived per element); the same report.
::testing::AssertionResult all_close_each(const std::string& what, const float* got, const float* want,
                                          const double* tol, int64_t n, const std::vector<int64_t>& shape);

// The values of an F64 tensor of an oracle file (read_f32 would round them to fp32).
std::vector<double> read_f64(const SafeTensorsFile& f, const std::string& name);

std::string source_dir();

// Flips the lowest bit of the first byte of `tensor`'s data in the safetensors file at `path` (in
// place, header untouched): a corruption only a checksum can see (the value stays finite).
void flip_tensor_byte(const std::string& path, const std::string& tensor);

// Success iff fn throws dsmoe::Error whose message contains every needle; the failure says what was
// thrown (or that nothing was) and which needle is missing.
::testing::AssertionResult error_mentions(const std::function<void()>& fn, const std::vector<std::string>& needles);

// A tiny byte-level DeepSeekMoE (vocab 256, hidden 32, 2 layers: one dense, one MoE of 1 shared +
// 8 routed experts, top-2), validated, for the inference and CLI tests.
Config tiny_byte_model_config(int64_t max_position_embeddings, int64_t seq_len);

// n token ids drawn uniformly from [0, V).
std::vector<int32_t> random_tokens(Rng& rng, int64_t n, int64_t V);
// n values drawn from N(0, scale^2) (seeded Rng).
std::vector<float> randn(int64_t n, uint64_t seed, float scale);
// The value of a bf16 bit pattern, decoded here (not through the code under test).
double bf16_value(uint16_t h);

// A small byte-level dataset (vocab 256): words drawn from a fixed list (learnable structure) by an
// RNG seeded from test_seed(), saved as DIR's train and val splits. Returns dir.
std::string make_word_dataset(const std::string& dir, size_t train_tokens, size_t val_tokens);
// The same, drawn from `seed` instead of test_seed().
std::string make_word_dataset(const std::string& dir, size_t train_tokens, size_t val_tokens, uint64_t seed);

}  // namespace dsmoe::test
