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

namespace dsmoe::test {

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

// A small byte-level dataset (vocab 256): words drawn from a fixed list (learnable structure) by an
// RNG seeded from test_seed(), saved as DIR's train and val splits. Returns dir.
std::string make_word_dataset(const std::string& dir, size_t train_tokens, size_t val_tokens);

}  // namespace dsmoe::test
