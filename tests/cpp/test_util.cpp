#include "test_util.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "model/model.h"
#include "train/data.h"
#include "train/optimizer.h"

namespace dsmoe::test {

std::string source_dir() { return DSMOE_SOURCE_DIR; }

uint64_t test_seed() {
  static uint64_t seed = [] {
    uint64_t s;
    if (const char* e = std::getenv("DSMOE_TEST_SEED")) s = std::strtoull(e, nullptr, 10);
    else s = (uint64_t)std::chrono::high_resolution_clock::now().time_since_epoch().count() % 1000000007ULL;
    std::printf("[dsmoe test] random inputs with DSMOE_TEST_SEED=%llu\n", (unsigned long long)s);
    return s;
  }();
  return seed;
}

std::string tmp_path(const std::string& name) {
  namespace fs = std::filesystem;
  // One folder per $OMP_NUM_THREADS: CTest registers the numerical executables at 1, 2 and 3 threads
  // (tests/CMakeLists.txt) and may run the copies of a test side by side; they must never share a file.
  fs::path dir = fs::path(DSMOE_TEST_TMP);
  if (const char* t = std::getenv("OMP_NUM_THREADS"); t && *t) dir /= std::string("threads") + t;
  fs::create_directories(dir);
  return (dir / name).string();
}

bool run_oracle(const std::string& script, const std::vector<std::string>& args) {
  std::string output;
  return run_oracle(script, args, "", output);
}

bool run_oracle(const std::string& script, const std::vector<std::string>& args, const std::string& stdin_path,
                std::string& output) {
  const char* py = std::getenv("DSMOE_PYTHON");
  std::string cmd = std::string(py ? py : "/usr/bin/python3") + " " + source_dir() + "/tests/oracle/" + script;
  for (const auto& a : args) cmd += " '" + a + "'";
  if (!stdin_path.empty()) cmd += " < '" + stdin_path + "'";
  cmd += " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    ADD_FAILURE() << "cannot run oracle: " << cmd;
    return false;
  }
  output.clear();
  char buf[4096];
  size_t r;
  while ((r = fread(buf, 1, sizeof buf, p)) > 0) output.append(buf, r);
  int rc = pclose(p);
  if (rc != 0) {
    ADD_FAILURE() << "oracle failed (exit " << rc << "): " << cmd << "\n" << output;
    return false;
  }
  return true;
}

static std::string index_str(int64_t flat, const std::vector<int64_t>& shape) {
  if (shape.empty()) return "[" + std::to_string(flat) + "]";
  std::vector<int64_t> idx(shape.size());
  for (int64_t d = (int64_t)shape.size() - 1; d >= 0; --d) {
    idx[d] = shape[d] ? flat % shape[d] : 0;
    flat = shape[d] ? flat / shape[d] : 0;
  }
  std::string s = "[";
  for (size_t i = 0; i < idx.size(); ++i) s += (i ? ", " : "") + std::to_string(idx[i]);
  return s + "]";
}

// Shared by all_close and all_close_each: tol(i) is element i's allowed |got - want|.
template <class Tol>
static ::testing::AssertionResult close_with(const std::string& what, const float* got, const float* want, int64_t n,
                                             const std::vector<int64_t>& shape, const Tol& tol, const std::string& tol_desc) {
  int64_t bad = 0, worst = -1;
  double worst_excess = 0, max_abs = 0;
  for (int64_t i = 0; i < n; ++i) {
    double g = got[i], w = want[i];
    double err = std::fabs(g - w);
    if (!std::isfinite(g) || !std::isfinite(w)) err = (std::isnan(g) && std::isnan(w)) ? 0 : INFINITY;
    max_abs = std::max(max_abs, err);
    double excess = err - tol(i);
    if (excess > 0) {
      ++bad;
      if (worst < 0 || excess > worst_excess) { worst = i; worst_excess = excess; }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os.precision(9);
  os << what << ": " << bad << " of " << n << " elements differ (" << tol_desc << "); worst at " << index_str(worst, shape)
     << ": got " << got[worst] << ", expected " << want[worst] << ", error " << std::fabs((double)got[worst] - want[worst])
     << " > tolerance " << tol(worst) << "; max abs error " << max_abs;
  return ::testing::AssertionFailure() << os.str();
}

::testing::AssertionResult all_close(const std::string& what, const float* got, const float* want, int64_t n,
                                     const std::vector<int64_t>& shape, double atol, double rtol) {
  std::ostringstream d;
  d.precision(9);
  d << "atol " << atol << ", rtol " << rtol;
  return close_with(what, got, want, n, shape, [&](int64_t i) { return atol + rtol * std::fabs((double)want[i]); },
                    d.str());
}

::testing::AssertionResult all_close_each(const std::string& what, const float* got, const float* want,
                                          const double* tol, int64_t n, const std::vector<int64_t>& shape) {
  return close_with(what, got, want, n, shape, [&](int64_t i) { return tol[i]; }, "per-element tolerance");
}

std::string make_word_dataset(const std::string& dir, size_t train_tokens, size_t val_tokens) {
  return make_word_dataset(dir, train_tokens, val_tokens, test_seed());
}

std::string make_word_dataset(const std::string& dir, size_t train_tokens, size_t val_tokens, uint64_t seed) {
  static const char* words[] = {"the ", "cat ", "sat ", "on ", "a ", "mat. ", "dogs ", "run ", "fast ", "and ",
                                "birds ", "sing\n"};
  Rng rng(seed);
  auto text = [&](size_t n) {
    TokenSplit s;
    s.vocab_size = 256;
    s.tokenizer = "bytes";
    while (s.tokens.size() < n)
      for (const char* c = words[rng.below(12)]; *c; ++c) s.tokens.push_back((unsigned char)*c);
    return s;
  };
  save_split(dir, "train", text(train_tokens));
  save_split(dir, "val", text(val_tokens));
  return dir;
}

void flip_tensor_byte(const std::string& path, const std::string& tensor) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  ASSERT_TRUE(f) << path << ": cannot open";
  uint64_t hlen = 0;
  f.read((char*)&hlen, 8);
  std::string header(hlen, '\0');
  f.read(header.data(), (std::streamsize)hlen);
  const auto j = nlohmann::json::parse(header);
  ASSERT_TRUE(j.contains(tensor)) << path << ": no tensor " << tensor;
  const std::streamoff at = 8 + (std::streamoff)hlen + j[tensor]["data_offsets"][0].get<std::streamoff>();
  char c = 0;
  f.seekg(at);
  f.read(&c, 1);
  c ^= 1;
  f.seekp(at);
  f.write(&c, 1);
}

::testing::AssertionResult error_mentions(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles)
      if (msg.find(n) == std::string::npos)
        return ::testing::AssertionFailure() << "error message lacks '" << n << "': " << msg;
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-dsmoe exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "no error thrown (expected one mentioning '"
                                       << (needles.empty() ? std::string() : needles[0]) << "')";
}

std::vector<double> read_f64(const SafeTensorsFile& f, const std::string& name) {
  const auto& t = f.get(name);
  EXPECT_EQ(t.dtype, DType::F64) << name;
  std::vector<double> v(t.dtype == DType::F64 ? t.numel() : 0);
  std::memcpy(v.data(), t.data, v.size() * 8);
  return v;
}

std::vector<int32_t> random_tokens(Rng& rng, int64_t n, int64_t V) {
  std::vector<int32_t> t(n);
  for (auto& x : t) x = (int32_t)rng.below(V);
  return t;
}

Config tiny_byte_model_config(int64_t max_position_embeddings, int64_t seq_len) {
  Config c;
  ModelConfig& m = c.model;
  m.vocab_size = 256;
  m.hidden_size = 32;
  m.intermediate_size = 48;
  m.moe_intermediate_size = 12;
  m.num_hidden_layers = 2;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 4;
  m.n_shared_experts = 1;
  m.n_routed_experts = 8;
  m.num_experts_per_tok = 2;
  m.first_k_dense_replace = 1;
  m.max_position_embeddings = max_position_embeddings;
  c.train.seq_len = seq_len;
  validate(c, "tiny_byte_model_config");
  return c;
}

AdamTrajectoryBudget::AdamTrajectoryBudget(const Model& model, const TrainConfig& tc)
    : tc_(tc), tol_(model.params().size(), 0.0), g_err_(model.layout().hf_tensors().size(), 0.0) {}

double AdamTrajectoryBudget::loss_drift(const std::vector<float>& grads, double clip) const {
  double drift = 0;
  for (size_t i = 0; i < tol_.size(); ++i) drift += std::fabs(grads[i] / clip) * tol_[i];
  return drift;
}

double clip_factor(const TrainConfig& tc, double norm) {
  return tc.grad_clip > 0 && norm > tc.grad_clip ? tc.grad_clip / (norm + 1e-6) : 1.0;
}

void AdamTrajectoryBudget::add_step(Model& model, AdamW& adam, int64_t s, double lr, double clip,
                                    double grad_rel) {
  const double u = std::ldexp(1.0, -24), b1 = tc_.beta1, b2 = tc_.beta2, eps = tc_.eps;
  const double bc1 = 1 - std::pow(b1, (double)s), bc2 = 1 - std::pow(b2, (double)s);
  double ratio_sum = 0;
  for (int64_t k = 0; k < s; ++k) ratio_sum += std::pow(b1 * b1 / b2, (double)k);
  const double R = (1 - b1) / bc1 * std::sqrt(ratio_sum) * std::sqrt(bc2 / (1 - b2));
  const auto& hf = model.layout().hf_tensors();
  const std::vector<float>& g = model.grads();
  for (size_t h = 0; h < hf.size(); ++h) {
    double gmax = 0;
    for (int64_t i = hf[h].offset; i < hf[h].offset + hf[h].numel; ++i)
      gmax = std::max(gmax, std::fabs((double)g[i] / clip));
    g_err_[h] = std::max(g_err_[h], grad_rel * gmax * clip);  // the error of the CLIPPED gradient Adam saw
    // Rows (first index) whose gradient has been exactly 0 at every step so far: no token reached
    // them (an embedding row of an unseen token, an expert no token chose), so the oracle's is 0 as
    // well and r = 0 on both sides. A lone exact 0 inside a live row is rounding (an fp32 sum that
    // cancelled to 0 where the fp64 one is 1e-10): the oracle's r there can be anything up to
    // g_err / eps, so it takes the general bound with v^ = 0.
    const int64_t row = hf[h].shape.size() >= 2 ? hf[h].numel / hf[h].shape[0] : hf[h].numel;
    for (int64_t r0 = hf[h].offset; r0 < hf[h].offset + hf[h].numel; r0 += row) {
      bool untouched = true;
      for (int64_t i = r0; i < r0 + row && untouched; ++i) untouched = adam.v()[i] == 0.0f;
      for (int64_t i = r0; i < r0 + row; ++i) {
        const double denom = std::sqrt(adam.v()[i] / bc2) + eps, r = std::fabs(adam.m()[i] / bc1) / denom;
        const double dr = untouched ? 0.0 : std::min(2 * R, (1 + r) * g_err_[h] / denom);
        tol_[i] += lr * dr + 2 * u * std::fabs(model.params()[i]) + 6 * u * lr * r;
      }
    }
  }
}

std::vector<float> randn(int64_t n, uint64_t seed, float scale) {
  Rng r(seed);
  std::vector<float> v((size_t)n);
  for (float& x : v) x = (float)(scale * r.normal());
  return v;
}

double bf16_value(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace dsmoe::test
