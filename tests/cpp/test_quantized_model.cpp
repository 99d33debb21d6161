// Inference in bf16 / q8 / q4 storage at the model level, and quantized folders (`dsmoe quantize`):
//   * the engine over quantized weights computes the fp32 model of the DEQUANTIZED weights (the
//     quantized kernels add nothing but fp32 rounding), and stays within a stated bound of the fp32
//     model of the original weights;
//   * write_quantized -> load_inference_model is exact, never touches the source, and replaces the
//     output folder atomically;
//   * a mislabelled / missing scale, a wrong block size, shape or dtype is an error naming the file,
//     the tensor or field and what was expected.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "infer/engine.h"
#include "infer/hf_checkpoint.h"
#include "io/output_dir.h"
#include "infer/infer_weights.h"
#include "io/safetensors.h"
#include "test_util.h"

using namespace dsmoe;
using ops::WType;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

Config small_config() {
  Config c;
  ModelConfig& m = c.model;
  m.vocab_size = 96;
  m.hidden_size = 64;
  m.intermediate_size = 96;
  m.moe_intermediate_size = 40;  // 40: a short last block of 8 in every down projection
  m.num_hidden_layers = 2;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.n_shared_experts = 1;
  m.n_routed_experts = 8;
  m.num_experts_per_tok = 2;
  m.first_k_dense_replace = 1;
  m.max_position_embeddings = 64;
  c.train.seq_len = 64;
  validate(c, "small");
  return c;
}

// Logits of every position: one prefill step (all rows) and, to cover the decode GEMV, the last
// 6 positions as single-token steps.
std::vector<float> engine_logits(InferenceEngine& eng, const std::vector<int32_t>& tokens) {
  const int64_t T = (int64_t)tokens.size(), V = eng.config().vocab_size, pre = T - 6;
  KvCache cache(eng.config(), T);
  std::vector<float> all, step;
  Segment seg{&cache, tokens.data(), pre};
  eng.step(std::span<const Segment>(&seg, 1), true, all);
  for (int64_t t = pre; t < T; ++t) {
    seg = Segment{&cache, tokens.data() + t, 1};
    eng.step(std::span<const Segment>(&seg, 1), false, step);
    all.insert(all.end(), step.begin(), step.begin() + V);
  }
  return all;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, (double)std::fabs(x));
  return m;
}

TEST(QuantizedModel, EngineComputesTheModelOfTheDequantizedWeights) {
  const Config cfg = small_config();
  Model model(cfg.model);
  Rng rng(test::test_seed());
  model.init_weights(rng, 0.15);
  const auto tokens = test::random_tokens(rng, 40, cfg.model.vocab_size);
  const int64_t T = (int64_t)tokens.size(), V = cfg.model.vocab_size;
  for (WType t : {WType::BF16, WType::Q8, WType::Q4}) {
    InferenceWeights w = InferenceWeights::convert(model, t);
    InferenceEngine eng(w);
    const auto got = engine_logits(eng, tokens);
    // The fp32 training forward over the dequantized weights (matrices decoded; router and norms are
    // fp32 in every storage).
    Model deq(cfg.model);
    for (const auto& s : w.slots())
      ops::dequantize_rows(deq.params().data() + s.t.offset, s.mat, 0, s.mat.rows);
    deq.forward(tokens.data(), nullptr, 1, T, false);
    std::vector<float> want(deq.logits(), deq.logits() + T * V);
    // Same math, fp32 rounding only (different summation orders): the 2e-5-of-scale budget of the
    // fp32 engine tests (HfEngine, derived in ModelVsTorch).
    const double scale = max_abs(want);
    EXPECT_TRUE(test::all_close(std::string("logits, ") + ops::wtype_name(t), got, want, {T, V}, 2e-5 * scale, 2e-5));
  }
}

TEST(QuantizedModel, LogprobsStayWithinTheQuantizationBoundOfFp32) {
  const Config cfg = small_config();
  Model model(cfg.model);
  Rng rng(test::test_seed() + 1);
  model.init_weights(rng, 0.15);
  const auto tokens = test::random_tokens(rng, 48, cfg.model.vocab_size);
  InferenceEngine ref(model);
  const auto lp32 = score_tokens(ref, tokens);
  // Stated bound. Weight errors are uniform in [-d/2, d/2] per element, d = absmax/qmax of a block
  // of 32 (bf16: relative 2^-8), so a projection's output gets a relative error of about
  // eps = RMS(err)/RMS(w) = (absmax/RMS(w)) / (qmax * sqrt(12)) ~ 2.5 / (qmax * 3.46) for Gaussian
  // weights (absmax of 32 normals ~ 2.5 sigma): q8 0.0057, q4 0.10, bf16 2^-8/sqrt(3) = 0.0023.
  // Independent errors of the ~9 projections in series (2 layers x (qkv, o, gate_up, down) + lm_head)
  // add in quadrature: 3 eps relative error on the logits; a log-prob moves by at most twice the
  // largest logit change. Bound: mean |dlogp| <= 2 * 3 eps * RMS(logits) * 3 (a factor 3 for the
  // first-order approximation: softmax, attention and routing are nonlinear).
  std::vector<float> lg = engine_logits(ref, tokens);
  double rms = 0;
  for (float x : lg) rms += (double)x * x;
  rms = std::sqrt(rms / (double)lg.size());
  for (WType t : {WType::BF16, WType::Q8, WType::Q4}) {
    const double eps = t == WType::BF16 ? std::ldexp(1.0, -8) / std::sqrt(3.0) : 2.5 / ((t == WType::Q8 ? 127 : 7) * std::sqrt(12.0));
    InferenceWeights w = InferenceWeights::convert(model, t);
    InferenceEngine eng(w);
    const auto lp = score_tokens(eng, tokens);
    ASSERT_EQ(lp.size(), lp32.size());
    double mean = 0;
    for (size_t i = 0; i < lp.size(); ++i) mean += std::fabs(lp[i] - lp32[i]);
    mean /= (double)lp.size();
    const double bound = 2 * 3 * eps * rms * 3;
    EXPECT_LE(mean, bound) << ops::wtype_name(t) << ": mean |log p - log p(fp32)| over " << lp.size() << " tokens";
    std::printf("[ stats    ] %s: mean |dlogp| %.3g (bound %.3g)\n", ops::wtype_name(t), mean, bound);
  }
}

// --- quantized folders ---

std::string make_source(const std::string& name, const Config& cfg, Model& model) {
  const std::string dir = test::tmp_path(name);
  fs::remove_all(dir);
  ExportOptions o;
  export_hf(dir, cfg, model, o);
  return dir;
}

std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::directory_iterator(dir)) m[e.path().filename().string()] = read_text_file(e.path().string());
  return m;
}

TEST(QuantizedFolder, RoundTripIsExactAndTheSourceIsUntouched) {
  const Config cfg = small_config();
  Model model(cfg.model);
  Rng rng(test::test_seed() + 2);
  model.init_weights(rng, 0.15);
  const std::string src = make_source("qf_src", cfg, model);
  const auto before = snapshot(src);
  const auto tokens = test::random_tokens(rng, 30, cfg.model.vocab_size);
  for (WType t : {WType::Q8, WType::Q4}) {
    const std::string out = test::tmp_path(std::string("qf_") + ops::wtype_name(t));
    fs::remove_all(out);
    InferenceModel q = load_inference_model(src, t);
    ExportOptions o;
    o.max_shard_bytes = 20000;  // several shards: each scale must share its weight's shard
    const int64_t shards = write_quantized(out, q.config, *q.weights, o);
    EXPECT_GT(shards, 1);
    InferenceModel back = load_inference_model(out);  // auto: the folder's own storage
    ASSERT_EQ(back.weights->type(), t);
    EXPECT_EQ(back.report.stored, t);
    EXPECT_GT(back.report.quantized, 0);
    ASSERT_EQ(back.weights->slots().size(), q.weights->slots().size());
    for (size_t i = 0; i < q.weights->slots().size(); ++i) {
      const auto &a = q.weights->slots()[i].mat, &b = back.weights->slots()[i].mat;
      ASSERT_EQ(a.bytes(), b.bytes());
      EXPECT_EQ(std::memcmp(a.data, b.data, (size_t)(a.rows * a.row_bytes())), 0) << q.weights->slots()[i].t.name;
      if (a.scales) EXPECT_EQ(std::memcmp(a.scales, b.scales, (size_t)(a.rows * a.blocks() * 2)), 0);
    }
    InferenceEngine e1(*q.weights), e2(*back.weights);
    EXPECT_EQ(score_tokens(e1, tokens), score_tokens(e2, tokens));
    // A Model (fp32: eval, export) loads the quantized folder dequantized.
    LoadedModel lm = load_model_dir(out);
    std::vector<float> deq(lm.model->params().size());
    for (const auto& s : q.weights->slots()) ops::dequantize_rows(deq.data() + s.t.offset, s.mat, 0, s.mat.rows);
    EXPECT_EQ(lm.model->params(), deq);
    // Rewriting over an existing folder replaces it.
    write_quantized(out, q.config, *q.weights, ExportOptions{});
    EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json")) << "stale shards of the previous write remain";
    EXPECT_EQ(load_inference_model(out).weights->bytes(), q.weights->bytes());
  }
  EXPECT_EQ(snapshot(src), before) << "quantizing modified the source folder";
}

// The CLI writes through io/output_dir.h's StagedOutput: a write that fails part-way (here: bf16
// storage is not a quantized format) leaves the previous folder exactly as it was.
TEST(QuantizedFolder, AFailedWriteLeavesTheOldFolder) {
  const Config cfg = small_config();
  Model model(cfg.model);
  Rng rng(3);
  model.init_weights(rng, 0.15);
  const std::string src = make_source("qf_src_fail", cfg, model);
  const std::string out = test::tmp_path("qf_fail_out");
  fs::remove_all(out);
  InferenceModel q = load_inference_model(src, WType::Q8);
  OutputRequest req;
  req.dir = out;
  req.command = "quantize";
  req.replaces = {"quantize"};
  req.force = true;
  req.inputs = {src};
  {
    StagedOutput o(req);
    write_quantized(o.path(), q.config, *q.weights, ExportOptions{});
    o.commit();
  }
  const auto before = snapshot(out);
  InferenceWeights bf = InferenceWeights::convert(model, WType::BF16);
  std::string staging;
  {
    StagedOutput o(req);
    staging = o.path();
    write_quantized(o.path(), q.config, *q.weights, ExportOptions{});  // a complete folder, then a failure
    EXPECT_THROW(write_quantized(o.path(), q.config, bf, ExportOptions{}), Error);
  }  // not committed
  EXPECT_EQ(snapshot(out), before);
  EXPECT_FALSE(fs::exists(staging)) << "the staging folder was left behind";
}

// Single-file q8 folder, rewritten through `edit` (name -> (dtype, shape, bytes)) or its config.
struct Entry {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
std::string quantized_dir(const std::string& name, WType t) {
  static const Config cfg = small_config();
  static Model* model = [] {
    auto* m = new Model(cfg.model);
    Rng rng(4);
    m->init_weights(rng, 0.15);
    return m;
  }();
  const std::string dir = test::tmp_path("qf_err_" + name);
  fs::remove_all(dir);
  InferenceWeights w = InferenceWeights::convert(*model, t);
  write_quantized(dir, cfg, w, ExportOptions{});
  return dir;
}
void rewrite(const std::string& file, const std::function<void(std::map<std::string, Entry>&)>& edit) {
  std::map<std::string, Entry> m;
  {
    SafeTensorsFile f(file);
    for (const auto& [n, t] : f.tensors()) m[n] = Entry{t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)};
  }
  edit(m);
  SafeTensorsWriter w;
  for (const auto& [n, e] : m) w.add(n, e.dtype, e.shape, e.bytes.data());
  w.write(file);
}
void edit_config(const std::string& dir, const std::function<void(json&)>& edit) {
  json j = json::parse(read_text_file(dir + "/config.json"));
  edit(j);
  write_file_atomic(dir + "/config.json", j.dump());
}
void expect_load_error(const std::string& dir, const std::vector<std::string>& parts) {
  std::string msg;
  try {
    load_inference_model(dir);
  } catch (const Error& e) {
    msg = e.what();
  }
  ASSERT_FALSE(msg.empty()) << "loaded a broken quantized folder " << dir;
  for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "':\n" << msg;
}

TEST(QuantizedFolder, BadFoldersAreClearErrors) {
  const std::string q = "model.layers.1.self_attn.q_proj.weight";  // [64, 64]: 2 blocks per row
  {
    const std::string d = quantized_dir("missing_scale", WType::Q8);
    rewrite(d + "/model.safetensors", [&](auto& m) { m.erase(q + "_scale"); });
    expect_load_error(d, {"model.safetensors", "missing scale tensor", q + "_scale", "BF16 [64, 2]"});
  }
  {
    const std::string d = quantized_dir("scale_dtype", WType::Q8);
    rewrite(d + "/model.safetensors", [&](auto& m) {
      Entry& e = m[q + "_scale"];
      std::vector<uint8_t> f32(e.bytes.size() * 2);
      for (size_t i = 0; i < e.bytes.size() / 2; ++i) {
        uint16_t h;
        std::memcpy(&h, e.bytes.data() + 2 * i, 2);
        const float v = bf16_to_f32(h);
        std::memcpy(f32.data() + 4 * i, &v, 4);
      }
      e = Entry{DType::F32, e.shape, f32};
    });
    expect_load_error(d, {"model.safetensors", q + "_scale", "dtype F32, expected BF16"});
  }
  {
    const std::string d = quantized_dir("scale_shape", WType::Q8);  // as if blocks were 64 wide
    rewrite(d + "/model.safetensors", [&](auto& m) {
      Entry& e = m[q + "_scale"];
      e.shape = {64, 1};
      e.bytes.resize(64 * 2);
    });
    expect_load_error(d, {"model.safetensors", q + "_scale", "shape [64, 1], expected [64, 2]", "block of 32"});
  }
  {
    const std::string d = quantized_dir("mislabelled", WType::Q4);  // q4 data, config says q8
    edit_config(d, [](json& j) { j["quantization_config"]["format"] = "q8_0"; });
    expect_load_error(d, {"model.safetensors", "model.embed_tokens.weight", "dtype U8, expected I8", "q8_0"});
  }
  {
    const std::string d = quantized_dir("weight_shape", WType::Q8);
    rewrite(d + "/model.safetensors", [&](auto& m) {
      Entry& e = m[q];
      e.shape = {32, 128};
    });
    expect_load_error(d, {"model.safetensors", q, "shape [32, 128], expected [64, 64]"});
  }
  {
    const std::string d = quantized_dir("block_size", WType::Q8);
    edit_config(d, [](json& j) { j["quantization_config"]["block_size"] = 64; });
    expect_load_error(d, {"config.json", "quantization_config.block_size 64", "expected 32"});
  }
  {
    const std::string d = quantized_dir("method", WType::Q8);
    edit_config(d, [](json& j) { j["quantization_config"]["quant_method"] = "gptq"; });
    expect_load_error(d, {"config.json", "quant_method \"gptq\"", "expected \"dsmoe\""});
  }
  {
    const std::string d = quantized_dir("no_config", WType::Q8);  // quantized tensors, plain config
    edit_config(d, [](json& j) { j.erase("quantization_config"); });
    expect_load_error(d, {"model.safetensors", "_scale", "quantization_config"});
  }
  {
    const std::string d = quantized_dir("nan_scale", WType::Q8);
    rewrite(d + "/model.safetensors", [&](auto& m) {
      const uint16_t nan = 0x7fc0;
      std::memcpy(m[q + "_scale"].bytes.data() + 6, &nan, 2);
    });
    expect_load_error(d, {"model.safetensors", q + "_scale", "non-finite or negative scale", "element 3"});
  }
}

}  // namespace
