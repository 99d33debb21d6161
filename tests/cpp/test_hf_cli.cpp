// The inference subcommands end to end on a HF checkpoint folder written by `dsmoe export`:
// generate (--prompt-ids --json, batched, text streaming), score (--ids-jsonl, --text-file),
// chat (stdin), and export (run folder / HF folder -> HF folder). Outputs are checked against the
// library (the library itself is checked against the PyTorch reference in test_hf_oracle.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "infer/engine.h"
#include "infer/hf_checkpoint.h"
#include "io/safetensors.h"
#include "ops/bf16_gemm.h"
#include "ops/int8_gemm.h"
#include "test_util.h"
#include "train/checkpoint.h"

using namespace dsmoe;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Scratch paths of this process: ctest runs each test of this file as its own process, side by
// side, and a shared name let one test's fixture remove the folder another was reading.
std::string local_path(const std::string& name) {
  return test::tmp_path("hf_cli_" + std::to_string(getpid()) + "_" + name);
}

struct Out {
  int rc;
  std::string out, err;
};

Out run(const std::string& args, const std::string& stdin_text = "") {
  static int k = 0;
  const std::string base = local_path("" + std::to_string(k++));
  std::string cmd = std::string(DSMOE_BINARY) + " " + args + " > " + base + ".out 2> " + base + ".err";
  if (!stdin_text.empty()) {
    write_file_atomic(base + ".in", stdin_text);
    cmd += " < " + base + ".in";
  } else {
    cmd += " < /dev/null";
  }
  const int st = std::system(cmd.c_str());
  Out o{WIFEXITED(st) ? WEXITSTATUS(st) : -1, read_text_file(base + ".out"), read_text_file(base + ".err")};
  return o;
}

// A byte-level (vocab 256) model as a dsmoe run folder and as its HF export.
struct Fixture {
  std::string run_dir, hf_dir;
  Config cfg;
  std::unique_ptr<Model> model;
};

Fixture& fixture() {
  static Fixture f = [] {
    Fixture f;
    f.cfg = test::tiny_byte_model_config(96, 32);
    Config& c = f.cfg;
    const ModelConfig& m = c.model;
    f.model = std::make_unique<Model>(m);
    Rng rng(11);
    f.model->init_weights(rng, 0.3);
    f.run_dir = local_path("run");
    f.hf_dir = local_path("hf");
    fs::remove_all(f.run_dir);
    fs::remove_all(f.hf_dir);
    save_checkpoint(f.run_dir, c, *f.model, nullptr, TrainState{});
    return f;
  }();
  return f;
}

TEST(HfCli, ExportThenGenerateScoreAndChat) {
  Fixture& f = fixture();
  Out e = run("export --model " + f.run_dir + " --out " + f.hf_dir + " --shard-size 40KB");
  ASSERT_EQ(e.rc, 0) << e.err;
  EXPECT_NE(e.out.find("shards"), std::string::npos) << e.out;
  ASSERT_TRUE(fs::exists(f.hf_dir + "/model.safetensors.index.json"));
  LoadedModel lm = load_model_dir(f.hf_dir);
  ASSERT_EQ(std::memcmp(lm.model->params().data(), f.model->params().data(), f.model->params().size() * 4), 0);

  InferenceEngine eng(*f.model);
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 7;
  const std::vector<int32_t> p1 = {72, 101, 108, 108, 111}, p2 = {32, 116};
  auto want = generate_batch(eng, {p1, p2}, greedy, 0);

  // generate --prompt-ids --json: two prompts in one batch.
  Out g = run("generate --model " + f.hf_dir + " --prompt-ids 72,101,108,108,111 --prompt-ids 32,116 "
              "--temperature 0 --max-new-tokens 7 --json");
  ASSERT_EQ(g.rc, 0) << g.err;
  std::istringstream lines(g.out);
  std::string line;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(std::getline(lines, line)) << g.out;
    json j = json::parse(line);
    EXPECT_EQ(j["index"], i);
    EXPECT_EQ(j["ids"].get<std::vector<int32_t>>(), want[i].tokens) << line;
    EXPECT_EQ(j["finish_reason"], "length");
  }
  // Text in, streamed text out (byte codec): prompt + 7 bytes + newline, same tokens.
  Out t = run("generate --model " + f.hf_dir + " --prompt Hello --temperature 0 --max-new-tokens 7");
  ASSERT_EQ(t.rc, 0) << t.err;
  std::string expect = "Hello";
  for (int32_t id : want[0].tokens) expect += (char)id;
  EXPECT_EQ(t.out, expect + "\n");
  // The run folder and the HF folder generate the same.
  Out t2 = run("generate --model " + f.run_dir + " --prompt Hello --temperature 0 --max-new-tokens 7");
  EXPECT_EQ(t2.out, t.out);
  // Stop strings: the text stops before the first occurrence.
  if (want[0].tokens.size() >= 3) {
    const std::string stop(1, (char)want[0].tokens[2]);
    Out s = run("generate --model " + f.hf_dir + " --prompt Hello --temperature 0 --max-new-tokens 7 --stop '" +
                (stop == "'" ? std::string("x") : stop) + "' --json");
    ASSERT_EQ(s.rc, 0) << s.err;
    json j = json::parse(s.out);
    if (stop != "'") {
      EXPECT_EQ(j["finish_reason"], "stop");
      EXPECT_EQ(j["text"].get<std::string>().find(stop), std::string::npos) << s.out;
    }
  }

  // score --ids-jsonl: per-token log-probs equal score_tokens; mean NLL and perplexity.
  const std::string ids = local_path("ids.jsonl");
  write_file_atomic(ids, "[72, 101, 108, 108, 111, 32, 119]\n\n[1, 2, 3]\n");
  Out sc = run("score --model " + f.hf_dir + " --ids-jsonl " + ids);
  ASSERT_EQ(sc.rc, 0) << sc.err;
  json js = json::parse(sc.out);
  auto l1 = score_tokens(eng, {72, 101, 108, 108, 111, 32, 119}), l2 = score_tokens(eng, {1, 2, 3});
  ASSERT_EQ(js["sequences"].size(), 2u);
  auto got1 = js["sequences"][0]["logprobs"].get<std::vector<double>>();
  ASSERT_EQ(got1.size(), l1.size());
  for (size_t i = 0; i < l1.size(); ++i) EXPECT_DOUBLE_EQ(got1[i], l1[i]);
  double sum = 0;
  for (double v : l1) sum += v;
  for (double v : l2) sum += v;
  EXPECT_EQ(js["tokens_scored"], 8);
  EXPECT_NEAR(js["mean_nll"].get<double>(), -sum / 8, 1e-12);
  EXPECT_NEAR(js["perplexity"].get<double>(), std::exp(-sum / 8), 1e-9 * std::exp(-sum / 8));
  // score --text-file with the byte codec: the bytes are the ids.
  const std::string txt = local_path("text.txt");
  write_file_atomic(txt, "Hello w");
  Out st = run("score --model " + f.hf_dir + " --text-file " + txt + " --ctx 4");
  ASSERT_EQ(st.rc, 0) << st.err;
  json jt = json::parse(st.out);
  auto lt = score_tokens(eng, {72, 101, 108, 108, 111, 32, 119}, 4);
  auto gt = jt["sequences"][0]["logprobs"].get<std::vector<double>>();
  ASSERT_EQ(gt.size(), lt.size());
  for (size_t i = 0; i < lt.size(); ++i) EXPECT_DOUBLE_EQ(gt[i], lt[i]);
  // Bad input is an error naming the file and line.
  write_file_atomic(ids, "[1, 2]\n[1, 999]\n");
  Out bad = run("score --model " + f.hf_dir + " --ids-jsonl " + ids);
  EXPECT_EQ(bad.rc, 1);
  EXPECT_NE(bad.err.find(ids + ":2: 999 is not a token id in [0, 256)"), std::string::npos) << bad.err;

  // chat: each stdin line is a user turn in the DeepSeek format (the folder has no template); each
  // reply is the greedy continuation of the whole conversation rendered by the format (no BOS/EOS
  // with the byte codec), the previous reply stored without its surrounding whitespace.
  Out c = run("chat --model " + f.hf_dir + " --temperature 0 --max-new-tokens 5", "Hi\nAgain\n");
  ASSERT_EQ(c.rc, 0) << c.err;
  EXPECT_NE(c.err.find("chat format: DeepSeek default format"), std::string::npos) << c.err;
  greedy.max_new_tokens = 5;
  auto greedy_reply = [&](const std::string& prompt) {
    std::vector<int32_t> ids;
    for (unsigned char ch : prompt) ids.push_back(ch);
    auto r = generate_batch(eng, {ids}, greedy, 0);
    return std::string(r[0].tokens.begin(), r[0].tokens.end());
  };
  const std::string e1 = greedy_reply("User: Hi\n\nAssistant:");
  auto trim = [](std::string t) {
    const size_t b = t.find_first_not_of(" \t\r\n"), e = t.find_last_not_of(" \t\r\n");
    return b == std::string::npos ? std::string() : t.substr(b, e - b + 1);
  };
  const std::string e2 = greedy_reply("User: Hi\n\nAssistant: " + trim(e1) + "User: Again\n\nAssistant:");
  EXPECT_EQ(c.out, e1 + "\n" + e2 + "\n");
}

TEST(HfCli, ErrorsAreReported) {
  Fixture& f = fixture();
  Out a = run("generate --model " + test::tmp_path("no_such_model_dir") + " --prompt x");
  EXPECT_EQ(a.rc, 1);
  EXPECT_NE(a.err.find("not a folder"), std::string::npos) << a.err;
  Out b = run("score --model " + f.run_dir);
  EXPECT_EQ(b.rc, 2);  // a usage error
  EXPECT_NE(b.err.find("exactly one of --text-file or --ids-jsonl"), std::string::npos) << b.err;
  Out c = run("export --model " + f.run_dir + " --out " + local_path("x") + " --dtype f8");
  EXPECT_EQ(c.rc, 2);
  EXPECT_NE(c.err.find("--dtype: f8 not in {f32,bf16}"), std::string::npos) << c.err;
}

// dsmoe quantize end to end: the folder it writes scores exactly like quantizing at load time
// (the same quantizer, deterministic), q8 stays near fp32, the source folder is never touched,
// and bad destinations or types are refused.
TEST(HfCli, QuantizeThenScoreEqualsQuantizeOnLoad) {
  Fixture& f = fixture();
  auto digest = [](const std::string& dir) {
    std::string all;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) all += e.path().filename().string() + read_text_file(e.path().string());
    return all;
  };
  const std::string before = digest(f.run_dir);
  const std::string ids = local_path("q_ids.jsonl");
  write_file_atomic(ids, "[72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]\n");
  Out ref = run("score --model " + f.run_dir + " --ids-jsonl " + ids);
  ASSERT_EQ(ref.rc, 0) << ref.err;
  const double nll_f32 = json::parse(ref.out)["mean_nll"].get<double>();
  for (const std::string type : {"q8", "q4"}) {
    const std::string out = local_path("quant_" + type);
    fs::remove_all(out);
    Out q = run("quantize --model " + f.run_dir + " --out " + out + " --type " + type);
    ASSERT_EQ(q.rc, 0) << q.err;
    const json cfg = json::parse(read_text_file(out + "/config.json"));
    ASSERT_TRUE(cfg.contains("quantization_config")) << cfg.dump();
    Out a = run("score --model " + out + " --ids-jsonl " + ids);
    Out b = run("score --model " + f.run_dir + " --ids-jsonl " + ids + " --dtype " + type);
    ASSERT_EQ(a.rc, 0) << a.err;
    ASSERT_EQ(b.rc, 0) << b.err;
    const json ja = json::parse(a.out), jb = json::parse(b.out);
    EXPECT_EQ(ja["sequences"][0]["logprobs"], jb["sequences"][0]["logprobs"]) << type;
    EXPECT_EQ(ja["dtype"], type) << a.out.substr(0, 300);
    if (type == "q8")  // int8 with absmax/127 block scales: the model's NLL moves by far less than 1%
      EXPECT_NEAR(ja["mean_nll"].get<double>(), nll_f32, 0.01 * nll_f32) << a.out.substr(0, 300);
  }
  EXPECT_EQ(digest(f.run_dir), before) << "quantize modified its source folder";
  Out inside = run("quantize --model " + f.run_dir + " --out " + f.run_dir + "/q --type q8");
  EXPECT_EQ(inside.rc, 2);
  EXPECT_NE(inside.err.find("lies inside the input"), std::string::npos) << inside.err;
  Out same = run("quantize --model " + f.run_dir + " --out " + f.run_dir + " --type q8");
  EXPECT_EQ(same.rc, 2);
  EXPECT_NE(same.err.find("would replace the input"), std::string::npos) << same.err;
  Out bad = run("quantize --model " + f.run_dir + " --out " + local_path("q5") + " --type q5");
  EXPECT_EQ(bad.rc, 2);
  EXPECT_NE(bad.err.find("q5"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(local_path("q5")));
  EXPECT_EQ(digest(f.run_dir), before);
}

}  // namespace

namespace {

// --compute: bf16 activations in prefill on bf16 weights move the NLL by far less than the 0.5%
// the mode is allowed to cost (its per-product bound is tested in test_bf16_gemm), and visibly
// differ from f32 (the flag is not ignored); the mode is refused with f32 weights.
TEST(HfCli, ComputeBf16ScoresWithinItsCostAndIsRefusedForOtherStorages) {
  Fixture& f = fixture();
  const std::string ids = local_path("compute_ids.jsonl");
  std::string arr = "[";
  for (int i = 0; i < 40; ++i) arr += std::to_string((i * 37 + 11) % 256) + (i < 39 ? ", " : "]\n");
  write_file_atomic(ids, arr);
  Out a = run("score --model " + f.run_dir + " --ids-jsonl " + ids + " --dtype bf16 --compute f32");
  Out b = run("score --model " + f.run_dir + " --ids-jsonl " + ids + " --dtype bf16 --compute bf16");
  ASSERT_EQ(a.rc, 0) << a.err;
  ASSERT_EQ(b.rc, 0) << b.err;
  const json ja = json::parse(a.out), jb = json::parse(b.out);
  EXPECT_EQ(ja["compute"], "f32");
  const double na = ja["mean_nll"].get<double>(), nb = jb["mean_nll"].get<double>();
  EXPECT_NEAR(nb, na, 0.005 * na) << "bf16 compute moved the NLL by more than 0.5%";
  if (ops::bf16_gemm_available()) {
    EXPECT_EQ(jb["compute"], "bf16");
    EXPECT_NE(ja["sequences"][0]["logprobs"], jb["sequences"][0]["logprobs"]) << "--compute bf16 changed nothing";
    EXPECT_NE(b.err.find("dsmoe: compute: bf16 activations"), std::string::npos) << b.err;
  }
  Out q = run("score --model " + f.run_dir + " --ids-jsonl " + ids + " --dtype f32 --compute bf16");
  EXPECT_EQ(q.rc, 2) << q.err;
  EXPECT_NE(q.err.find("--compute bf16 needs bf16, q8 or q4 weights"), std::string::npos) << q.err;
  Out bad = run("score --model " + f.run_dir + " --ids-jsonl " + ids + " --compute int4");
  EXPECT_EQ(bad.rc, 2) << bad.err;
  EXPECT_NE(bad.err.find("--compute"), std::string::npos) << bad.err;
}

// --kv-cache bf16: the CLI's log-probs are the library's with a bf16 cache (KvType::BF16) bit for
// bit (the flag reaches the engine; the attention over bf16 keys and values is checked against an
// fp64 reference in test_ops_dense), they differ from the f32 cache's (the flag is not ignored), and
// the mean NLL moves by less than the 0.5% a precision mode may cost (the budget of --compute).
TEST(HfCli, Bf16KvCacheScoresAsTheLibraryAndWithinItsCost) {
  Fixture& f = fixture();
  const std::string ids = local_path("kv_ids.jsonl");
  std::vector<int32_t> seq;
  for (int i = 0; i < 60; ++i) seq.push_back((i * 53 + 7) % 256);
  write_file_atomic(ids, json(seq).dump() + "\n");
  Out a = run("score --model " + f.run_dir + " --ids-jsonl " + ids);
  Out b = run("score --model " + f.run_dir + " --ids-jsonl " + ids + " --kv-cache bf16");
  ASSERT_EQ(a.rc, 0) << a.err;
  ASSERT_EQ(b.rc, 0) << b.err;
  const json ja = json::parse(a.out), jb = json::parse(b.out);
  EXPECT_EQ(ja["kv_cache"], "f32");
  EXPECT_EQ(jb["kv_cache"], "bf16");
  // The start-up line gives the cache's size: 2 (K, V) x layers x kv_dim x 2 bytes per token.
  const ModelConfig& m = f.cfg.model;
  const std::string want_line = "dsmoe: KV cache: " + kv_cache_note(m, KvType::BF16, (int64_t)seq.size());
  EXPECT_NE(b.err.find(want_line), std::string::npos) << "want: " << want_line << "\ngot: " << b.err;
  EXPECT_EQ(KvCache::bytes_per_token(m, KvType::BF16) * 2, KvCache::bytes_per_token(m, KvType::F32));
  InferenceEngine eng(*f.model, KvType::BF16);
  const std::vector<double> want = score_tokens(eng, seq);
  const auto got = jb["sequences"][0]["logprobs"].get<std::vector<double>>();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << "log p(token " << i + 1 << ")";
  EXPECT_NE(ja["sequences"][0]["logprobs"], jb["sequences"][0]["logprobs"]) << "--kv-cache bf16 changed nothing";
  const double na = ja["mean_nll"].get<double>(), nb = jb["mean_nll"].get<double>();
  EXPECT_NEAR(nb, na, 0.005 * na) << "the bf16 KV cache moved the NLL by more than 0.5%";
  Out bad = run("score --model " + f.run_dir + " --ids-jsonl " + ids + " --kv-cache f16");
  EXPECT_EQ(bad.rc, 2) << bad.err;
  EXPECT_NE(bad.err.find("--kv-cache"), std::string::npos) << bad.err;
}

}  // namespace

namespace {

// --compute int8 on q8 and q4 weights (converted while loading): the mode's contract is a
// perplexity cost below 0.5%, so the mean NLL must stay within 0.5% of compute f32 on the same
// weights. Per token, to first order: each activation entering a prefill product is replaced by
// its block's nearest step, an error uniform in +-amax/254, RMS amax / (127 sqrt 12) ~ 0.6% of the
// values' spread (amax ~ 2.5 sigma in a block of 32 Gaussian-like values), independently in the ~7
// products on a token's path (q, k, v, o, gate_up, down per layer, lm_head), so logits move by
// ~0.6% * sqrt(7) ~ 1.6% of their spread: on this random, sharp model (the scored tokens' log-probs
// alone spread over 6 nats, -4 to -10; the logits over ~10) ~0.16 nats. 0.25 nats leaves room for the tail and still fails a wrong scale or a
// dropped block, which move log-probs by whole nats. (bf16 compute moves them by up to 0.07 here.)
// The mode is refused (exit 2) for bf16 and f32 weights, and on a CPU without AVX512-VNNI.
TEST(HfCli, ComputeInt8ScoresCloseToF32AndIsRefusedForOtherStorages) {
  Fixture& f = fixture();
  const std::string ids = local_path("compute_int8_ids.jsonl");
  std::string arr = "[";
  for (int i = 0; i < 40; ++i) arr += std::to_string((i * 37 + 11) % 256) + (i < 39 ? ", " : "]\n");
  write_file_atomic(ids, arr);
  for (const char* dtype : {"q8", "q4"}) {
    const std::string base = "score --model " + f.run_dir + " --ids-jsonl " + ids + " --dtype " + dtype;
    Out b = run(base + " --compute int8");
    if (!ops::int8_gemm_available()) {
      EXPECT_EQ(b.rc, 2) << b.err;
      EXPECT_NE(b.err.find("AVX512-VNNI"), std::string::npos) << b.err;
      continue;
    }
    Out a = run(base + " --compute f32");
    ASSERT_EQ(a.rc, 0) << a.err;
    ASSERT_EQ(b.rc, 0) << b.err;
    const json ja = json::parse(a.out), jb = json::parse(b.out);
    EXPECT_EQ(jb["compute"], "int8");
    EXPECT_NE(b.err.find("dsmoe: compute: int8 activations"), std::string::npos) << b.err;
    EXPECT_NE(b.err.find("vpdpbusd"), std::string::npos) << b.err;  // names the kernel
    const double na = ja["mean_nll"].get<double>(), nb = jb["mean_nll"].get<double>();
    EXPECT_NEAR(nb, na, 0.005 * na) << dtype << ": int8 compute moved the NLL by more than 0.5%";
    const auto& la = ja["sequences"][0]["logprobs"];
    const auto& lb = jb["sequences"][0]["logprobs"];
    ASSERT_EQ(la.size(), lb.size());
    double worst = 0;
    for (size_t i = 0; i < la.size(); ++i) worst = std::max(worst, std::fabs(la[i].get<double>() - lb[i].get<double>()));
    EXPECT_LE(worst, 0.25) << dtype << ": a log-prob moved by " << worst << " nats";
    EXPECT_GT(worst, 0.0) << dtype << ": --compute int8 changed nothing";
  }
  for (const char* dtype : {"bf16", "f32"}) {
    Out r = run("score --model " + f.run_dir + " --ids-jsonl " + ids + " --dtype " + dtype + " --compute int8");
    EXPECT_EQ(r.rc, 2) << dtype << ": " << r.err;
    EXPECT_NE(r.err.find("--compute int8 needs q8 or q4 weights"), std::string::npos) << r.err;
  }
}

}  // namespace
