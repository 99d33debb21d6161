// Helpers shared by the C++ tests: run the PyTorch oracle, compare tensors with a report that says
// what differed and where.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"
#include "io/safetensors.h"

namespace dsmoe::test {

// Seed for the random inputs of this test run: $DSMOE_TEST_SEED if set, else fresh from the clock.
// Printed so a failure can be replayed with DSMOE_TEST_SEED=<seed>.
uint64_t test_seed();

// A fresh scratch path under the build tree's test folder (a subfolder per $OMP_NUM_THREADS).
std::string tmp_path(const std::string& name);

// Runs `/usr/bin/python3 tests/oracle/<script> args...` (the interpreter that sees Debian's torch;
// override with $DSMOE_PYTHON). Fails the current test with the oracle's output if it exits non-zero.
bool run_oracle(const std::string& script, const std::vector<std::string>& args);

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

// n token ids drawn uniformly from [0, V).
std::vector<int32_t> random_tokens(Rng& rng, int64_t n, int64_t V);

// A small byte-level dataset (vocab 256): words drawn from a fixed list (learnable structure) by an
// RNG seeded from test_seed(), saved as DIR's train and val splits. Returns dir.
std::string make_word_dataset(const std::string& dir, size_t train_tokens, size_t val_tokens);

}  // namespace dsmoe::test
