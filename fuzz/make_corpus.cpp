// Writes the seed corpora of the fuzz targets into OUT/<target>/ (fuzz/make_corpus.sh: OUT =
// fuzz/corpus) with dsmoe's own writers, so every seed is a file dsmoe itself produces or accepts
// and nothing third-party is committed. Seeds are kept tiny: libFuzzer mutates from them.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/rng.h"
#include "fuzz_support.h"
#include "infer/gguf_checkpoint.h"
#include "small_tokenizer.h"
#include "infer/hf_checkpoint.h"
#include "io/safetensors.h"
#include "io/token_ids.h"
#include "model/config.h"
#include "model/model.h"
#include "tokenizer/bpe_trainer.h"
#include "train/data.h"

namespace fs = std::filesystem;
using namespace dsmoe;

namespace {

fs::path g_out;

void seed(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::create_directories(g_out / target);
  std::ofstream f(g_out / target / name, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string join_parts(const std::vector<std::string>& parts) {
  std::string s;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) s += fuzz::kPartSeparator;
    s += parts[i];
  }
  return s;
}

// The smallest model with every kind of tensor: a dense layer, then an MoE layer with a shared
// expert; hash routing in a variant (no router weights).
Config tiny_config(bool hash) {
  Config c;
  ModelConfig& m = c.model;
  m.vocab_size = 16;
  m.hidden_size = 8;
  m.intermediate_size = 16;
  m.moe_intermediate_size = 4;
  m.num_hidden_layers = 2;
  m.num_attention_heads = 2;
  m.num_key_value_heads = 2;
  m.n_routed_experts = 2;
  m.n_shared_experts = 1;
  m.num_experts_per_tok = 1;
  m.first_k_dense_replace = 1;
  m.max_position_embeddings = 32;
  m.bos_token_id = 0;
  m.eos_token_id = 1;
  if (hash) m.router_type = RouterType::Hash;
  c.train.seq_len = 8;
  c.train.batch_size = 2;
  c.train.steps = 4;
  c.train.warmup_steps = 1;
  return c;
}

void safetensors_seeds() {
  const fs::path tmp = g_out / ".tmp.safetensors";
  SafeTensorsWriter w;
  const float f[6] = {0.f, 1.f, -2.5f, 3.f, 1e-3f, 7.f};
  const uint16_t bf[4] = {0x3f80, 0xc000, 0x0000, 0x4040};
  const int32_t ids[3] = {1, 2, 3};
  const uint8_t u8[2] = {7, 9};
  w.add_f32("a", {2, 3}, f);
  w.add("b", DType::BF16, {4}, bf);
  w.add("c", DType::F16, {2}, bf);
  w.add("ids", DType::I32, {3}, ids);
  w.add("bytes", DType::U8, {2}, u8);
  w.add("empty", DType::F32, {0}, f);
  w.set_metadata("note", "seed");
  w.write(tmp.string());
  seed("fuzz_safetensors", "dsmoe.safetensors", slurp(tmp));
  SafeTensorsWriter one;
  one.add_f32("x", {1}, f + 3);
  one.write(tmp.string());
  seed("fuzz_safetensors", "one.safetensors", slurp(tmp));
  fs::remove(tmp);
}

void config_seeds() {
  seed("fuzz_config", "tiny.json", to_json(tiny_config(false)).dump(1));
  seed("fuzz_config", "hash.json", to_json(tiny_config(true)).dump(1));
  seed("fuzz_config", "defaults.json", to_json(Config{}).dump());
  seed("fuzz_config", "empty.json", "{}");
}

// A HF folder of the tiny model as export_hf writes it, then its files joined into one input.
void hf_folder_seeds() {
  const fs::path dir = g_out / ".tmp.hf";
  fs::remove_all(dir);
  const Config c = tiny_config(false);
  Model model(c.model);
  Rng rng(1);
  model.init_weights(rng, 0.02);
  ExportOptions o;
  o.dtype = DType::BF16;
  export_hf(dir.string(), c, model, o);
  const std::string config = slurp(dir / "config.json"), weights = slurp(dir / "model.safetensors");
  seed("fuzz_hf_folder", "single", join_parts({config, "", weights}));
  nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", nlohmann::json::object()}};
  const SafeTensorsFile written((dir / "model.safetensors").string());
  for (const auto& [name, t] : written.tensors())
    index["weight_map"][name] = "model-00001-of-00001.safetensors";
  seed("fuzz_hf_folder", "sharded", join_parts({config, index.dump(), weights}));
  seed("fuzz_hf_folder", "config-only", config);

  nlohmann::json q = nlohmann::json::parse(config);
  q["quantization_config"] = {{"quant_method", "dsmoe"}, {"format", "q8_0"}, {"block_size", 32},
                              {"scale_dtype", "bfloat16"}, {"scale_suffix", "_scale"}};
  seed("fuzz_quant_config", "q8.json", q.dump());
  q["quantization_config"]["format"] = "q4_0";
  seed("fuzz_quant_config", "q4.json", q.dump());
  seed("fuzz_quant_config", "plain.json", config);
  fs::remove_all(dir);
}

// GGUF files of the tiny model (vocab 256: the byte tokens) as export_gguf writes them, f32 and bf16.
void gguf_seeds() {
  Config c = tiny_config(false);
  c.model.vocab_size = 256;
  Model model(c.model);
  Rng rng(1);
  model.init_weights(rng, 0.02);
  const fs::path tmp = g_out / ".tmp.gguf";
  for (GgmlType t : {GgmlType::F32, GgmlType::BF16}) {
    GgufExportOptions o;
    o.type = t;
    export_gguf(tmp.string(), c, model, GgufTokenizerSource{}, o);
    seed("fuzz_gguf", std::string("tiny-") + ggml_type_name((uint32_t)t) + ".gguf", slurp(tmp));
  }
  fs::remove(tmp);
}

const std::vector<std::string>& texts() {
  static const std::vector<std::string> t = {
      "the cat sat on the mat; the cat ran.", "Numbers 1 22 333 4444 and    spaces\n\nlines",
      "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 <|begin_of_text|>x<|end_of_text|>"};
  return t;
}

void tokenizer_seeds() {
  tok::TrainOptions o;
  o.threads = 1;
  seed("fuzz_tokenizer_json", "bpe.json", tok::train_bpe_json(texts(), 280, o));
  o.bos_template = false;
  o.special_tokens = {"<s>"};
  seed("fuzz_tokenizer_json", "bpe-bytelevel.json", tok::train_bpe_json(texts(), 270, o));
  for (size_t i = 0; i < texts().size(); ++i) seed("fuzz_tokenizer_encode", "text" + std::to_string(i), texts()[i]);
  const int32_t ids[] = {0, 1, 2, 65, 200, 255, 256, 257, 300, -1, 1 << 30};
  seed("fuzz_tokenizer_decode", "ids", std::string(reinterpret_cast<const char*>(ids), sizeof ids));
  const int32_t bytes_only[] = {195, 169, 228, 184};  // byte tokens of a cut multi-byte character
  seed("fuzz_tokenizer_decode", "cut-utf8", std::string(reinterpret_cast<const char*>(bytes_only), sizeof bytes_only));
}

void split_seeds() {
  const fs::path dir = g_out / ".tmp.split";
  fs::create_directories(dir);
  TokenSplit s;
  s.tokens = {0, 5, 6, 7, 1, 0, 9, 9, 9, 1, 0, 3, 1};
  s.vocab_size = 10;
  s.bos_id = 0;
  s.eos_id = 1;
  save_split(dir.string(), "train", s);
  seed("fuzz_data_split", "bpe.safetensors", slurp(dir / "train.safetensors"));
  TokenSplit b;
  for (char ch : std::string("bytes\nlevel\n")) b.tokens.push_back((unsigned char)ch);
  b.vocab_size = 256;
  save_split(dir.string(), "train", b);
  seed("fuzz_data_split", "bytes.safetensors", slurp(dir / "train.safetensors"));
  s.domains = {"prose", "code"};  // domain labels (prepare --corpus mixed / --manifest)
  s.doc_ends = {5, 10, 13};
  s.doc_domains = {0, 1, 0};
  save_split(dir.string(), "train", s);
  seed("fuzz_data_split", "domains.safetensors", slurp(dir / "train.safetensors"));
  fs::remove_all(dir);
}

// Suites over the fuzz_suite target's fixed base.json and the input's own m.json.
void suite_seeds() {
  const nlohmann::json quick = {{"seeds", {1}}, {"model", {{"hidden_size", 8}}}, {"training", {{"steps", 2}}}};
  nlohmann::json s = {
      {"name", "seed suite"},
      {"data", "data/x"},
      {"seeds", {1, 2}},
      {"models",
       {{{"id", "a"}, {"label", "A"}, {"config", "base.json"}, {"groups", {"table1"}}, {"seeds", "all"}},
        {{"id", "b"}, {"label", "B"}, {"config", "m.json"}, {"groups", {"ablation"}}, {"seeds", "first"}}}},
      {"analyses",
       {{"disable_top", {{"models", {"a"}}, {"ratios", {0, 0.25}}}},
        {"top_k", {{"models", {"a", "b"}}, {"k", {1, 2}}, {"reference", "a"}}},
        {"drop_shared", {{"models", {"a"}}}},
        {"routing", {{"models", {"a", "b"}}}}}},
      {"quick", quick}};
  const std::string m = R"({"extends": "base.json", "n_routed_experts": 8, "num_experts_per_tok": 2})";
  seed("fuzz_suite", "two-models", join_parts({s.dump(1), m}));
  s["models"][1]["seeds"] = {2};
  seed("fuzz_suite", "seed-list", join_parts({s.dump(), m}));
}

// Templates written for these seeds: the constructs chat templates use.
void chat_template_seeds() {
  seed("fuzz_chat_template", "loop",
       "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
       "{% elif m.role == 'system' %}{{ m.content | trim }}\n\n{% else %}Assistant: {{ m['content'] + eos_token }}"
       "{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}");
  seed("fuzz_chat_template", "features",
       "{%- set ns = namespace(n=0) -%}{% macro show(x, p='>') %}{{ p }}{{ x | tojson }}{% endmacro %}"
       "{% for m in messages if m.role != 'system' %}{% set ns.n = ns.n + 1 %}{{ loop.index }}/{{ loop.length }}"
       "{{ show(m) }}{% if loop.last %}{% break %}{% endif %}{% endfor %}{{ ns.n * 2 ** 3 // 5 % 7 }}"
       "{{ messages | map(attribute='role') | join(',') | upper }}{{ range(n) | list }}{{ 'a,b'.split(',') }}"
       "{{ x | round(1) }}{{ none is none }}{{ messages[1:3] | length }}{# comment #}"
       "{% if tools %}{{ raise_exception('no tools') }}{% endif %}");
}

// Ids files as `tokenize` writes them (append_ids_jsonl of the small tokenizer's encodings: some
// ids past 256, the small vocabulary fuzz_ids_jsonl also checks against), and an id list.
void ids_seeds() {
  std::string jsonl;
  for (const auto& t : texts()) append_ids_jsonl(jsonl, fuzz::small_tokenizer().encode(t));
  append_ids_jsonl(jsonl, {});
  seed("fuzz_ids_jsonl", "tokenized.jsonl", jsonl + "\n");
  seed("fuzz_ids_jsonl", "id-list", "[1, 2,3 4]");
}

// Request bodies with every field the server reads, in both of their spellings where there are two.
void api_request_seeds() {
  using json = nlohmann::json;
  seed("fuzz_api_request", "completion.json",
       json{{"model", "m"}, {"prompt", "Hello"}, {"max_tokens", 8}, {"temperature", 0.7}, {"top_p", 0.9}, {"top_k", 40},
            {"seed", 1}, {"stop", {"\n", "."}}, {"stream", true}, {"stream_options", {{"include_usage", true}}}, {"n", 1},
            {"user", nullptr}}
           .dump());
  seed("fuzz_api_request", "chat.json",
       json{{"messages",
             {{{"role", "system"}, {"content", "Be brief."}},
              {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Hi"}}}}},
              {{"role", "assistant"}, {"content", nullptr}},
              {{"role", "user"}, {"content", "Again"}}}},
            {"max_completion_tokens", 4}, {"stop", "x"}, {"seed", -1}}
           .dump());
  seed("fuzz_api_request", "prompt-list.json", json{{"prompt", {"one"}}, {"max_tokens", nullptr}}.dump());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_corpus OUT_DIR\n";
    return 2;
  }
  g_out = argv[1];
  fs::create_directories(g_out);
  try {
    safetensors_seeds();
    config_seeds();
    hf_folder_seeds();
    gguf_seeds();
    tokenizer_seeds();
    split_seeds();
    suite_seeds();
    chat_template_seeds();
    ids_seeds();
    api_request_seeds();
  } catch (const std::exception& e) {
    std::cerr << "make_corpus: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
