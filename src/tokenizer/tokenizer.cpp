// tokenizer.json loading, normalizers, post-processors, decoders, and the encode/decode pipeline.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_set>

#include "core/error.h"
#include "model/config.h"  // limits::kMaxVocabSize
#include "tokenizer/pipeline.h"
#include "tokenizer/unicode.h"

namespace dsmoe::tok {

using json = nlohmann::json;
using namespace detail;

namespace {

// ---- normalizers ------------------------------------------------------------------------------

class NormFormN final : public Normalizer {
 public:
  explicit NormFormN(NormForm f) : f_(f) {}
  bool apply(std::string_view in, std::string& out) const override { return normalize_form(f_, in, out); }

 private:
  NormForm f_;
};

class LowercaseN final : public Normalizer {
 public:
  bool apply(std::string_view in, std::string& out) const override { return lowercase(in, out); }
};

class StripAccentsN final : public Normalizer {
 public:
  bool apply(std::string_view in, std::string& out) const override { return strip_marks(in, out); }
};

class StripN final : public Normalizer {
 public:
  StripN(bool left, bool right) : left_(left), right_(right) {}
  bool apply(std::string_view in, std::string& out) const override {
    size_t a = 0, b = in.size();
    if (left_)
      while (a < b) {
        size_t k = a;
        if (!is_whitespace(utf8_next(in, k))) break;
        a = k;
      }
    if (right_)
      while (b > a) {
        size_t k = b;
        if (!is_whitespace(utf8_prev(in, k))) break;
        b = k;
      }
    if (a == 0 && b == in.size()) return false;
    out.assign(in.substr(a, b - a));
    return true;
  }

 private:
  bool left_, right_;
};

class PrependN final : public Normalizer {
 public:
  explicit PrependN(std::string p) : p_(std::move(p)) {}
  bool apply(std::string_view in, std::string& out) const override {
    if (in.empty() || p_.empty()) return false;
    out.assign(p_);
    out += in;
    return true;
  }

 private:
  std::string p_;
};

class ReplaceN final : public Normalizer {
 public:
  ReplaceN(std::shared_ptr<const Regex> re, std::string content) : re_(std::move(re)), content_(std::move(content)) {}
  bool apply(std::string_view in, std::string& out) const override {
    thread_local std::vector<std::pair<size_t, size_t>> m;
    re_->find_all(in, m);
    if (m.empty()) return false;
    out.clear();
    size_t prev = 0;
    for (auto [a, b] : m) {
      out.append(in.substr(prev, a - prev));
      out += content_;
      prev = b;
    }
    out.append(in.substr(prev));
    return true;
  }

 private:
  std::shared_ptr<const Regex> re_;
  std::string content_;
};

class SequenceN final : public Normalizer {
 public:
  explicit SequenceN(std::vector<std::unique_ptr<Normalizer>> items) : items_(std::move(items)) {}
  bool apply(std::string_view in, std::string& out) const override {
    bool changed = false;
    std::string cur, next;
    for (const auto& n : items_) {
      if (n->apply(changed ? std::string_view(cur) : in, next)) {
        cur.swap(next);
        changed = true;
      }
    }
    if (changed) out.swap(cur);
    return changed;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> items_;
};

// ---- post-processors ----------------------------------------------------------------------------

class TemplateP final : public PostProcessor {
 public:
  // items: a list of ids to insert, or an empty optional for the sequence itself.
  explicit TemplateP(std::vector<std::optional<std::vector<int32_t>>> items) : items_(std::move(items)) {}
  void apply(std::vector<int32_t>& ids) const override {
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const auto& it : items_) {
      if (it) out.insert(out.end(), it->begin(), it->end());
      else out.insert(out.end(), ids.begin(), ids.end());
    }
    ids.swap(out);
  }

 private:
  std::vector<std::optional<std::vector<int32_t>>> items_;
};

class NoopP final : public PostProcessor {
 public:
  void apply(std::vector<int32_t>&) const override {}
};

class SequenceP final : public PostProcessor {
 public:
  explicit SequenceP(std::vector<std::unique_ptr<PostProcessor>> items) : items_(std::move(items)) {}
  void apply(std::vector<int32_t>& ids) const override {
    for (const auto& p : items_) p->apply(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> items_;
};

// ---- decoders -----------------------------------------------------------------------------------

class ByteLevelD final : public Decoder {
 public:
  void apply(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      size_t mark = bytes.size();
      size_t i = 0;
      bool ok = true;
      while (i < t.size()) {
        int b = char_to_byte(utf8_next(t, i));
        if (b < 0) {
          ok = false;
          break;
        }
        bytes += (char)b;
      }
      if (!ok) {  // a character outside the byte alphabet: the token's own UTF-8 goes through
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class ReplaceD final : public Decoder {
 public:
  ReplaceD(std::shared_ptr<const Regex> re, std::string content) : n_(std::move(re), std::move(content)) {}
  void apply(std::vector<std::string>& tokens) const override {
    std::string out;
    for (auto& t : tokens)
      if (n_.apply(t, out)) t.swap(out);
  }

 private:
  ReplaceN n_;
};

class StripD final : public Decoder {
 public:
  StripD(std::string content, size_t start, size_t stop) : c_(std::move(content)), start_(start), stop_(stop) {}
  void apply(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      // HF counts characters: up to start_ leading and stop_ trailing copies of the content char.
      size_t a = 0, b = t.size();
      for (size_t k = 0; k < start_ && t.compare(a, c_.size(), c_) == 0 && a < b; ++k) a += c_.size();
      for (size_t k = 0; k < stop_ && b >= a + c_.size() && t.compare(b - c_.size(), c_.size(), c_) == 0; ++k)
        b -= c_.size();
      t = t.substr(a, b - a);
    }
  }

 private:
  std::string c_;
  size_t start_, stop_;
};

class FuseD final : public Decoder {
 public:
  void apply(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, all);
  }
};

class ByteFallbackD final : public Decoder {
 public:
  void apply(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    size_t npending = 0;
    auto flush = [&] {
      if (!npending) return;
      if (utf8_invalid_at(pending) == std::string_view::npos) out.push_back(pending);
      else
        for (size_t k = 0; k < npending; ++k) out.push_back("\xEF\xBF\xBD");
      pending.clear();
      npending = 0;
    };
    for (auto& t : tokens) {
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit((unsigned char)t[3]) &&
          std::isxdigit((unsigned char)t[4])) {
        pending += (char)std::stoi(t.substr(3, 2), nullptr, 16);
        ++npending;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
};

class SequenceD final : public Decoder {
 public:
  explicit SequenceD(std::vector<std::unique_ptr<Decoder>> items) : items_(std::move(items)) {}
  void apply(std::vector<std::string>& tokens) const override {
    for (const auto& d : items_) d->apply(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> items_;
};

}  // namespace

// ---- the tokenizer ------------------------------------------------------------------------------

struct TokenizerImpl {
  std::string origin;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  BpeModel model;
  AddedVocab added;
  Vocab added_by_content;                                                // content -> id
  std::unordered_set<std::string, SvHash, std::equal_to<>> special_set;  // contents of special tokens
  std::unique_ptr<PostProcessor> post;
  std::unique_ptr<Decoder> decoder;
  std::optional<int32_t> bos, eos;
  int32_t vocab_size = 0;
};

namespace {

// Reads tokenizer.json with paths in every error message.
class Loader {
 public:
  explicit Loader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void bad(const std::string& path, const std::string& what) const {
    fail("{}: {}: {}", file_, path, what);
  }
  static std::string type_name(const json& j) { return j.type_name(); }

  const json* opt(const json& obj, const char* key) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return nullptr;
    return &*it;
  }
  const json& need(const json& obj, const std::string& path, const char* key) const {
    auto it = obj.find(key);
    if (it == obj.end()) bad(path + "." + key, "missing (required)");
    return *it;
  }
  bool get_bool(const json& obj, const std::string& path, const char* key, bool def) const {
    const json* j = opt(obj, key);
    if (!j) return def;
    if (!j->is_boolean()) bad(path + "." + key, fmt::format("expected true or false, got {}", type_name(*j)));
    return j->get<bool>();
  }
  std::string get_str(const json& obj, const std::string& path, const char* key) const {
    const json& j = need(obj, path, key);
    if (!j.is_string()) bad(path + "." + key, fmt::format("expected a string, got {}", type_name(j)));
    return j.get<std::string>();
  }
  std::optional<std::string> get_opt_str(const json& obj, const std::string& path, const char* key) const {
    const json* j = opt(obj, key);
    if (!j) return std::nullopt;
    if (!j->is_string()) bad(path + "." + key, fmt::format("expected a string or null, got {}", type_name(*j)));
    return j->get<std::string>();
  }
  int64_t get_int(const json& obj, const std::string& path, const char* key) const {
    const json& j = need(obj, path, key);
    if (!j.is_number_integer()) bad(path + "." + key, fmt::format("expected an integer, got {}", type_name(j)));
    return j.get<int64_t>();
  }
  // A token id of a post-processor: emitted as is into every encoding, so it must be an integer in
  // the range of vocabulary ids (not a float that would be cast to INT32_MIN, not negative).
  int32_t token_id(const json& v, const std::string& path) const {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= limits::kMaxVocabSize ||
        (v.is_number_unsigned() && v.get<uint64_t>() >= (uint64_t)limits::kMaxVocabSize))
      bad(path, fmt::format("expected a token id, an integer in [0, {}), got {}", limits::kMaxVocabSize, v.dump()));
    return (int32_t)v.get<int64_t>();
  }
  std::string get_type(const json& obj, const std::string& path) const {
    if (!obj.is_object()) bad(path, fmt::format("expected an object, got {}", type_name(obj)));
    return get_str(obj, path, "type");
  }
  const json& get_array(const json& obj, const std::string& path, const char* key) const {
    const json& j = need(obj, path, key);
    if (!j.is_array()) bad(path + "." + key, fmt::format("expected an array, got {}", type_name(j)));
    return j;
  }

  // A pattern object {"String": s} or {"Regex": r}.
  std::shared_ptr<const Regex> pattern(const json& obj, const std::string& path) const {
    const json& p = need(obj, path, "pattern");
    std::string pp = path + ".pattern";
    if (p.is_object() && p.contains("Regex") && p["Regex"].is_string())
      return std::make_shared<Regex>(p["Regex"].get<std::string>(), file_ + ": " + pp + ".Regex");
    if (p.is_object() && p.contains("String") && p["String"].is_string())
      return std::make_shared<Regex>(escape(p["String"].get<std::string>()), file_ + ": " + pp + ".String");
    bad(pp, "expected {\"String\": ...} or {\"Regex\": ...}");
  }
  static std::string escape(const std::string& s) {
    std::string r;
    for (char c : s) {
      if ((unsigned char)c < 0x80 && !std::isalnum((unsigned char)c)) r += '\\';
      r += c;
    }
    return r;
  }

  std::unique_ptr<Normalizer> normalizer(const json& j, const std::string& path) const {
    std::string t = get_type(j, path);
    if (t == "Sequence") {
      std::vector<std::unique_ptr<Normalizer>> items;
      const json& arr = get_array(j, path, "normalizers");
      for (size_t i = 0; i < arr.size(); ++i)
        items.push_back(normalizer(arr[i], fmt::format("{}.normalizers[{}]", path, i)));
      return std::make_unique<SequenceN>(std::move(items));
    }
    if (t == "NFC") return std::make_unique<NormFormN>(NormForm::NFC);
    if (t == "NFD") return std::make_unique<NormFormN>(NormForm::NFD);
    if (t == "NFKC") return std::make_unique<NormFormN>(NormForm::NFKC);
    if (t == "NFKD") return std::make_unique<NormFormN>(NormForm::NFKD);
    if (t == "Lowercase") return std::make_unique<LowercaseN>();
    if (t == "StripAccents") return std::make_unique<StripAccentsN>();
    if (t == "Strip")
      return std::make_unique<StripN>(get_bool(j, path, "strip_left", true), get_bool(j, path, "strip_right", true));
    if (t == "Prepend") return std::make_unique<PrependN>(get_str(j, path, "prepend"));
    if (t == "Replace") return std::make_unique<ReplaceN>(pattern(j, path), get_str(j, path, "content"));
    bad(path + ".type", fmt::format("unsupported normalizer {:?} (dsmoe supports Sequence, NFC, NFD, NFKC, NFKD, "
                                    "Lowercase, StripAccents, Strip, Prepend, Replace)",
                                    t));
  }

  SplitBehavior behavior(const json& j, const std::string& path, const char* def) const {
    std::string b = def;
    if (const json* v = opt(j, "behavior")) {
      if (!v->is_string()) bad(path + ".behavior", "expected a string");
      b = v->get<std::string>();
    }
    if (b == "Removed") return SplitBehavior::Removed;
    if (b == "Isolated") return SplitBehavior::Isolated;
    if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
    if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
    if (b == "Contiguous") return SplitBehavior::Contiguous;
    bad(path + ".behavior", fmt::format("unknown split behavior {:?} (expected Removed, Isolated, "
                                        "MergedWithPrevious, MergedWithNext or Contiguous)",
                                        b));
  }

  std::unique_ptr<PreTokenizer> pre_tokenizer(const json& j, const std::string& path) const {
    std::string t = get_type(j, path);
    if (t == "Sequence") {
      std::vector<std::unique_ptr<PreTokenizer>> items;
      const json& arr = get_array(j, path, "pretokenizers");
      for (size_t i = 0; i < arr.size(); ++i)
        items.push_back(pre_tokenizer(arr[i], fmt::format("{}.pretokenizers[{}]", path, i)));
      return make_sequence(std::move(items));
    }
    if (t == "Split")
      return make_split(pattern(j, path), behavior(j, path, "Isolated"), get_bool(j, path, "invert", false));
    if (t == "ByteLevel")
      return make_byte_level(get_bool(j, path, "add_prefix_space", true), get_bool(j, path, "use_regex", true));
    if (t == "Digits") {
      // Known gap: HF uses Rust's char::is_numeric (Unicode 16); Debian's PCRE2 knows Unicode 15, so
      // the Unicode 16 digits U+11DE0..U+11DE9 are not split as digits here.
      bool individual = get_bool(j, path, "individual_digits", false);
      return make_split(std::make_shared<Regex>(individual ? "\\p{N}" : "\\p{N}+", path), SplitBehavior::Isolated,
                        false);
    }
    if (t == "Whitespace")
      return make_split(std::make_shared<Regex>("\\w+|[^\\w\\s]+", path), SplitBehavior::Removed, true);
    if (t == "WhitespaceSplit")
      return make_split(std::make_shared<Regex>("\\s", path), SplitBehavior::Removed, false);
    if (t == "Punctuation")
      return make_split(std::make_shared<Regex>(hf_punctuation_class(), path), behavior(j, path, "Isolated"),
                        false);
    bad(path + ".type", fmt::format("unsupported pre-tokenizer {:?} (dsmoe supports Sequence, Split, ByteLevel, "
                                    "Digits, Whitespace, WhitespaceSplit, Punctuation)",
                                    t));
  }

  void model(const json& j, const std::string& path, BpeModel& m) const {
    if (!j.is_object()) bad(path, "expected an object");
    std::string t = j.contains("type") ? get_str(j, path, "type") : "BPE";
    if (t != "BPE")
      bad(path + ".type", fmt::format("unsupported model {:?} (dsmoe supports BPE, the model of byte-level BPE "
                                      "tokenizers)",
                                      t));
    if (const json* d = opt(j, "dropout")) {
      if (!d->is_number()) bad(path + ".dropout", "expected a number or null");
      if (d->get<double>() > 0)
        bad(path + ".dropout", "BPE dropout makes encoding random; dsmoe supports null or 0 only");
    }
    m.unk_token = get_opt_str(j, path, "unk_token");
    m.continuing_subword_prefix = get_opt_str(j, path, "continuing_subword_prefix").value_or("");
    m.end_of_word_suffix = get_opt_str(j, path, "end_of_word_suffix").value_or("");
    m.fuse_unk = get_bool(j, path, "fuse_unk", false);
    m.byte_fallback = get_bool(j, path, "byte_fallback", false);
    m.ignore_merges = get_bool(j, path, "ignore_merges", false);

    const json& vocab = need(j, path, "vocab");
    if (!vocab.is_object()) bad(path + ".vocab", "expected an object mapping each token to its id");
    int32_t max_id = -1;
    m.vocab.reserve(vocab.size());
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      // Ids size tables (id -> token, the model's embedding): bounded like a config's vocab_size, so
      // max_id + 1 neither overflows int32 nor asks for 2^31 strings.
      if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
          it.value().get<int64_t>() >= limits::kMaxVocabSize)
        bad(path + ".vocab", fmt::format("token {:?}: id {} is not an integer in [0, {})", it.key(),
                                         it.value().dump(), limits::kMaxVocabSize));
      int32_t id = (int32_t)it.value().get<int64_t>();
      m.vocab.emplace(it.key(), id);
      max_id = std::max(max_id, id);
    }
    m.id_to_token.assign(max_id + 1, "");
    m.id_used.assign(max_id + 1, 0);
    for (const auto& [tok, id] : m.vocab) {
      m.id_to_token[id] = tok;
      m.id_used[id] = 1;
    }

    const json& merges = get_array(j, path, "merges");
    std::vector<std::pair<uint64_t, std::pair<uint32_t, int32_t>>> entries;
    entries.reserve(merges.size());
    const size_t plen = m.continuing_subword_prefix.size();
    auto lookup = [&](const std::string& tok, size_t i) {
      auto it = m.vocab.find(tok);
      if (it == m.vocab.end())
        bad(fmt::format("{}.merges[{}]", path, i), fmt::format("token {:?} is not in the vocabulary", tok));
      return it->second;
    };
    std::string a, b;
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& e = merges[i];
      if (e.is_string()) {
        const std::string& s = e.get_ref<const std::string&>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          bad(fmt::format("{}.merges[{}]", path, i), fmt::format("expected \"left right\" (one space), got {:?}", s));
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        bad(fmt::format("{}.merges[{}]", path, i), "expected \"left right\" or [\"left\", \"right\"]");
      }
      int32_t ia = lookup(a, i), ib = lookup(b, i);
      std::string merged = a + (b.size() >= plen ? b.substr(plen) : std::string());
      int32_t im = lookup(merged, i);
      entries.push_back({((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib, {(uint32_t)i, im}});
    }
    m.merges.build(entries);
    m.finish();
  }

  std::unique_ptr<PostProcessor> post_processor(const json& j, const std::string& path,
                                                 const TokenizerImpl& impl) const {
    std::string t = get_type(j, path);
    if (t == "ByteLevel") return std::make_unique<NoopP>();
    if (t == "Sequence") {
      std::vector<std::unique_ptr<PostProcessor>> items;
      const json& arr = get_array(j, path, "processors");
      for (size_t i = 0; i < arr.size(); ++i)
        items.push_back(post_processor(arr[i], fmt::format("{}.processors[{}]", path, i), impl));
      return std::make_unique<SequenceP>(std::move(items));
    }
    if (t == "RobertaProcessing" || t == "BertProcessing") {
      auto tok_id = [&](const char* key) {
        const json& v = need(j, path, key);
        if (!v.is_array() || v.size() != 2) bad(path + "." + key, "expected [token, id]");
        return std::vector<int32_t>{token_id(v[1], fmt::format("{}.{}[1]", path, key))};
      };
      std::vector<std::optional<std::vector<int32_t>>> items;
      items.emplace_back(tok_id("cls"));
      items.emplace_back(std::nullopt);
      items.emplace_back(tok_id("sep"));
      return std::make_unique<TemplateP>(std::move(items));
    }
    if (t == "TemplateProcessing") {
      const json& single = get_array(j, path, "single");
      const json& specials = need(j, path, "special_tokens");
      std::vector<std::optional<std::vector<int32_t>>> items;
      for (size_t i = 0; i < single.size(); ++i) {
        std::string ip = fmt::format("{}.single[{}]", path, i);
        const json& it = single[i];
        if (it.is_object() && it.contains("Sequence")) {
          items.emplace_back(std::nullopt);
        } else if (it.is_object() && it.contains("SpecialToken")) {
          std::string name = get_str(it["SpecialToken"], ip + ".SpecialToken", "id");
          std::vector<int32_t> ids;
          auto st = specials.find(name);
          if (specials.is_object() && st != specials.end()) {
            const std::string sp = path + ".special_tokens." + name;
            const json& sids = get_array(*st, sp, "ids");
            for (size_t k = 0; k < sids.size(); ++k) ids.push_back(token_id(sids[k], fmt::format("{}.ids[{}]", sp, k)));
          } else {
            bad(ip, fmt::format("special token {:?} is not in {}.special_tokens", name, path));
          }
          items.emplace_back(std::move(ids));
        } else {
          bad(ip, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
        }
      }
      return std::make_unique<TemplateP>(std::move(items));
    }
    bad(path + ".type", fmt::format("unsupported post-processor {:?} (dsmoe supports ByteLevel, TemplateProcessing, "
                                    "RobertaProcessing, BertProcessing, Sequence)",
                                    t));
  }

  std::unique_ptr<Decoder> decoder(const json& j, const std::string& path) const {
    std::string t = get_type(j, path);
    if (t == "ByteLevel") return std::make_unique<ByteLevelD>();
    if (t == "Sequence") {
      std::vector<std::unique_ptr<Decoder>> items;
      const json& arr = get_array(j, path, "decoders");
      for (size_t i = 0; i < arr.size(); ++i)
        items.push_back(decoder(arr[i], fmt::format("{}.decoders[{}]", path, i)));
      return std::make_unique<SequenceD>(std::move(items));
    }
    if (t == "Replace") return std::make_unique<ReplaceD>(pattern(j, path), get_str(j, path, "content"));
    if (t == "Fuse") return std::make_unique<FuseD>();
    if (t == "ByteFallback") return std::make_unique<ByteFallbackD>();
    if (t == "Strip") {
      // HF's Strip decoder has content: char, start / stop: usize. An empty content would never
      // advance (start = 1e18 loops 1e18 times) and a negative count would become a huge size_t.
      const std::string content = get_str(j, path, "content");
      size_t after_first = 0;
      if (!content.empty()) utf8_next(content, after_first);
      if (content.empty() || after_first != content.size())
        bad(path + ".content", fmt::format("expected exactly one character, got {:?}", content));
      auto count = [&](const char* key) {
        const int64_t v = get_int(j, path, key);
        if (v < 0) bad(path + "." + key, fmt::format("expected a non-negative count, got {}", v));
        return (size_t)v;
      };
      return std::make_unique<StripD>(content, count("start"), count("stop"));
    }
    bad(path + ".type", fmt::format("unsupported decoder {:?} (dsmoe supports ByteLevel, Sequence, Replace, Fuse, "
                                    "ByteFallback, Strip)",
                                    t));
  }

  // The added tokens in file order (ids as written; HF reassigns them, see build()).
  std::vector<AddedToken> added_tokens(const json& arr) const {
    std::vector<AddedToken> out;
    if (!arr.is_array()) bad("added_tokens", "expected an array");
    for (size_t i = 0; i < arr.size(); ++i) {
      std::string p = fmt::format("added_tokens[{}]", i);
      const json& e = arr[i];
      if (!e.is_object()) bad(p, "expected an object");
      AddedToken t;
      t.content = get_str(e, p, "content");
      int64_t id = get_int(e, p, "id");
      if (id < 0 || id > INT32_MAX) bad(p + ".id", "expected a non-negative 32-bit id");
      t.id = (int32_t)id;
      t.single_word = get_bool(e, p, "single_word", false);
      t.lstrip = get_bool(e, p, "lstrip", false);
      t.rstrip = get_bool(e, p, "rstrip", false);
      t.special = get_bool(e, p, "special", false);
      t.normalized = get_bool(e, p, "normalized", !t.special);
      out.push_back(std::move(t));
    }
    return out;
  }

  std::string file_;
};

// The text of a tokenizer_config.json token entry: "..." or {"content": "..."}.
std::optional<std::string> config_token(const json& cfg, const char* key, const std::string& file) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  fail("{}: {}: expected a string or an object with \"content\"", file, key);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open tokenizer file", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json parse_json(const std::string& text, const std::string& origin) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number past double
    fail("{}: not valid JSON: {}", origin, e.what());
  }
}

void build(TokenizerImpl& impl, const json& root, const std::string& origin) {
  Loader L(origin);
  if (!root.is_object()) L.bad("(top level)", "expected a JSON object (a Hugging Face tokenizer.json)");
  if (const json* t = L.opt(root, "truncation"))
    L.bad("truncation", fmt::format("dsmoe never truncates; set it to null (got {})", t->dump()));
  if (const json* p = L.opt(root, "padding"))
    L.bad("padding", fmt::format("dsmoe never pads; set it to null (got {})", p->dump()));
  if (!root.contains("model")) L.bad("model", "missing (required)");
  L.model(root["model"], "model", impl.model);
  if (const json* n = L.opt(root, "normalizer")) impl.normalizer = L.normalizer(*n, "normalizer");
  if (const json* p = L.opt(root, "pre_tokenizer")) impl.pre_tokenizer = L.pre_tokenizer(*p, "pre_tokenizer");
  std::vector<AddedToken> file_tokens;
  if (const json* a = L.opt(root, "added_tokens")) file_tokens = L.added_tokens(*a);
  if (const json* p = L.opt(root, "post_processor")) impl.post = L.post_processor(*p, "post_processor", impl);
  if (const json* d = L.opt(root, "decoder")) impl.decoder = L.decoder(*d, "decoder");

  // Added tokens, registered as HF's AddedVocabulary::add_tokens does when it loads the file: a
  // token's id is that of its content in the added tokens or the model vocabulary if it is there,
  // else the next free id (the "id" field of the file is not used); a repeated content takes the
  // later token's flags. Membership in special_set is by the original content.
  const int32_t model_len = (int32_t)impl.model.vocab.size();
  int32_t max_added = -1;
  std::vector<AddedToken> specials, others;
  for (AddedToken t : file_tokens) {
    if (t.content.empty()) continue;
    if (t.special && impl.special_set.insert(t.content).second) specials.push_back(t);
    bool same = false;
    for (const auto& [id, old] : impl.added.by_id)
      same |= old.content == t.content && old.single_word == t.single_word && old.lstrip == t.lstrip &&
              old.rstrip == t.rstrip && old.normalized == t.normalized && old.special == t.special;
    if (same) continue;
    int32_t id;
    if (auto a = impl.added_by_content.find(std::string_view(t.content)); a != impl.added_by_content.end()) {
      id = a->second;
    } else if (auto m = impl.model.vocab.find(std::string_view(t.content)); m != impl.model.vocab.end()) {
      id = m->second;
    } else if (max_added < 0) {
      id = model_len;
    } else {
      id = (max_added >= model_len || model_len == 0) ? max_added + 1 : model_len;
    }
    impl.added_by_content[t.content] = id;
    max_added = std::max(max_added, id);
    t.id = id;
    if (!impl.special_set.count(t.content)) others.push_back(t);
    // HF keeps the normalised content of a normalized token for id -> token (and decoding).
    std::string nc;
    if (t.normalized && impl.normalizer && impl.normalizer->apply(t.content, nc)) t.content = nc;
    impl.added.by_id[id] = t;
  }
  int32_t max_id = (int32_t)impl.model.id_to_token.size() - 1;
  std::string norm;
  for (const std::vector<AddedToken>* list : {&specials, &others})
    for (const AddedToken& t : *list) {
      int32_t id = impl.added_by_content.find(std::string_view(t.content))->second;
      max_id = std::max(max_id, id);
      if (!t.normalized) {
        impl.added.raw_trie.add(t.content, id);
      } else {
        std::string_view pat = t.content;
        if (impl.normalizer && impl.normalizer->apply(t.content, norm)) pat = norm;
        impl.added.norm_trie.add(pat, id);
      }
    }
  impl.vocab_size = max_id + 1;
}

struct EncodeScratch {
  Arena arena;
  std::vector<Piece> pieces, tmp;
  std::string buf;
};

}  // namespace

Tokenizer Tokenizer::from_json(const std::string& text, const std::string& origin) {
  auto impl = std::make_shared<TokenizerImpl>();
  impl->origin = origin;
  build(*impl, parse_json(text, origin), origin);
  Tokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

Tokenizer Tokenizer::load(const std::string& path, const std::string& config_path, bool use_config) {
  namespace fs = std::filesystem;
  auto impl = std::make_shared<TokenizerImpl>();
  impl->origin = path;
  build(*impl, parse_json(read_file(path), path), path);

  std::string cfg_path = config_path;
  if (cfg_path.empty() && use_config) {
    fs::path p = fs::path(path).parent_path() / "tokenizer_config.json";
    if (fs::exists(p)) cfg_path = p.string();
  }
  if (use_config && !cfg_path.empty()) {
    json cfg = parse_json(read_file(cfg_path), cfg_path);
    if (!cfg.is_object()) fail("{}: expected a JSON object (tokenizer_config.json)", cfg_path);
    auto id_of = [&](const char* key) -> std::optional<int32_t> {
      auto tok = config_token(cfg, key, cfg_path);
      if (!tok) return std::nullopt;
      auto it = impl->added_by_content.find(std::string_view(*tok));
      if (it != impl->added_by_content.end()) return it->second;
      auto mt = impl->model.vocab.find(std::string_view(*tok));
      if (mt != impl->model.vocab.end()) return mt->second;
      fail("{}: {}: token {:?} is in neither the vocabulary nor the added tokens of {}", cfg_path, key, *tok, path);
    };
    impl->bos = id_of("bos_token");
    impl->eos = id_of("eos_token");
    auto flag = [&](const char* key) -> std::optional<bool> {
      auto it = cfg.find(key);
      if (it == cfg.end() || it->is_null()) return std::nullopt;
      if (!it->is_boolean()) fail("{}: {}: expected true or false", cfg_path, key);
      return it->get<bool>();
    };
    auto add_bos = flag("add_bos_token"), add_eos = flag("add_eos_token");
    if (add_bos || add_eos) {
      // transformers' fast Llama tokenizer: the post-processor becomes "[bos] $A [eos]".
      std::vector<std::optional<std::vector<int32_t>>> items;
      if (add_bos.value_or(false)) {
        if (!impl->bos) fail("{}: add_bos_token is true but bos_token is not set", cfg_path);
        items.emplace_back(std::vector<int32_t>{*impl->bos});
      }
      items.emplace_back(std::nullopt);
      if (add_eos.value_or(false)) {
        if (!impl->eos) fail("{}: add_eos_token is true but eos_token is not set", cfg_path);
        items.emplace_back(std::vector<int32_t>{*impl->eos});
      }
      impl->post = std::make_unique<TemplateP>(std::move(items));
    }
  }
  Tokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const TokenizerImpl& I = *impl_;
  size_t bad = utf8_invalid_at(text);
  if (bad != std::string_view::npos) fail("tokenizer input is not valid UTF-8 (invalid byte at offset {})", bad);
  thread_local EncodeScratch sc;
  sc.arena.clear();
  sc.pieces.clear();
  I.added.split(text, I.added.raw_trie, sc.pieces);
  if (I.normalizer || !I.added.norm_trie.empty()) {
    sc.tmp.clear();
    for (const Piece& p : sc.pieces) {
      if (p.id >= 0) {
        sc.tmp.push_back(p);
        continue;
      }
      std::string_view s = p.s;
      if (I.normalizer && I.normalizer->apply(s, sc.buf)) s = sc.arena.keep(std::move(sc.buf));
      I.added.split(s, I.added.norm_trie, sc.tmp);
    }
    sc.pieces.swap(sc.tmp);
  }
  if (I.pre_tokenizer) I.pre_tokenizer->apply(sc.pieces, sc.arena);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  BpeScratch& bs = bpe_scratch(I.model);
  for (const Piece& p : sc.pieces) {
    if (p.id >= 0) ids.push_back(p.id);
    else I.model.tokenize(p, ids, bs);
  }
  if (add_special_tokens && I.post) I.post->apply(ids);
  return ids;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string>& texts, int threads,
                                                          bool add_special_tokens) const {
  std::vector<std::vector<int32_t>> out(texts.size());
  if (threads <= 0) threads = (int)std::max(1u, std::thread::hardware_concurrency());
  threads = (int)std::min<size_t>((size_t)threads, std::max<size_t>(1, texts.size()));
  if (threads <= 1) {
    for (size_t i = 0; i < texts.size(); ++i) out[i] = encode(texts[i], add_special_tokens);
    return out;
  }
  // OpenMP: its pool threads persist between calls, and so do their word caches.
  std::exception_ptr err;
  std::mutex err_mu;
  const int64_t n = (int64_t)texts.size();
#pragma omp parallel for schedule(dynamic, 8) num_threads(threads)
  for (int64_t i = 0; i < n; ++i) {
    try {
      out[i] = encode(texts[i], add_special_tokens);
    } catch (...) {
      std::lock_guard<std::mutex> lk(err_mu);
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const TokenizerImpl& I = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    auto a = I.added.by_id.find(id);
    if (a != I.added.by_id.end()) {
      const AddedToken& t = a->second;
      if (skip_special_tokens && I.special_set.count(t.content)) continue;
      tokens.push_back(t.content);
    } else if (id >= 0 && (size_t)id < I.model.id_to_token.size() && I.model.id_used[id]) {
      tokens.push_back(I.model.id_to_token[id]);
    }
  }
  if (!I.decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  I.decoder->apply(tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto a = impl_->added_by_content.find(token);
  if (a != impl_->added_by_content.end()) return a->second;
  auto m = impl_->model.vocab.find(token);
  if (m != impl_->model.vocab.end()) return m->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  auto a = impl_->added.by_id.find(id);
  if (a != impl_->added.by_id.end()) return a->second.content;
  if (id >= 0 && (size_t)id < impl_->model.id_to_token.size() && impl_->model.id_used[id])
    return impl_->model.id_to_token[id];
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  auto a = impl_->added.by_id.find(id);
  return a != impl_->added.by_id.end() && impl_->special_set.count(a->second.content);
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }

}  // namespace dsmoe::tok
