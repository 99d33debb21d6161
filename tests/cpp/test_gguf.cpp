// GGUF export and import (io/gguf, infer/gguf_checkpoint, infer/gguf_vocab), against peers:
//   - llama.cpp itself (npm node-llama-cpp's CPU build, tests/gguf/llama_logprobs.mjs) loads what
//     `dsmoe export --format gguf` writes and scores the same ids, and tokenizes the same text;
//   - llama.cpp's Python package gguf-py (tests/gguf/write_gguf_py.py, with its own quantizers)
//     writes files dsmoe must import, and quantizes rows dsmoe's Q8_0/Q4_0 must equal byte for byte;
//   - hand-built corrupt files that must be refused with an error naming the problem.
// The model: a BPE tokenizer trained here (Llama 3 regex) and a DeepSeekMoE layout (3 layers, the
// first dense, 2 shared + 8 fine-grained routed experts, top-3, GQA 4/2 heads), random weights.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/rng.h"
#include "infer/chat_format.h"
#include "infer/engine.h"
#include "infer/gguf_checkpoint.h"
#include "infer/hf_checkpoint.h"
#include "infer/model_files.h"
#include "infer/text_codec.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "tokenizer/bpe_trainer.h"
#include "train/checkpoint.h"

using namespace dsmoe;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string local(const std::string& name) { return test::tmp_path("gguf_" + std::to_string(getpid()) + "_" + name); }

std::string q(const std::string& s) { return "'" + s + "'"; }

struct Shell {
  int rc;
  std::string out, err;
};
Shell sh(const std::string& cmd) {
  static int k = 0;
  const std::string base = local("sh" + std::to_string(k++));
  const int st = std::system((cmd + " > " + base + ".out 2> " + base + ".err < /dev/null").c_str());
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, read_text_file(base + ".out"), read_text_file(base + ".err")};
}
Shell dsmoe(const std::string& args) { return sh(std::string(DSMOE_BINARY) + " " + args); }

std::string node_modules() { return test::source_dir() + "/third_party/npm/node_modules"; }
bool have_llama() { return fs::exists(node_modules() + "/node-llama-cpp/dist/index.js"); }
std::string gguf_py() {  // the gguf-py package inside llama.cpp's source bundle, cloned once
  // CTest runs this file's tests side by side: each clones into its own folder and renames it into
  // place; a loser of the race removes its copy and uses the winner's.
  const std::string dir = test::tmp_path("llama_src");
  if (!fs::exists(dir + "/gguf-py/gguf/__init__.py")) {
    const std::string bundle = node_modules() + "/node-llama-cpp/llama/gitRelease.bundle";
    const std::string mine = dir + ".tmp." + std::to_string(getpid());
    fs::remove_all(mine);
    const Shell r = sh("git clone -q --no-checkout " + q(bundle) + " " + q(mine) + " && git -C " + q(mine) +
                       " checkout -q HEAD -- gguf-py");
    if (r.rc != 0) ADD_FAILURE() << "cloning " << bundle << ": " << r.err;
    std::error_code ec;
    fs::rename(mine, dir, ec);
    if (ec) fs::remove_all(mine);
  }
  return dir + "/gguf-py";
}
Shell python_gguf(const std::string& args) {
  return sh("PYTHONPATH=" + q(gguf_py()) + " /usr/bin/python3 " + args);
}
// Runs Python source `code` (written to a file: it holds quotes) with gguf-py importable.
Shell python_code(const std::string& code, const std::string& args) {
  static int k = 0;
  const std::string p = local("py" + std::to_string(k++) + ".py");
  write_file_atomic(p, code);
  return python_gguf(q(p) + " " + args);
}

// The text of the tests: sentences of a small word list (BPE learns merges from it).
std::string corpus(uint64_t seed, int sentences) {
  static const char* words[] = {"the", "model", "routes", "each", "token", "to", "experts", "shared", "fine",
                                "grained", "layers", "attention", "cache", "prefill", "decode", "Hello", "world",
                                "it's", "we'll", "42", "1234", "café", "naïve", "(x)", "a+b", "don't", "DeepSeek"};
  Rng rng(seed);
  std::string s;
  for (int i = 0; i < sentences; ++i) {
    const int n = 3 + (int)(rng.next_u64() % 8);
    for (int w = 0; w < n; ++w) {
      s += words[rng.next_u64() % (sizeof(words) / sizeof(words[0]))];
      s += w + 1 < n ? " " : (i % 5 == 4 ? ".\n" : ". ");
    }
  }
  return s;
}

const char* kChatTemplate = "{% for m in messages %}{{ m['content'] }}{% endfor %}";

struct Fixture {
  std::string run_dir, tokenizer, text;
  Config cfg;
  std::unique_ptr<Model> model;
  std::vector<std::vector<int32_t>> seqs;
};

Config moe_config(int64_t vocab) {
  Config c;
  ModelConfig& m = c.model;
  m.vocab_size = vocab;
  m.hidden_size = 64;
  m.intermediate_size = 96;
  m.moe_intermediate_size = 32;
  m.num_hidden_layers = 3;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.n_shared_experts = 2;
  m.n_routed_experts = 8;
  m.num_experts_per_tok = 3;
  m.first_k_dense_replace = 1;
  m.max_position_embeddings = 128;
  m.bos_token_id = 0;
  m.eos_token_id = 1;
  c.train.seq_len = 64;
  validate(c, "test_gguf");
  return c;
}

Fixture& fixture() {
  static Fixture f = [] {
    Fixture f;
    f.run_dir = local("run");
    fs::remove_all(f.run_dir);
    fs::create_directories(f.run_dir);
    f.tokenizer = f.run_dir + "/tokenizer.json";
    write_file_atomic(f.tokenizer, tok::train_bpe_json({corpus(1, 400)}, 384, {}));
    const TextCodec codec = TextCodec::load(f.tokenizer);
    f.cfg = moe_config(codec.vocab_size());
    f.model = std::make_unique<Model>(f.cfg.model);
    Rng rng(7);
    f.model->init_weights(rng, 0.15);
    save_checkpoint(f.run_dir, f.cfg, *f.model, nullptr, TrainState{});
    write_file_atomic(f.run_dir + "/tokenizer_config.json",
                      make_tokenizer_config(f.tokenizer, 0, 1, kChatTemplate).dump(2));
    f.text = corpus(99, 12);
    f.seqs.push_back(codec.encode(f.text.substr(0, 200), true));
    Rng r2(3);
    f.seqs.push_back(test::random_tokens(r2, 40, f.cfg.model.vocab_size));
    return f;
  }();
  return f;
}

std::string write_ids(const std::vector<std::vector<int32_t>>& seqs) {
  const std::string p = local("ids.jsonl");
  std::string s;
  for (const auto& v : seqs) s += json(v).dump() + "\n";
  write_file_atomic(p, s);
  return p;
}

std::vector<std::vector<double>> dsmoe_logprobs(const InferenceWeights& w, const std::vector<std::vector<int32_t>>& seqs) {
  InferenceEngine eng(w);
  std::vector<std::vector<double>> out;
  for (const auto& s : seqs) out.push_back(score_tokens(eng, s));
  return out;
}

struct LlamaResult {
  std::vector<std::vector<double>> logprobs;
  std::vector<int32_t> tokens;
};
LlamaResult llama_logprobs(const std::string& gguf, const std::vector<std::vector<int32_t>>& seqs,
                           const std::string& tokenize_file = "") {
  const std::string out = local("llama.json");
  const Shell r = sh("node " + q(test::source_dir() + "/tests/gguf/llama_logprobs.mjs") + " " + q(gguf) + " " +
                   q(write_ids(seqs)) + " " + q(out) + (tokenize_file.empty() ? "" : " --tokenize " + q(tokenize_file)));
  LlamaResult res;
  if (r.rc != 0) {
    ADD_FAILURE() << "llama.cpp (node-llama-cpp) failed on " << gguf << ":\n" << r.out << r.err;
    return res;
  }
  const json j = json::parse(read_text_file(out));
  for (size_t s = 0; s < j["logprobs"].size(); ++s) {
    std::vector<double> v;
    for (size_t t = 0; t < j["logprobs"][s].size(); ++t) {
      const json& x = j["logprobs"][s][t];
      v.push_back(x.is_null() ? -INFINITY : x.get<double>());
      const double sum = j["prob_sums"][s][t].get<double>();
      EXPECT_NEAR(sum, 1.0, 1e-4) << "llama.cpp's probabilities at sequence " << s << " position " << t
                                  << " do not sum to 1: truncated by its sampler?";
    }
    res.logprobs.push_back(v);
  }
  if (j.contains("tokens")) res.tokens = j["tokens"].get<std::vector<int32_t>>();
  return res;
}

// max |a - b| over all positions (with where it happened) <= tol, and the mean <= mean_tol.
::testing::AssertionResult logprobs_close(const std::string& what, const std::vector<std::vector<double>>& got,
                                          const std::vector<std::vector<double>>& want, double tol,
                                          double mean_tol = INFINITY) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << what << ": " << got.size() << " vs " << want.size() << " sequences";
  double worst = 0, sum = 0;
  size_t ws = 0, wt = 0, n = 0;
  for (size_t s = 0; s < got.size(); ++s) {
    if (got[s].size() != want[s].size())
      return ::testing::AssertionFailure() << what << ": sequence " << s << " has " << got[s].size() << " vs " << want[s].size();
    for (size_t t = 0; t < got[s].size(); ++t) {
      const double d = std::fabs(got[s][t] - want[s][t]);
      sum += d, n++;
      if (!(d <= worst)) worst = d, ws = s, wt = t;
    }
  }
  if (n == 0) return ::testing::AssertionFailure() << what << ": nothing scored";
  std::ostringstream msg;
  msg << what << ": max |dlogp| " << worst << " at sequence " << ws << " position " << wt << " (" << got[ws][wt]
      << " vs " << want[ws][wt] << "), tolerance " << tol << "; mean " << sum / (double)n << ", tolerance " << mean_tol;
  std::printf("%s\n", msg.str().c_str());
  if (worst <= tol && sum / (double)n <= mean_tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << msg.str();
}

// ---------------------------------------------------------------- format

TEST(GgufFormat, WriterAndReaderAgree) {
  GgufWriter w;
  w.add_u32("a.u32", 7);
  w.add_i32("a.i32", -3);
  w.add_u64("a.u64", 1ull << 40);
  w.add_f32("a.f32", 0.25f);
  w.add_bool("a.bool", true);
  w.add_string("a.str", "héllo");
  w.add_strings("a.strs", {"x", "", "y z"});
  w.add_i32s("a.ints", {1, -2, 3});
  std::vector<float> v(64 * 3);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin((double)i);
  w.add_tensor("t.f32", GgmlType::F32, {64, 3}, [&](std::vector<uint8_t>& b) {
    b.resize(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
  });
  w.add_tensor("t.q8", GgmlType::Q8_0, {64, 3}, [&](std::vector<uint8_t>& b) {
    b.resize(3 * ggml_row_bytes(GgmlType::Q8_0, 64));
    for (int r = 0; r < 3; ++r) quantize_row_q8_0(v.data() + 64 * r, 64, b.data() + r * ggml_row_bytes(GgmlType::Q8_0, 64));
  });
  const std::string p = local("rt.gguf");
  w.write(p);
  const GgufFile f(p);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_uint("a.u32", 100), 7u);
  EXPECT_EQ(f.find("a.i32")->i, -3);
  EXPECT_EQ(f.get_uint("a.u64", UINT64_MAX), 1ull << 40);
  EXPECT_EQ(f.get_float("a.f32"), 0.25);
  EXPECT_TRUE(f.get_bool("a.bool"));
  EXPECT_EQ(f.get_string("a.str"), "héllo");
  EXPECT_EQ(f.get_array("a.strs", GgufType::STRING).strs, (std::vector<std::string>{"x", "", "y z"}));
  EXPECT_EQ(f.get_array("a.ints", GgufType::I32).ints, (std::vector<int64_t>{1, -2, 3}));
  ASSERT_EQ(f.tensors().size(), 2u);
  const GgufTensor* t = f.find_tensor("t.f32");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->ne, (std::vector<int64_t>{64, 3}));
  EXPECT_EQ(std::memcmp(t->data, v.data(), v.size() * 4), 0);
  EXPECT_EQ(f.find_tensor("t.q8")->offset % 32, 0u);
  EXPECT_TRUE(test::error_mentions([&] { f.get_uint("a.str", 10); }, {"a.str", "STRING", "integer"}));
  EXPECT_TRUE(test::error_mentions([&] { f.get_string("nope"); }, {"nope", "missing"}));
  // The peer reader: gguf-py's GGUFReader sees the same keys and tensors.
  const Shell r = python_code("import gguf,sys\nr=gguf.GGUFReader(sys.argv[1])\n"
                              "print(r.fields['a.str'].contents(), r.fields['a.ints'].contents(), "
                              "[(t.name, [int(x) for x in t.shape], t.tensor_type.name) for t in r.tensors])\n",
                              q(p));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, "héllo [1, -2, 3] [('t.f32', [64, 3], 'F32'), ('t.q8', [64, 3], 'Q8_0')]\n");
}

// dsmoe's Q8_0 / Q4_0 quantizers write the bytes gguf-py's (llama.cpp's numpy reference) write, and
// its dequantizer reads them back as gguf-py's does.
TEST(GgufFormat, BlockQuantizersEqualGgufPy) {
  const int64_t n = 32 * 40;
  std::vector<float> x(n);
  Rng rng(test::test_seed());
  for (auto& v : x) v = (float)(rng.normal() * 0.05);
  for (int j = 0; j < 32; ++j) x[32 * 3 + j] = 0;      // an all-zero block
  x[32 * 5 + 7] = 3.0f;                                // one large value: the block's scale
  x[32 * 6 + 1] = -1e-6f;                              // tiny values: subnormal f16 scales
  for (int j = 0; j < 32; ++j) x[32 * 7 + j] = (j % 2 ? 1e-7f : -2e-7f);
  const std::string in = local("q_in.f32"), outp = local("q_out");
  write_file_atomic(in, std::string((const char*)x.data(), x.size() * 4));
  const Shell r = python_code("import gguf,numpy as np,sys\n"
                              "x=np.fromfile(sys.argv[1],dtype=np.float32).reshape(1,-1)\n"
                              "for t in ('Q8_0','Q4_0'):\n"
                              "  qt=gguf.GGMLQuantizationType[t]; b=gguf.quants.quantize(x,qt)\n"
                              "  b.tofile(sys.argv[2]+'.'+t)\n"
                              "  gguf.quants.dequantize(b,qt).astype(np.float32).tofile(sys.argv[2]+'.'+t+'.deq')\n",
                              q(in) + " " + q(outp));
  ASSERT_EQ(r.rc, 0) << r.err;
  for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q4_0}) {
    const std::string name = ggml_type_name((uint32_t)t);
    std::vector<uint8_t> mine((size_t)ggml_row_bytes(t, n));
    (t == GgmlType::Q8_0 ? quantize_row_q8_0 : quantize_row_q4_0)(x.data(), n, mine.data());
    const std::string theirs = read_text_file(outp + "." + name);
    ASSERT_EQ(theirs.size(), mine.size()) << name;
    int64_t first = -1, diffs = 0;
    for (size_t i = 0; i < mine.size(); ++i)
      if ((uint8_t)theirs[i] != mine[i]) diffs++, first = first < 0 ? (int64_t)i : first;
    EXPECT_EQ(diffs, 0) << name << ": " << diffs << " bytes differ from gguf-py's, first at byte " << first << " (block "
                        << first / (t == GgmlType::Q8_0 ? kQ8_0Bytes : kQ4_0Bytes) << ")";
    std::vector<float> deq(n);
    dequantize_row(t, (const uint8_t*)theirs.data(), n, deq.data());
    const std::string dq = read_text_file(outp + "." + name + ".deq");
    EXPECT_TRUE(test::all_close(name + " dequantized", deq.data(), (const float*)dq.data(), n, {n}, 0, 0));
  }
}

// A GGUF file assembled field by field, so each test can break exactly one field.
struct Raw {
  std::string b;
  template <typename T>
  Raw& put(T v) {
    b.append((const char*)&v, sizeof(T));
    return *this;
  }
  Raw& str(const std::string& s) {
    put<uint64_t>(s.size());
    b += s;
    return *this;
  }
};
// "GGUF" v3, one key general.architecture = "x", one F32 tensor "w" [32, 2] at offset 0.
struct RawParts {
  uint32_t version = 3;
  uint64_t n_tensors = 1, n_kv = 1;
  uint64_t str_len = 1;            // of the value "x"
  uint32_t tensor_type = 0;
  uint32_t n_dims = 2;
  uint64_t ne0 = 32, ne1 = 2;
  uint64_t offset = 0;
  int64_t data_bytes = 32 * 2 * 4;
  std::string magic = "GGUF";
};
std::string raw_file(const RawParts& p) {
  Raw r;
  r.b = p.magic;
  r.put(p.version).put(p.n_tensors).put(p.n_kv);
  r.str("general.architecture").put<uint32_t>(8).put<uint64_t>(p.str_len);
  r.b += "x";
  r.str("w").put(p.n_dims);
  r.put(p.ne0);
  if (p.n_dims > 1) r.put(p.ne1);
  for (uint32_t d = 2; d < p.n_dims; ++d) r.put<uint64_t>(1);
  r.put(p.tensor_type).put(p.offset);
  r.b.resize((r.b.size() + 31) / 32 * 32, '\0');
  r.b.append((size_t)std::max<int64_t>(0, p.data_bytes), '\0');
  return r.b;
}

::testing::AssertionResult refused(const std::string& bytes, const std::vector<std::string>& needles) {
  static int k = 0;
  const std::string p = local("bad" + std::to_string(k++) + ".gguf");
  write_file_atomic(p, bytes);
  return test::error_mentions([&] { GgufFile f(p); }, needles);
}

TEST(GgufFormat, CorruptFilesAreRefusedNamingTheProblem) {
  const std::string good = raw_file({});
  {
    const std::string p = local("good.gguf");
    write_file_atomic(p, good);
    const GgufFile f(p);
    EXPECT_EQ(f.tensors().size(), 1u);
  }
  RawParts p;
  p.magic = "GGUG";
  EXPECT_TRUE(refused(raw_file(p), {"bad magic", "GGUF"}));
  p = {};
  p.version = 1;
  EXPECT_TRUE(refused(raw_file(p), {"version 1"}));
  p.version = 0x03000000;  // a big-endian v3
  EXPECT_TRUE(refused(raw_file(p), {"unsupported GGUF version", "big-endian"}));
  p = {};
  p.n_tensors = 1ull << 40;
  EXPECT_TRUE(refused(raw_file(p), {"tensor count", "exceeds the limit"}));
  p = {};
  p.n_kv = UINT64_MAX;
  EXPECT_TRUE(refused(raw_file(p), {"key/value count", "exceeds the limit"}));
  p = {};
  p.str_len = 1ull << 62;
  EXPECT_TRUE(refused(raw_file(p), {"string value", "above the limit"}));
  p.str_len = 5000;  // within the limit but past the end of the file
  EXPECT_TRUE(refused(raw_file(p), {"truncated"}));
  p = {};
  p.tensor_type = 12;
  EXPECT_TRUE(refused(raw_file(p), {"tensor 'w'", "Q4_K", "F32, F16, BF16, Q8_0, Q4_0"}));
  p.tensor_type = 77;
  EXPECT_TRUE(refused(raw_file(p), {"tensor 'w'", "type 77"}));
  p = {};
  p.offset = 8;
  EXPECT_TRUE(refused(raw_file(p), {"tensor 'w'", "offset 8", "alignment 32"}));
  p.offset = 1ull << 60;
  EXPECT_TRUE(refused(raw_file(p), {"tensor 'w'", "past the end"}));
  p = {};
  p.data_bytes = 100;  // the tensor needs 256 bytes
  EXPECT_TRUE(refused(raw_file(p), {"tensor 'w'", "past the end", "truncated"}));
  p = {};
  p.n_dims = 5;
  EXPECT_TRUE(refused(raw_file(p), {"tensor 'w'", "5 dimensions"}));
  p = {};
  p.ne0 = 1ull << 40;
  p.ne1 = 1ull << 40;
  EXPECT_TRUE(refused(raw_file(p), {"tensor 'w' size", "overflows"}));
  p = {};
  p.tensor_type = 8;  // Q8_0 with 33-value rows
  p.ne0 = 33;
  EXPECT_TRUE(refused(raw_file(p), {"tensor 'w'", "not a multiple of the block size"}));
  {  // an unknown value type; an array of arrays; a huge array count
    std::string b = good;
    const size_t at = 4 + 4 + 8 + 8 + 8 + std::strlen("general.architecture");
    uint32_t t = 13;
    std::memcpy(&b[at], &t, 4);
    EXPECT_TRUE(refused(b, {"general.architecture", "unknown GGUF value type 13"}));
    Raw r;
    r.b = "GGUF";
    r.put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1).str("k").put<uint32_t>(9).put<uint32_t>(9).put<uint64_t>(1);
    EXPECT_TRUE(refused(r.b, {"'k'", "arrays of arrays"}));
    Raw h;
    h.b = "GGUF";
    h.put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1).str("k").put<uint32_t>(9).put<uint32_t>(4).put<uint64_t>(1ull << 61);
    EXPECT_TRUE(refused(h.b, {"'k'", "cannot fit"}));
    Raw d;  // the same key twice
    d.b = "GGUF";
    d.put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(2).str("k").put<uint32_t>(4).put<uint32_t>(1).str("k").put<uint32_t>(4).put<uint32_t>(2);
    EXPECT_TRUE(refused(d.b, {"'k'", "more than once"}));
  }
  // Every truncation of a valid file is refused (never a crash or a hang).
  for (size_t n = 0; n < good.size(); n += 3) EXPECT_TRUE(refused(good.substr(0, n), {"truncated"})) << n << " bytes";
}

// ---------------------------------------------------------------- model

std::string export_gguf_cli(const std::string& type) {
  const std::string out = local("model-" + type + ".gguf");
  fs::remove(out);
  const Shell r = dsmoe("export --format gguf --type " + type + " --model " + q(fixture().run_dir) + " --out " + q(out));
  EXPECT_EQ(r.rc, 0) << r.out << r.err;
  return out;
}

// f32 export -> import: every parameter bit for bit, hence the same log-probs (the same kernels on
// the same bits); the CLI's score on the file equals the run folder's.
TEST(GgufModel, F32RoundTripIsBitExact) {
  Fixture& f = fixture();
  const std::string g = export_gguf_cli("f32");
  const LoadedModel lm = load_model_dir(g);
  ASSERT_EQ(lm.model->params().size(), f.model->params().size());
  int64_t diff = 0, first = -1;
  for (size_t i = 0; i < lm.model->params().size(); ++i)
    if (std::memcmp(&lm.model->params()[i], &f.model->params()[i], 4) != 0) diff++, first = first < 0 ? (int64_t)i : first;
  EXPECT_EQ(diff, 0) << "parameters differ after the GGUF round trip, first at flat offset " << first;
  const std::string ids = write_ids(f.seqs);
  const Shell a = dsmoe("score --model " + q(f.run_dir) + " --ids-jsonl " + q(ids));
  const Shell b = dsmoe("score --model " + q(g) + " --ids-jsonl " + q(ids));
  ASSERT_EQ(a.rc, 0) << a.err;
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_EQ(json::parse(a.out)["sequences"], json::parse(b.out)["sequences"]);
}

// The tokenizer survives the trip: dsmoe's tokenizer rebuilt from tokenizer.ggml.* and llama.cpp's
// both encode the text as the original tokenizer.json does.
TEST(GgufModel, TokenizerEncodesTheSameIds) {
  Fixture& f = fixture();
  const std::string g = export_gguf_cli("f32");
  const TextCodec orig = TextCodec::for_model(f.run_dir, "", f.cfg.model);
  const TextCodec back = TextCodec::for_model(g, "", f.cfg.model);
  const std::string text = f.text + " unseen wörds 98765 <|end_of_text|> tabs\tand\n\nnewlines  ";
  EXPECT_EQ(back.encode(text, true), orig.encode(text, true));
  EXPECT_EQ(back.bos_id(), orig.bos_id());
  EXPECT_EQ(back.eos_id(), orig.eos_id());
  EXPECT_EQ(back.decode(orig.encode(text)), orig.decode(orig.encode(text)));
  EXPECT_EQ(GgufFile(g).get_string("tokenizer.chat_template"), kChatTemplate);  // from tokenizer_config.json
  if (!have_llama()) GTEST_SKIP() << "node-llama-cpp is not installed";
  const std::string tf = local("text.txt");
  write_file_atomic(tf, f.text);
  const LlamaResult lr = llama_logprobs(g, {{0, 1}}, tf);
  EXPECT_EQ(lr.tokens, orig.encode(f.text, false)) << "llama.cpp tokenizes the text differently";
}

// The chat template travels with the file: export writes the model's template as
// tokenizer.chat_template, and `chat` / `serve` on the GGUF render conversations with it and with
// the file's BOS / EOS token strings, exactly as on the folder (tokenizer_config.json). A re-export
// (GGUF -> GGUF, GGUF -> HF folder) keeps it.
TEST(GgufModel, ChatUsesTheFilesChatTemplate) {
  Fixture& f = fixture();
  const std::string dir = local("chat_run");
  fs::remove_all(dir);
  fs::copy(f.run_dir, dir, fs::copy_options::recursive);
  const std::string tmpl =
      "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
      "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}";
  const json tc = make_tokenizer_config(dir + "/tokenizer.json", 0, 1, tmpl);
  write_file_atomic(dir + "/tokenizer_config.json", tc.dump(2));
  const std::string g = local("chat.gguf");
  fs::remove(g);
  const Shell e = dsmoe("export --format gguf --type f32 --model " + q(dir) + " --out " + q(g));
  ASSERT_EQ(e.rc, 0) << e.out << e.err;
  EXPECT_NE(e.out.find("chat template of " + dir + "/tokenizer_config.json"), std::string::npos) << e.out;
  EXPECT_EQ(GgufFile(g).get_string("tokenizer.chat_template"), tmpl);

  const std::vector<ChatMessage> msgs = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Why?"}};
  const std::string bos = tc["bos_token"], eos = tc["eos_token"];
  const std::string want = bos + "<system>Be brief.<user>Hi<assistant>Hello" + eos + "<user>Why?<assistant>";
  const ChatFormat from_file = ChatFormat::load(g);
  EXPECT_TRUE(from_file.from_model());
  EXPECT_EQ(from_file.describe(), "chat_template from " + g + " (tokenizer.chat_template)");
  EXPECT_EQ(from_file.bos_token(), bos);
  EXPECT_EQ(from_file.eos_token(), eos);
  EXPECT_EQ(from_file.render(msgs, true), want);
  EXPECT_EQ(ChatFormat::load(dir).render(msgs, true), want);

  // `chat` on the file and on the folder: the same conversation, the same greedy replies.
  const std::string in = local("chat_in.txt");
  write_file_atomic(in, "the model routes\nshared experts\n");
  const std::string args = " --temperature 0 --max-new-tokens 6 --ctx 96 < " + q(in);
  const Shell a = sh(std::string(DSMOE_BINARY) + " chat --model " + q(g) + args);
  const Shell b = sh(std::string(DSMOE_BINARY) + " chat --model " + q(dir) + args);
  ASSERT_EQ(a.rc, 0) << a.err;
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_NE(a.err.find("dsmoe: chat format: chat_template from " + g + " (tokenizer.chat_template)"), std::string::npos)
      << a.err;
  EXPECT_EQ(a.out, b.out) << "chat on the GGUF file:\n" << a.out << "\non the folder:\n" << b.out;

  // Re-exports keep the template: GGUF -> GGUF and GGUF -> HF folder.
  const std::string g2 = local("chat2.gguf");
  fs::remove(g2);
  const Shell e2 = dsmoe("export --format gguf --type q8_0 --model " + q(g) + " --out " + q(g2));
  ASSERT_EQ(e2.rc, 0) << e2.out << e2.err;
  EXPECT_EQ(GgufFile(g2).get_string("tokenizer.chat_template"), tmpl);
  const std::string hf = local("chat_hf");
  fs::remove_all(hf);
  const Shell e3 = dsmoe("export --model " + q(g) + " --out " + q(hf));
  ASSERT_EQ(e3.rc, 0) << e3.out << e3.err;
  EXPECT_EQ(ChatFormat::load(hf).render(msgs, true), want);

  // A file without a template: the DeepSeek default, said as such.
  const std::string plain = local("plain_run");
  fs::remove_all(plain);
  fs::copy(f.run_dir, plain, fs::copy_options::recursive);
  write_file_atomic(plain + "/tokenizer_config.json", make_tokenizer_config(plain + "/tokenizer.json", 0, 1, "").dump(2));
  const std::string gp = local("plain.gguf");
  fs::remove(gp);
  ASSERT_EQ(dsmoe("export --format gguf --model " + q(plain) + " --out " + q(gp)).rc, 0);
  EXPECT_EQ(GgufFile(gp).find("tokenizer.chat_template"), nullptr);
  const ChatFormat dflt = ChatFormat::load(gp);
  EXPECT_FALSE(dflt.from_model());
  EXPECT_EQ(dflt.bos_token(), bos) << "the file's BOS token string, as a folder's tokenizer_config.json gives it";
}

// llama.cpp on dsmoe's f32 file: the same model in another engine. Both compute in fp32 with
// different summation orders (llama.cpp's ggml kernels, its softmax and its log of a float
// probability): with reductions of at most 96 terms of O(1) values, logits agree to ~1e-6 and
// log-probs to a few 1e-6; 2e-5 leaves room for the vocabulary's log-sum-exp.
TEST(GgufModel, LlamaCppMatchesDsmoeAtF32) {
  if (!have_llama()) GTEST_SKIP() << "node-llama-cpp is not installed";
  Fixture& f = fixture();
  const std::string g = export_gguf_cli("f32");
  const InferenceWeights w = InferenceWeights::view(*f.model);
  EXPECT_TRUE(logprobs_close("llama.cpp f32 vs dsmoe", llama_logprobs(g, f.seqs).logprobs, dsmoe_logprobs(w, f.seqs), 2e-5));
}

// bf16 / q8_0 / q4_0 files: dsmoe imports the file with fp32 storage (the exact dequantized weights)
// and llama.cpp runs it. llama.cpp also rounds every matmul's activations to the weights' dot type
// (f16 for F16 weights, bf16 for BF16, Q8_0 blocks for Q8_0/Q4_0: half-ulp 2^-12, 2^-9 and
// amax/254 per 32-block), which dsmoe does not; that is the whole difference (f32 agrees to 3e-6).
// Its size: smooth first-order error proportional to the rounding (f16: mean 2.3e-4 measured), plus
// the tokens whose top-k routing flips under the perturbation (bf16/q8/q4: the max outliers).
// Measured on this model (seeded weights, the same every run): bf16 0.042 / 0.0075; q8_0 0.107 /
// 0.023; q4_0 0.110 / 0.032, the same on every CPU seen. The tolerances are ~2.5x those, not derived
// bounds. f16 depends on the CPU's ggml kernel: max 6.9e-4 / mean 2.3e-4 on a Sapphire Rapids
// machine, 5.2e-3 / 1.1e-3 on a Zen 5 one (another ggml kernel; which operands it rounds, not read).
// Its tolerance is bf16's scaled by the ratio of the two roundings' unit roundoffs, 2^-11 / 2^-8 =
// 1/8 (the error is first order in the rounding: the Zen 5 figures are bf16's / 8.1 and / 6.8).
// What they catch: a layout or mapping error (nibble order, scale type, expert order, the RoPE
// permutation) moves log-probs by the model's full spread (~1 nat), far above them.
struct Tol {
  double max, mean;
};
constexpr Tol kBf16Rounding = {0.12, 0.02};
const std::map<std::string, Tol> kActivationRounding = {{"f16", {kBf16Rounding.max / 8, kBf16Rounding.mean / 8}},
                                                        {"bf16", kBf16Rounding},
                                                        {"q8_0", {0.3, 0.06}},
                                                        {"q4_0", {0.3, 0.08}}};

// llama.cpp and dsmoe (fp32 storage: the file's exact weights) on GGUF file `g` of storage `type`.
void expect_engines_agree(const std::string& g, const std::string& type, const std::string& what) {
  const InferenceModel im = load_inference_model(g, ops::WType::F32);
  const Tol t = kActivationRounding.at(type);
  EXPECT_TRUE(logprobs_close("llama.cpp vs dsmoe on " + what, llama_logprobs(g, fixture().seqs).logprobs,
                             dsmoe_logprobs(*im.weights, fixture().seqs), t.max, t.mean));
}

TEST(GgufModel, LlamaCppMatchesDsmoeOnQuantizedFiles) {
  if (!have_llama()) GTEST_SKIP() << "node-llama-cpp is not installed";
  for (const std::string type : {"bf16", "q8_0", "q4_0"}) expect_engines_agree(export_gguf_cli(type), type, "dsmoe's " + type + " file");
}

// A file dsmoe did not write: gguf-py converts dsmoe's HF export as convert_hf_to_gguf.py does.
// f32: dsmoe's log-probs on it equal the HF folder's bit for bit, and its tokenizer encodes as the
// folder's; q8_0/q4_0/f16: below.
TEST(GgufModel, ImportsAFileWrittenByGgufPy) {
  Fixture& f = fixture();
  const std::string hf = local("hf");
  fs::remove_all(hf);
  const Shell e = dsmoe("export --model " + q(f.run_dir) + " --out " + q(hf));
  ASSERT_EQ(e.rc, 0) << e.err;
  const std::string g = local("py-f32.gguf");
  const Shell r = python_gguf(q(test::source_dir() + "/tests/gguf/write_gguf_py.py") + " " + q(hf) + " " + q(g) + " f32");
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  const InferenceModel from_hf = load_inference_model(hf, ops::WType::F32);
  const InferenceModel from_gguf = load_inference_model(g, std::nullopt);
  EXPECT_EQ(from_gguf.weights->type(), ops::WType::F32);
  const auto want = dsmoe_logprobs(*from_hf.weights, f.seqs);
  EXPECT_TRUE(logprobs_close("gguf-py f32 file vs HF folder", dsmoe_logprobs(*from_gguf.weights, f.seqs), want, 0));
  const TextCodec back = TextCodec::for_model(g, "", from_gguf.config.model);
  EXPECT_EQ(back.encode(f.text, true), TextCodec::for_model(hf, "", from_hf.config.model).encode(f.text, true));
  // q8_0 / q4_0 (gguf-py's numpy quantizers): the same tensors as dsmoe's export, byte for byte, so
  // LlamaCppMatchesDsmoeOnQuantizedFiles covers them in llama.cpp; dsmoe reads them as it writes them.
  for (const std::string type : {"q8_0", "q4_0"}) {
    const std::string gq = local("py-" + type + ".gguf");
    const Shell rq = python_gguf(q(test::source_dir() + "/tests/gguf/write_gguf_py.py") + " " + q(hf) + " " + q(gq) + " " + type);
    ASSERT_EQ(rq.rc, 0) << rq.out << rq.err;
    const GgufFile theirs(gq), mine(export_gguf_cli(type));
    ASSERT_EQ(theirs.tensors().size(), mine.tensors().size());
    for (const GgufTensor& a : theirs.tensors()) {
      const GgufTensor* b = mine.find_tensor(a.name);
      ASSERT_TRUE(b) << a.name << " is missing from dsmoe's " << type << " export";
      EXPECT_EQ(a.ne, b->ne) << a.name;
      EXPECT_EQ(a.type, b->type) << a.name;
      EXPECT_TRUE(a.nbytes == b->nbytes && std::memcmp(a.data, b->data, a.nbytes) == 0)
          << a.name << ": dsmoe's " << type << " bytes differ from gguf-py's";
    }
  }
  // f16, a type dsmoe does not write: llama.cpp and dsmoe agree on gguf-py's file.
  const std::string g16 = local("py-f16.gguf");
  const Shell r16 = python_gguf(q(test::source_dir() + "/tests/gguf/write_gguf_py.py") + " " + q(hf) + " " + q(g16) + " f16");
  ASSERT_EQ(r16.rc, 0) << r16.out << r16.err;
  if (!have_llama()) GTEST_SKIP() << "node-llama-cpp is not installed";
  expect_engines_agree(g16, "f16", "gguf-py's f16 file");
}

// The CLI refuses what it cannot do faithfully, exit 1 with the reason; corrupt files too.
TEST(GgufModel, CliRefusalsNameTheProblem) {
  Fixture& f = fixture();
  const std::string ids = write_ids(f.seqs);
  {  // norm_topk_prob true: llama.cpp would compute another model
    const std::string dir = local("topk");
    fs::remove_all(dir);
    Config c = f.cfg;
    c.model.norm_topk_prob = true;
    save_checkpoint(dir, c, *f.model, nullptr, TrainState{});
    fs::copy_file(f.tokenizer, dir + "/tokenizer.json");
    const Shell r = dsmoe("export --format gguf --model " + q(dir) + " --out " + q(local("topk.gguf")));
    EXPECT_EQ(r.rc, 1) << r.err;
    EXPECT_NE(r.err.find("norm_topk_prob"), std::string::npos) << r.err;
  }
  {  // q4_0 needs rows of a multiple of 32 values: the byte-level test model's experts have 12
    const std::string dir = local("bytes");
    fs::remove_all(dir);
    const Config c = test::tiny_byte_model_config(64, 32);
    Model m(c.model);
    Rng rng(5);
    m.init_weights(rng, 0.2);
    save_checkpoint(dir, c, m, nullptr, TrainState{});
    const Shell r = dsmoe("export --format gguf --type q4_0 --model " + q(dir) + " --out " + q(local("b.gguf")));
    EXPECT_EQ(r.rc, 1) << r.err;
    EXPECT_NE(r.err.find("not a multiple of 32"), std::string::npos) << r.err;
    // f32 works: a byte-level model is the BPE of the 256 byte tokens without merges.
    const std::string g = local("bytes.gguf");
    const Shell ok = dsmoe("export --format gguf --type f32 --model " + q(dir) + " --out " + q(g));
    ASSERT_EQ(ok.rc, 0) << ok.err;
    const TextCodec back = TextCodec::for_model(g, "", c.model);
    const std::string text = "bytes: h\xc3\xa9llo \x01\x7f";
    std::vector<int32_t> want;
    for (unsigned char ch : text) want.push_back(ch);
    EXPECT_EQ(back.encode(text, true), want);
    if (have_llama()) {
      const std::string tf = local("bytes.txt");
      write_file_atomic(tf, text);
      EXPECT_EQ(llama_logprobs(g, {{0, 1}}, tf).tokens, want) << "llama.cpp tokenizes the byte-level model differently";
    }
  }
  {  // --type with the HF format; --dtype with GGUF: usage errors
    EXPECT_EQ(dsmoe("export --type q8_0 --model " + q(f.run_dir) + " --out " + q(local("x"))).rc, 2);
    EXPECT_EQ(dsmoe("export --format gguf --dtype bf16 --model " + q(f.run_dir) + " --out " + q(local("x.gguf"))).rc, 2);
  }
  {  // corrupt files through every reading command: exit 1 naming the problem
    RawParts p;
    p.tensor_type = 12;
    const std::string bad = local("bad-cli.gguf");
    write_file_atomic(bad, raw_file(p));
    const Shell r = dsmoe("score --model " + q(bad) + " --ids-jsonl " + q(ids));
    EXPECT_EQ(r.rc, 1) << r.err;
    EXPECT_NE(r.err.find("Q4_K"), std::string::npos) << r.err;
    const std::string good = export_gguf_cli("q8_0");
    std::string bytes = read_text_file(good);
    const std::string cut = local("cut.gguf");
    write_file_atomic(cut, bytes.substr(0, bytes.size() - 100));
    const Shell t = dsmoe("generate --model " + q(cut) + " --prompt-ids 0,5,6 --max-new-tokens 2");
    EXPECT_EQ(t.rc, 1) << t.err;
    EXPECT_NE(t.err.find("past the end"), std::string::npos) << t.err;
  }
}

}  // namespace
