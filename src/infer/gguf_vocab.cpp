#include "infer/gguf_vocab.h"

#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "model/config.h"
#include "tokenizer/unicode.h"

namespace dsmoe {

using json = nlohmann::json;

namespace {

// The pre-tokenizers llama.cpp implements that a byte-level BPE tokenizer.json can express as one
// Split regex: tokenizer.ggml.pre, the regex as Hugging Face writes it, and whether llama.cpp
// ignores merges for whole-token words with that pre type (src/llama-vocab.cpp).
struct PreType {
  const char* name;
  const char* regex;
  bool ignore_merges;
  bool add_bos;  // llama.cpp's default when the file has no tokenizer.ggml.add_bos_token
};
const PreType kPreTypes[] = {
    {"llama-bpe",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
     true, true},
    {"gpt-2", R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))", false, false},
};
// Other names llama.cpp reads as the same pre types.
const std::map<std::string, std::string> kPreAliases = {{"llama3", "llama-bpe"}, {"llama-v3", "llama-bpe"}};

enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

const PreType* pre_by_regex(const std::string& re) {
  for (const PreType& p : kPreTypes)
    if (re == p.regex) return &p;
  return nullptr;
}

std::string supported_regexes() {
  std::string s;
  for (const PreType& p : kPreTypes) s += fmt::format("\n  {} (tokenizer.ggml.pre \"{}\")", p.regex, p.name);
  return s;
}

// The regex of a tokenizer.json's pre_tokenizer, if it has the shapes described in the header.
std::string split_regex(const json& pre, const std::string& path) {
  auto is = [](const json& j, const char* type) { return j.is_object() && j.value("type", "") == type; };
  auto byte_level_plain = [&](const json& b, bool regex) {
    return is(b, "ByteLevel") && !b.value("add_prefix_space", false) && b.value("use_regex", true) == regex;
  };
  if (byte_level_plain(pre, true)) return kPreTypes[1].regex;  // ByteLevel's own regex is GPT-2's
  if (is(pre, "Sequence") && pre.contains("pretokenizers") && pre["pretokenizers"].size() == 2) {
    const json& sp = pre["pretokenizers"][0];
    if (is(sp, "Split") && sp.value("behavior", "") == "Isolated" && !sp.value("invert", false) &&
        sp.contains("pattern") && sp["pattern"].is_object() && sp["pattern"].contains("Regex") &&
        sp["pattern"]["Regex"].is_string() && byte_level_plain(pre["pretokenizers"][1], false))
      return sp["pattern"]["Regex"].get<std::string>();
  }
  fail("{}: pre_tokenizer {} has no llama.cpp equivalent for GGUF export (expected Sequence[Split(Regex, Isolated), "
       "ByteLevel(use_regex false)] or ByteLevel(use_regex true))",
       path, pre.dump().substr(0, 300));
}

}  // namespace

void write_gguf_vocab(GgufWriter& w, const GgufTokenizerSource& src, const ModelConfig& m) {
  const int64_t V = m.vocab_size;
  std::vector<std::string> tokens((size_t)V);
  std::vector<int32_t> types((size_t)V, kUnused);
  std::vector<std::string> merges;
  std::string pre = "gpt-2";
  bool add_bos = false, add_eos = false;
  if (src.json.empty()) {
    if (V != 256)
      fail("export --format gguf: a byte-level model needs vocab_size 256 to be written as GGUF byte tokens, got {}; "
           "give its tokenizer (--tokenizer FILE)", V);
    for (int b = 0; b < 256; ++b) {
      tokens[b] = tok::byte_char_utf8((unsigned char)b);
      types[b] = kNormal;
    }
  } else {
    const std::string& path = src.origin;
    json j;
    try {
      j = json::parse(src.json);
    } catch (const json::exception& e) {
      fail("{}: not valid JSON: {}", path, e.what());
    }
    try {
      if (j.contains("normalizer") && !j["normalizer"].is_null())
        fail("{}: a normalizer ({}) has no llama.cpp gpt2 equivalent for GGUF export", path, j["normalizer"].dump().substr(0, 200));
      const json& model = j.at("model");
      if (model.value("type", "") != "BPE") fail("{}: model type {} is not BPE: not exportable to GGUF", path, model.value("type", "?"));
      for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
        if (model.contains(k) && !model[k].is_null() && model[k] != "")
          fail("{}: model.{} {} has no llama.cpp gpt2 equivalent", path, k, model[k].dump());
      if (model.value("byte_fallback", false)) fail("{}: model.byte_fallback has no llama.cpp gpt2 equivalent", path);
      const std::string re = split_regex(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), path);
      const PreType* p = pre_by_regex(re);
      if (!p)
        fail("{}: the pre-tokenizer regex {} matches no llama.cpp pre-tokenizer type; supported:{}", path, re,
             supported_regexes());
      pre = p->name;
      auto put = [&](int64_t id, const std::string& s, int32_t type, const char* what) {
        if (id < 0 || id >= V) fail("{}: {} '{}' has id {}, outside the model's vocab_size {}", path, what, s, id, V);
        tokens[id] = s;
        types[id] = type;
      };
      for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it)
        put(it->get<int64_t>(), it.key(), kNormal, "token");
      if (j.contains("added_tokens"))
        for (const json& a : j["added_tokens"])
          put(a.at("id").get<int64_t>(), a.at("content").get<std::string>(),
              a.value("special", false) ? kControl : kUserDefined, "added token");
      for (const json& mg : model.at("merges")) {
        if (mg.is_string()) merges.push_back(mg.get<std::string>());
        else merges.push_back(mg.at(0).get<std::string>() + " " + mg.at(1).get<std::string>());
      }
    } catch (const json::exception& e) {  // a field of another type than a tokenizer.json has
      fail("{}: unexpected tokenizer.json structure for GGUF export: {}", path, e.what());
    }
    add_bos = src.add_bos;
    add_eos = src.add_eos;
  }
  for (int64_t i = 0; i < V; ++i)
    if (types[i] == kUnused) tokens[i] = "[PAD" + std::to_string(i) + "]";
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", pre);
  w.add_strings("tokenizer.ggml.tokens", tokens);
  w.add_i32s("tokenizer.ggml.token_type", types);
  w.add_strings("tokenizer.ggml.merges", merges);
  if (src.bos >= 0) w.add_u32("tokenizer.ggml.bos_token_id", (uint32_t)src.bos);
  if (src.eos >= 0) w.add_u32("tokenizer.ggml.eos_token_id", (uint32_t)src.eos);
  w.add_bool("tokenizer.ggml.add_bos_token", add_bos);
  w.add_bool("tokenizer.ggml.add_eos_token", add_eos);
  if (!src.chat_template.empty()) w.add_string("tokenizer.chat_template", src.chat_template);
}

GgufTokenizer gguf_tokenizer_json(const GgufFile& f) {
  const std::string& path = f.path();
  if (!f.find("tokenizer.ggml.model")) fail("{}: no tokenizer (tokenizer.ggml.model is missing); give --tokenizer FILE", path);
  const std::string& model = f.get_string("tokenizer.ggml.model");
  if (model != "gpt2")
    fail("{}: tokenizer.ggml.model \"{}\" is not supported (dsmoe reads byte-level BPE, \"gpt2\"); give --tokenizer FILE",
         path, model);
  std::string pre = f.find("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "";
  if (auto a = kPreAliases.find(pre); a != kPreAliases.end()) pre = a->second;
  const PreType* p = nullptr;
  for (const PreType& x : kPreTypes)
    if (pre == x.name) p = &x;
  if (!p) {
    std::string names;
    for (const PreType& x : kPreTypes) names += std::string(names.empty() ? "" : ", ") + "\"" + x.name + "\"";
    fail("{}: tokenizer.ggml.pre \"{}\" is not supported (supported: {}); give --tokenizer FILE", path, pre, names);
  }
  const GgufValue& toks = f.get_array("tokenizer.ggml.tokens", GgufType::STRING);
  const GgufValue& types = f.get_array("tokenizer.ggml.token_type", GgufType::I32);
  if (types.count != toks.count)
    fail("{}: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens {}", path, types.count, toks.count);
  GgufTokenizer out;
  auto id = [&](const char* k) {
    if (!f.find(k)) return -1;
    const uint64_t v = f.get_uint(k, toks.count ? toks.count - 1 : 0);
    return (int32_t)v;
  };
  out.bos = id("tokenizer.ggml.bos_token_id");
  out.eos = id("tokenizer.ggml.eos_token_id");
  json vocab = json::object(), added = json::array();
  for (size_t i = 0; i < toks.count; ++i) {
    const int64_t t = types.ints[i];
    if (t < kNormal || t > kByte) fail("{}: tokenizer.ggml.token_type[{}] = {} is not a token type (1..6)", path, i, t);
    const std::string& s = toks.strs[i];
    if (const size_t bad = tok::utf8_invalid_at(s); bad != std::string::npos)
      fail("{}: tokenizer.ggml.tokens[{}] is not valid UTF-8 (byte {}): not a gpt2 byte-level token", path, i, bad);
    if (t == kUnused) continue;
    if (vocab.contains(s)) fail("{}: token {} '{}' appears twice in tokenizer.ggml.tokens", path, i, s);
    vocab[s] = i;
    if (t == kControl || t == kUserDefined)
      added.push_back({{"id", i}, {"content", s}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                       {"normalized", false}, {"special", t == kControl}});
  }
  json merges = json::array();
  if (f.find("tokenizer.ggml.merges"))
    for (const std::string& m : f.get_array("tokenizer.ggml.merges", GgufType::STRING).strs) {
      if (const size_t bad = tok::utf8_invalid_at(m); bad != std::string::npos)
        fail("{}: merge \"{}\" is not valid UTF-8 (byte {})", path, m.substr(0, bad), bad);
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos || sp + 1 >= m.size())
        fail("{}: merge \"{}\" is not two tokens separated by a space", path, m);
      merges.push_back(json::array({m.substr(0, sp), m.substr(sp + 1)}));
    }
  const bool add_bos = f.find("tokenizer.ggml.add_bos_token") ? f.get_bool("tokenizer.ggml.add_bos_token") : p->add_bos;
  const bool add_eos = f.find("tokenizer.ggml.add_eos_token") && f.get_bool("tokenizer.ggml.add_eos_token");
  json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       json::array({{{"type", "Split"}, {"pattern", {{"Regex", p->regex}}}, {"behavior", "Isolated"}, {"invert", false}},
                    {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}};
  json single = json::array(), special = json::object();
  auto special_tok = [&](int32_t tid) {
    const std::string& s = toks.strs[(size_t)tid];
    single.push_back({{"SpecialToken", {{"id", s}, {"type_id", 0}}}});
    special[s] = {{"id", s}, {"ids", json::array({tid})}, {"tokens", json::array({s})}};
  };
  if (add_bos && out.bos >= 0) special_tok(out.bos);
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (add_eos && out.eos >= 0) special_tok(out.eos);
  j["post_processor"] = {{"type", "TemplateProcessing"}, {"single", single}, {"pair", single}, {"special_tokens", special}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                {"ignore_merges", p->ignore_merges}, {"vocab", vocab}, {"merges", merges}};
  out.json = j.dump();
  return out;
}

}  // namespace dsmoe
