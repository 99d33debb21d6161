// Inference subcommands over a model folder (a Hugging Face DeepSeekMoE checkpoint or a dsmoe run
// folder): generate, chat, score, export, quantize.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <algorithm>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "infer/engine.h"
#include "infer/hf_checkpoint.h"
#include "infer/infer_weights.h"
#include "infer/sampling.h"
#include "infer/text_codec.h"
#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"

namespace dsmoe::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Text <-> ids: the folder's tokenizer.json (HF byte-level BPE) or dsmoe's byte codec.
struct TextIO {
  std::optional<tok::Tokenizer> tok;
  TextCodec bytes = TextCodec::load("bytes");
  int32_t bos = -1, eos = -1;
  int64_t vocab = 0;
  std::string name;

  // add_special: BOS (and whatever tokenizer_config.json asks) as HF's encode(add_special_tokens=True).
  std::vector<int32_t> encode(const std::string& text, bool add_special) const {
    if (tok) return tok->encode(text, add_special);
    if (vocab < 256)
      fail("text input needs a tokenizer: the model's vocab_size is {} (< 256 byte ids) and no tokenizer.json was "
           "found; give --tokenizer or token ids", vocab);
    return bytes.encode(text);
  }
  std::string decode(const std::vector<int32_t>& ids) const {
    if (tok) return tok->decode(ids, /*skip_special_tokens=*/true);
    return bytes.decode(ids);
  }
};

// spec: "" = DIR/tokenizer.json when present, else bytes; "bytes"; or a tokenizer.json path.
TextIO load_text_io(const std::string& dir, const std::string& spec, const ModelConfig& m) {
  TextIO io;
  io.vocab = m.vocab_size;
  std::string path = spec;
  if (spec.empty()) path = fs::exists(fs::path(dir) / "tokenizer.json") ? (fs::path(dir) / "tokenizer.json").string() : "bytes";
  auto in_vocab = [&](int64_t id) { return id >= 0 && id < m.vocab_size ? (int32_t)id : -1; };
  if (path == "bytes") {
    io.name = "bytes";
    // Byte ids are text, never EOS; a model with fewer than 256 ids (tests) can only take token ids.
    io.eos = m.vocab_size < 256 ? in_vocab(m.eos_token_id) : m.eos_token_id < 256 ? -1 : in_vocab(m.eos_token_id);
    return io;
  }
  io.tok = tok::Tokenizer::load(path);
  io.name = path;
  if (io.tok->vocab_size() > m.vocab_size)
    fail("{}: the tokenizer has {} ids but the model's vocab_size is {}", path, io.tok->vocab_size(), m.vocab_size);
  io.bos = io.tok->bos_id() ? *io.tok->bos_id() : in_vocab(m.bos_token_id);
  io.eos = io.tok->eos_id() ? *io.tok->eos_id() : in_vocab(m.eos_token_id);
  return io;
}

// "1,2,3", "[1, 2, 3]" or "1 2 3".
std::vector<int32_t> parse_ids(const std::string& s, const std::string& what) {
  std::vector<int32_t> ids;
  std::string cur;
  auto flush = [&] {
    if (cur.empty()) return;
    try {
      size_t used = 0;
      long long v = std::stoll(cur, &used);
      if (used != cur.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(cur);
      ids.push_back((int32_t)v);
    } catch (...) {
      fail("{}: '{}' is not a token id (expected non-negative integers like 1,2,3)", what, cur);
    }
    cur.clear();
  };
  for (char c : s) {
    if (c == ',' || c == ' ' || c == '[' || c == ']' || c == '\t' || c == '\n' || c == '\r') flush();
    else cur += c;
  }
  flush();
  return ids;
}

int64_t parse_size(const std::string& s) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (...) {
    fail("--shard-size '{}': expected a size like 2GB, 500MB or a byte count", s);
  }
  std::string unit = s.substr(used);
  double mul = 1;
  if (unit == "" || unit == "B") mul = 1;
  else if (unit == "KB" || unit == "K") mul = 1e3;
  else if (unit == "MB" || unit == "M") mul = 1e6;
  else if (unit == "GB" || unit == "G") mul = 1e9;
  else if (unit == "KiB") mul = 1024.0;
  else if (unit == "MiB") mul = 1024.0 * 1024;
  else if (unit == "GiB") mul = 1024.0 * 1024 * 1024;
  else fail("--shard-size '{}': unknown unit '{}' (B, KB, MB, GB, KiB, MiB, GiB)", s, unit);
  if (v <= 0) fail("--shard-size '{}' must be > 0", s);
  return (int64_t)(v * mul);
}

// Streams decoded text as tokens arrive, holding back what could still change: a trailing U+FFFD
// (an incomplete UTF-8 sequence split across byte tokens) and any suffix that may begin a stop string.
class TextStream {
 public:
  TextStream(const TextIO& io, std::vector<std::string> stops) : io_(io), stops_(std::move(stops)) {}
  // Appends a token; sets `out` to the newly safe text. Returns false when a stop string appeared
  // (the text up to it has then been emitted).
  bool push(int32_t t, std::string& out) {
    ids_.push_back(t);
    const std::string text = io_.decode(ids_);
    size_t stop_at = std::string::npos;
    for (const auto& s : stops_) {
      if (s.empty()) continue;
      size_t p = text.find(s);
      if (p != std::string::npos) stop_at = std::min(stop_at, p);
    }
    if (stop_at != std::string::npos) {
      out = stop_at > emitted_ ? text.substr(emitted_, stop_at - emitted_) : "";
      emitted_ = std::max(emitted_, stop_at);
      final_ = text.substr(0, stop_at);
      stopped_ = true;
      return false;
    }
    size_t safe = text.size();
    static const std::string kRepl = "\xEF\xBF\xBD";
    while (safe >= 3 && text.compare(safe - 3, 3, kRepl) == 0) safe -= 3;
    for (const auto& s : stops_)
      for (size_t k = std::min(s.size() - 1, safe); k > 0; --k)
        if (text.compare(safe - k, k, s, 0, k) == 0) {
          safe -= k;
          break;
        }
    out = safe > emitted_ ? text.substr(emitted_, safe - emitted_) : "";
    emitted_ = std::max(emitted_, safe);
    final_ = text;
    return true;
  }
  // What is left to print at the end, and the full text.
  std::string flush() {
    std::string rest = final_.size() > emitted_ ? final_.substr(emitted_) : "";
    emitted_ = final_.size();
    return rest;
  }
  const std::string& text() const { return final_; }

 private:
  const TextIO& io_;
  std::vector<std::string> stops_;
  std::vector<int32_t> ids_;
  size_t emitted_ = 0;
  std::string final_;
  bool stopped_ = false;
};

struct SamplingArgs {
  SamplingOptions o;
  uint64_t seed = 0;
  std::vector<std::string> stops;
  bool ignore_eos = false;
};

void add_sampling_options(CLI::App* c, SamplingArgs& a) {
  c->add_option("--max-new-tokens", a.o.max_new_tokens, "tokens to generate at most")->capture_default_str();
  c->add_option("--temperature", a.o.temperature, "0 = greedy")->capture_default_str();
  c->add_option("--top-k", a.o.top_k, "sample among the k most likely tokens (0 = off)")->capture_default_str();
  c->add_option("--top-p", a.o.top_p, "nucleus sampling mass (1 = off)")->capture_default_str();
  c->add_option("--seed", a.seed, "sampling seed (each prompt gets its own generator with this seed)")->capture_default_str();
  c->add_option("--stop", a.stops, "stop when the generated text contains this string (repeatable)");
  c->add_flag("--ignore-eos", a.ignore_eos, "do not stop at the end-of-sequence token");
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// dtype: "auto" (the folder's own storage: q8/q4 for a quantized folder, bf16 for a BF16
// checkpoint, else f32) or f32 | bf16 | q8 | q4 (converted while loading).
InferenceModel load_for_inference(const std::string& dir, const std::string& dtype, bool verbose) {
  const double t0 = now_s();
  std::optional<ops::WType> type;
  if (dtype != "auto") type = ops::parse_wtype(dtype, "--dtype (auto, f32, bf16, q8 or q4)");
  InferenceModel im = load_inference_model(dir, type);
  if (verbose)
    std::fprintf(stderr,
                 "loaded %s: %lld tensors from %lld file(s) (%lld F32, %lld BF16, %lld F16, %lld quantized), %.2f GB on "
                 "disk -> %.2f GB %s, %.2f s\n",
                 dir.c_str(), (long long)im.report.tensors, (long long)im.report.files, (long long)im.report.f32,
                 (long long)im.report.bf16, (long long)im.report.f16, (long long)im.report.quantized,
                 im.report.bytes_read / 1e9, im.weights->bytes() / 1e9, ops::wtype_name(im.weights->type()),
                 now_s() - t0);
  return im;
}

// ---------------------------------------------------------------- generate

struct GenerateArgs {
  std::string dir, tokenizer, dtype = "auto";
  std::vector<std::string> prompts, prompt_ids;
  std::string prompts_file;
  bool json_out = false, verbose = false, no_special = false;
  SamplingArgs s;
};

void cmd_generate(const GenerateArgs& a) {
  InferenceModel lm = load_for_inference(a.dir, a.dtype, a.verbose);
  const ModelConfig& m = lm.config.model;
  TextIO io = load_text_io(a.dir, a.tokenizer, m);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> prompt_text;
  for (const auto& p : a.prompts) {
    prompts.push_back(io.encode(p, !a.no_special));
    prompt_text.push_back(p);
  }
  if (!a.prompts_file.empty()) {
    std::istringstream in(read_text_file(a.prompts_file));
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      prompts.push_back(io.encode(line, !a.no_special));
      prompt_text.push_back(line);
    }
  }
  for (const auto& p : a.prompt_ids) {
    prompts.push_back(parse_ids(p, "--prompt-ids"));
    prompt_text.push_back(io.decode(prompts.back()));
  }
  if (prompts.empty()) {  // the historical default
    prompts.push_back(io.encode("The ", !a.no_special));
    prompt_text.push_back("The ");
  }
  SamplingOptions o = a.s.o;
  o.eos_token = a.s.ignore_eos ? -1 : io.eos;
  InferenceEngine eng(*lm.weights);
  const bool stream = !a.json_out && prompts.size() == 1;
  std::vector<TextStream> streams;
  for (size_t i = 0; i < prompts.size(); ++i) streams.emplace_back(io, a.s.stops);
  if (stream) {
    std::printf("%s", prompt_text[0].c_str());
    std::fflush(stdout);
  }
  const double t0 = now_s();
  int64_t produced = 0;
  GenerationStats gs;
  auto res = generate_batch(eng, prompts, o, a.s.seed, [&](int64_t i, int32_t t) {
    ++produced;
    std::string piece;
    const bool go = streams[i].push(t, piece);
    if (stream && !piece.empty()) {
      std::printf("%s", piece.c_str());
      std::fflush(stdout);
    }
    return go;
  }, &gs);
  const double dt = now_s() - t0;
  if (stream) {
    std::printf("%s\n", streams[0].flush().c_str());
  } else {
    for (size_t i = 0; i < prompts.size(); ++i) {
      streams[i].flush();
      if (a.json_out) {
        json j = {{"index", i}, {"prompt_ids", prompts[i]}, {"ids", res[i].tokens},
                  {"text", streams[i].text()}, {"finish_reason", finish_reason_name(res[i].finish)}};
        std::printf("%s\n", j.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
      } else {
        std::printf("[%zu] %s%s\n", i, prompt_text[i].c_str(), streams[i].text().c_str());
      }
    }
  }
  if (a.verbose)
    std::fprintf(stderr,
                 "generated %lld tokens for %zu prompt(s) in %.3f s | prefill %lld tokens in %.3f s (%.1f tok/s) | "
                 "decode %lld tokens in %lld steps, %.3f s (%.1f tok/s)\n",
                 (long long)produced, prompts.size(), dt, (long long)gs.prefill_tokens, gs.prefill_s,
                 gs.prefill_tokens / std::max(gs.prefill_s, 1e-9), (long long)gs.decode_tokens, (long long)gs.decode_steps,
                 gs.decode_s, gs.decode_tokens / std::max(gs.decode_s, 1e-9));
}

// ---------------------------------------------------------------- chat

struct ChatArgs {
  std::string dir, tokenizer, system, dtype = "auto";
  SamplingArgs s;
};

// DeepSeek chat format (deepseek-moe-16b-chat's template):
//   <BOS>[system\n\n]User: {msg}\n\nAssistant: {reply}<EOS>User: {msg}\n\nAssistant:
void cmd_chat(const ChatArgs& a) {
  InferenceModel lm = load_for_inference(a.dir, a.dtype, false);
  const ModelConfig& m = lm.config.model;
  TextIO io = load_text_io(a.dir, a.tokenizer, m);
  SamplingOptions o = a.s.o;
  o.eos_token = a.s.ignore_eos ? -1 : io.eos;
  InferenceEngine eng(*lm.weights);
  KvCache cache(m, m.max_position_embeddings);
  Rng rng(a.s.seed);
  const bool tty = isatty(0);
  bool first = true, need_eos = false;
  std::string line;
  while (true) {
    if (tty) {
      std::fprintf(stderr, "User: ");
      std::fflush(stderr);
    }
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    std::vector<int32_t> input;
    if (first && io.bos >= 0) input.push_back(io.bos);
    if (need_eos && io.eos >= 0) input.push_back(io.eos);
    std::string text = (first && !a.system.empty() ? a.system + "\n\n" : "") + "User: " + line + "\n\nAssistant:";
    auto ids = io.encode(text, false);
    input.insert(input.end(), ids.begin(), ids.end());
    first = false;
    if (cache.len + (int64_t)input.size() >= cache.capacity) {
      std::fprintf(stderr, "dsmoe: the conversation reached max_position_embeddings (%lld tokens); ending the chat\n",
                   (long long)m.max_position_embeddings);
      break;
    }
    if (tty) std::fprintf(stderr, "Assistant:");
    TextStream ts(io, a.s.stops);
    auto r = continue_sequence(eng, cache, input, o, rng, [&](int32_t t) {
      std::string piece;
      bool go = ts.push(t, piece);
      std::printf("%s", piece.c_str());
      std::fflush(stdout);
      return go;
    });
    std::printf("%s\n", ts.flush().c_str());
    std::fflush(stdout);
    need_eos = r.finish != FinishReason::Eos;
  }
}

// ---------------------------------------------------------------- score

struct ScoreArgs {
  std::string dir, tokenizer, text_file, ids_jsonl, dtype = "auto";
  int64_t ctx = 0;
  bool summary = false, no_special = false;
};

void cmd_score(const ScoreArgs& a) {
  if (a.text_file.empty() == a.ids_jsonl.empty()) fail("score: give exactly one of --text-file or --ids-jsonl");
  InferenceModel lm = load_for_inference(a.dir, a.dtype, false);
  const ModelConfig& m = lm.config.model;
  std::vector<std::vector<int32_t>> seqs;
  if (!a.text_file.empty()) {
    TextIO io = load_text_io(a.dir, a.tokenizer, m);
    seqs.push_back(io.encode(read_text_file(a.text_file), !a.no_special));
  } else {
    std::istringstream in(read_text_file(a.ids_jsonl));
    std::string line;
    int64_t lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json j;
      try {
        j = json::parse(line);
      } catch (const json::parse_error& e) {
        fail("{}:{}: not valid JSON: {}", a.ids_jsonl, lineno, e.what());
      }
      if (!j.is_array()) fail("{}:{}: expected a JSON array of token ids", a.ids_jsonl, lineno);
      std::vector<int32_t> ids;
      for (const auto& v : j) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= m.vocab_size)
          fail("{}:{}: {} is not a token id in [0, {})", a.ids_jsonl, lineno, v.dump(), m.vocab_size);
        ids.push_back((int32_t)v.get<int64_t>());
      }
      seqs.push_back(std::move(ids));
    }
  }
  InferenceEngine eng(*lm.weights);
  json out_seqs = json::array();
  double total = 0;
  int64_t n = 0;
  const double t0 = now_s();
  for (const auto& s : seqs) {
    auto lp = score_tokens(eng, s, a.ctx);
    double sum = 0;
    for (double v : lp) sum += v;
    total += sum;
    n += (int64_t)lp.size();
    json js = {{"tokens", (int64_t)s.size()}, {"scored", (int64_t)lp.size()}, {"sum_logprob", sum},
               {"mean_nll", lp.empty() ? 0.0 : -sum / (double)lp.size()}};
    if (!a.summary) {
      js["logprobs"] = lp;
      if (!a.text_file.empty()) js["ids"] = s;
    }
    out_seqs.push_back(js);
  }
  const double dt = now_s() - t0;
  const double nll = n ? -total / (double)n : 0.0;
  json j = {{"tokens_scored", n}, {"mean_nll", nll}, {"perplexity", std::exp(nll)},
            {"dtype", ops::wtype_name(lm.weights->type())},
            {"ctx", a.ctx > 0 ? a.ctx : m.max_position_embeddings}, {"seconds", dt}, {"sequences", out_seqs}};
  std::printf("%s\n", j.dump().c_str());
}

}  // namespace

void add_infer_commands(CLI::App& app) {
  // generate
  {
    auto* c = app.add_subcommand("generate", "continue prompts with a model (HF checkpoint or dsmoe run folder)");
    auto a = std::make_shared<GenerateArgs>();
    a->s.o.temperature = 0.8;
    c->add_option("--model", a->dir, "model folder: HF checkpoint (config.json + safetensors) or dsmoe run folder")->required();
    c->add_option("--prompt", a->prompts, "prompt text (repeatable: one batch)");
    c->add_option("--prompt-ids", a->prompt_ids, "prompt token ids, comma-separated: 1,2,3 (repeatable)");
    c->add_option("--prompts-file", a->prompts_file, "one prompt per line, all in one batch");
    c->add_option("--tokenizer", a->tokenizer, "tokenizer.json, or \"bytes\" (default: the model folder's tokenizer.json, else bytes)");
    c->add_flag("--no-special-tokens", a->no_special, "do not add BOS to text prompts");
    c->add_flag("--json", a->json_out, "one JSON object per prompt: ids, text, finish_reason");
    c->add_flag("--verbose", a->verbose, "load and speed statistics on stderr");
    c->add_option("--dtype", a->dtype, "weight storage: auto (the folder's own), f32, bf16, q8, q4")->capture_default_str();
    add_sampling_options(c, a->s);
    c->callback([a] { cmd_generate(*a); });
  }
  // chat
  {
    auto* c = app.add_subcommand("chat", "chat on stdin/stdout in the DeepSeek chat format (one user message per line)");
    auto a = std::make_shared<ChatArgs>();
    a->s.o.temperature = 0.7;
    a->s.o.top_p = 0.95;
    a->s.o.max_new_tokens = 512;
    c->add_option("--model", a->dir, "model folder")->required();
    c->add_option("--tokenizer", a->tokenizer, "tokenizer.json, or \"bytes\" (default: the model folder's)");
    c->add_option("--system", a->system, "system prompt");
    c->add_option("--dtype", a->dtype, "weight storage: auto (the folder's own), f32, bf16, q8, q4")->capture_default_str();
    add_sampling_options(c, a->s);
    c->callback([a] { cmd_chat(*a); });
  }
  // score
  {
    auto* c = app.add_subcommand("score", "per-token log-probabilities, mean NLL and perplexity as JSON");
    auto a = std::make_shared<ScoreArgs>();
    c->add_option("--model", a->dir, "model folder")->required();
    c->add_option("--text-file", a->text_file, "text to score (tokenized with BOS when the tokenizer adds it)");
    c->add_option("--ids-jsonl", a->ids_jsonl, "one JSON array of token ids per line, each scored separately");
    c->add_option("--tokenizer", a->tokenizer, "tokenizer.json, or \"bytes\" (default: the model folder's)");
    c->add_option("--ctx", a->ctx, "window length (default max_position_embeddings); windows overlap by one token");
    c->add_flag("--summary", a->summary, "omit the per-token log-probabilities");
    c->add_option("--dtype", a->dtype, "weight storage: auto (the folder's own), f32, bf16, q8, q4")->capture_default_str();
    c->add_flag("--no-special-tokens", a->no_special, "do not add BOS to the text");
    c->callback([a] { cmd_score(*a); });
  }
  // quantize
  {
    auto* c = app.add_subcommand("quantize", "write a q8 / q4 weight-quantized copy of a model folder");
    auto dir = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    auto type = std::make_shared<std::string>();
    auto shard = std::make_shared<std::string>("2GiB");
    c->add_option("--model", *dir, "model folder: HF checkpoint, dsmoe run folder (or a quantized folder)")->required();
    c->add_option("--out", *out, "output folder (written to a temporary folder, then renamed into place)")->required();
    c->add_option("--type", *type, "q8 (int8, llama.cpp Q8_0-like) or q4 (4-bit, Q4_0-like); blocks of 32")->required();
    c->add_option("--shard-size", *shard, "largest shard, e.g. 2GiB, 500MB")->capture_default_str();
    c->callback([=] {
      const ops::WType t = ops::parse_wtype(*type, "--type (q8 or q4)");
      if (t != ops::WType::Q8 && t != ops::WType::Q4) fail("--type '{}': expected q8 or q4", *type);
      const fs::path in_p = fs::weakly_canonical(fs::absolute(*dir)), out_p = fs::weakly_canonical(fs::absolute(*out));
      if (in_p == out_p) fail("quantize: --out must differ from --model (the source is never modified)");
      if (std::mismatch(in_p.begin(), in_p.end(), out_p.begin(), out_p.end()).first == in_p.end())
        fail("quantize: --out {} lies inside --model {}", *out, *dir);
      ExportOptions o;
      o.max_shard_bytes = parse_size(*shard);
      const fs::path tok = fs::path(*dir) / "tokenizer.json";
      if (fs::exists(tok)) o.tokenizer = tok.string();
      const double t0 = now_s();
      InferenceModel im = load_inference_model(*dir, t);
      const int64_t n = write_quantized(*out, im.config, *im.weights, o);
      std::printf("quantized %s -> %s (%s, %.3f GB of weights, %lld shard%s, %.1f s)\n", dir->c_str(), out->c_str(),
                  type->c_str(), im.weights->bytes() / 1e9, (long long)n, n == 1 ? "" : "s", now_s() - t0);
    });
  }
  // export
  {
    auto* c = app.add_subcommand("export", "write a model folder as a Hugging Face checkpoint");
    auto dir = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    auto dtype = std::make_shared<std::string>("f32");
    auto shard = std::make_shared<std::string>("2GiB");
    auto tokenizer = std::make_shared<std::string>();
    c->add_option("--model", *dir, "dsmoe run folder (or HF checkpoint to re-shard / convert)")->required();
    c->add_option("--out", *out, "output folder")->required();
    c->add_option("--dtype", *dtype, "f32 or bf16")->capture_default_str();
    c->add_option("--shard-size", *shard, "largest shard, e.g. 2GiB, 500MB")->capture_default_str();
    c->add_option("--tokenizer", *tokenizer, "tokenizer.json to copy beside (with its tokenizer_config.json)");
    c->callback([=] {
      ExportOptions o;
      if (*dtype == "f32") o.dtype = DType::F32;
      else if (*dtype == "bf16") o.dtype = DType::BF16;
      else fail("--dtype '{}': expected f32 or bf16", *dtype);
      o.max_shard_bytes = parse_size(*shard);
      o.tokenizer = *tokenizer;
      if (fs::absolute(*out).lexically_normal() == fs::absolute(*dir).lexically_normal())
        fail("export: --out must differ from --model");
      LoadedModel lm = load_model_dir(*dir);
      const int64_t n = export_hf(*out, lm.config, *lm.model, o);
      std::printf("exported %s -> %s (%s, %lld shard%s)\n", dir->c_str(), out->c_str(), dtype->c_str(), (long long)n,
                  n == 1 ? "" : "s");
    });
  }
}

}  // namespace dsmoe::cli
