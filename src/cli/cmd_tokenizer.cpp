// dsmoe tokenize / detokenize / tokenizer train.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>


#include "cli/commands.h"
#include "cli/options.h"
#include "core/error.h"
#include "io/token_ids.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"

namespace dsmoe::cli {

namespace {

using json = nlohmann::json;

std::string slurp(const std::string& path) {
  if (path == "-") {
    std::stringstream ss;
    ss << std::cin.rdbuf();
    return ss.str();
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open input", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// One input per line; in JSONL mode each line is a JSON string (or an object with "text").
std::vector<std::string> read_inputs(const std::vector<std::string>& files, bool jsonl) {
  std::vector<std::string> out;
  std::vector<std::string> paths = files.empty() ? std::vector<std::string>{"-"} : files;
  for (const std::string& path : paths) {
    std::string data = slurp(path);
    size_t pos = 0, lineno = 0;
    while (pos < data.size()) {
      size_t nl = data.find('\n', pos);
      if (nl == std::string::npos) nl = data.size();
      std::string_view line(data.data() + pos, nl - pos);
      pos = nl + 1;
      ++lineno;
      if (!jsonl) {
        out.emplace_back(line);
        continue;
      }
      if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      json j;
      try {
        j = json::parse(line);
      } catch (const json::exception& e) {  // parse_error, or out_of_range for a number past double
        fail("{}:{}: not valid JSON: {}", path == "-" ? "<stdin>" : path, lineno, e.what());
      }
      if (j.is_string()) out.push_back(j.get<std::string>());
      else if (j.is_object() && j.contains("text") && j["text"].is_string()) out.push_back(j["text"].get<std::string>());
      else fail("{}:{}: expected a JSON string (or an object with a \"text\" string)", path == "-" ? "<stdin>" : path, lineno);
    }
  }
  return out;
}

}  // namespace

void add_tokenizer_commands(CLI::App& app) {
  // ---- tokenize ----
  {
    auto* cmd = app.add_subcommand("tokenize", "Encode text to token ids with a Hugging Face tokenizer.json");
    struct Opts {
      std::string tokenizer, config;
      std::vector<std::string> inputs;
      bool jsonl = false, tokens = false, special = false, no_config = false;
      int threads = 1;
      int bench = 0;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json")->required();
    cmd->add_option("--config", o->config, "tokenizer_config.json (default: the one beside --tokenizer, if any)");
    cmd->add_flag("--no-config", o->no_config, "ignore tokenizer_config.json");
    cmd->add_flag("--jsonl", o->jsonl, "each input line is a JSON string (newlines inside a text survive)");
    cmd->add_flag("--tokens", o->tokens, "print token strings instead of ids");
    cmd->add_flag("--special", o->special, "add special tokens (BOS/EOS) as the post-processor says");
    cmd->add_option("--threads", o->threads, "encoding threads (0: all cores)")->check(int_in(0, 4096));
    cmd->add_option("--bench", o->bench,
                    "time N encodings of all inputs (best run) and print {\"mb_per_s\": ...} instead of ids")
        ->check(int_in(0, 1000000));
    cmd->add_option("inputs", o->inputs, "input files (default: stdin); plain text is one input per line");
    cmd->callback([o] {
      auto tok = tok::Tokenizer::load(o->tokenizer, o->config, !o->no_config);
      auto texts = read_inputs(o->inputs, o->jsonl);
      if (o->bench > 0) {
        size_t bytes = 0, tokens = 0;
        for (const auto& t : texts) bytes += t.size();
        double best = 1e30;
        for (int r = 0; r < o->bench; ++r) {
          auto t0 = std::chrono::steady_clock::now();
          auto all = tok.encode_batch(texts, o->threads, o->special);
          best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
          tokens = 0;
          for (const auto& ids : all) tokens += ids.size();
        }
        std::printf("{\"bytes\":%zu,\"seconds\":%.4f,\"mb_per_s\":%.3f,\"tokens\":%zu,\"threads\":%d}\n", bytes, best,
                    bytes / 1e6 / best, tokens, o->threads);
        return;
      }
      auto all = tok.encode_batch(texts, o->threads, o->special);
      std::string buf;
      for (const auto& ids : all) {
        if (o->tokens) {
          json arr = json::array();
          for (int32_t id : ids) arr.push_back(tok.id_to_token(id).value_or(""));
          buf += arr.dump();
          buf += '\n';
        } else {
          append_ids_jsonl(buf, ids);
        }
        if (buf.size() > (1 << 20)) {
          std::fwrite(buf.data(), 1, buf.size(), stdout);
          buf.clear();
        }
      }
      std::fwrite(buf.data(), 1, buf.size(), stdout);
    });
  }
  // ---- detokenize ----
  {
    auto* cmd = app.add_subcommand("detokenize", "Decode JSON arrays of token ids (one per line) back to text");
    struct Opts {
      std::string tokenizer;
      std::vector<std::string> inputs;
      bool jsonl = false, skip_special = false;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json")->required();
    cmd->add_flag("--jsonl", o->jsonl, "print each text as a JSON string on its own line");
    cmd->add_flag("--skip-special", o->skip_special, "leave special tokens out");
    cmd->add_option("inputs", o->inputs, "input files (default: stdin), one JSON array of ids per line");
    cmd->callback([o] {
      auto tok = tok::Tokenizer::load(o->tokenizer, "", false);
      std::vector<std::string> paths = o->inputs.empty() ? std::vector<std::string>{"-"} : o->inputs;
      std::string buf;
      for (const auto& path : paths) {
        std::string data = slurp(path);
        // Ids past the vocabulary are skipped by decode (as HF's); ids no int32 holds are refused.
        for (const auto& ids : parse_ids_jsonl(data, path == "-" ? "<stdin>" : path, kAnyTokenId)) {
          std::string text = tok.decode(ids, o->skip_special);
          if (o->jsonl) buf += json(text).dump(-1, ' ', false, json::error_handler_t::replace);
          else buf += text;
          buf += '\n';
        }
      }
      std::fwrite(buf.data(), 1, buf.size(), stdout);
    });
  }
  // ---- tokenizer train ----
  {
    auto* grp = app.add_subcommand("tokenizer", "Tokenizer tools");
    grp->require_subcommand(1);
    auto* cmd = grp->add_subcommand("train", "Train a byte-level BPE and write a Hugging Face tokenizer.json");
    struct Opts {
      int32_t vocab_size = 8192;
      std::string out;
      std::vector<std::string> corpus;
      std::vector<std::string> special;
      bool jsonl = false, brown = false, no_bos = false;
      int64_t min_frequency = 2;
      int threads = 0;
      std::string pattern;
    };
    auto o = std::make_shared<Opts>();
    cmd->add_option("--vocab-size", o->vocab_size, "ids in the vocabulary (bytes + special tokens + merges)")
        ->required()
        ->check(int_in(256, 1 << 24));
    cmd->add_option("--out", o->out, "the tokenizer.json to write")->required();
    cmd->add_option("corpus", o->corpus, "corpus files (each file is one text; see --jsonl, --brown)")->required();
    cmd->add_flag("--jsonl", o->jsonl, "corpus files hold one JSON string (or {\"text\": ...}) per line");
    cmd->add_flag("--brown", o->brown, "corpus files are Brown corpus files (word/tag): train on the words");
    cmd->add_option("--special", o->special,
                    "special tokens, first ids in order (default: <|begin_of_text|> <|end_of_text|>)");
    cmd->add_flag("--no-bos", o->no_bos, "no BOS post-processor (default: the first special token is BOS)");
    cmd->add_option("--min-frequency", o->min_frequency, "never merge a pair seen fewer times")
        ->check(int_in(1, int64_t(1) << 40));
    cmd->add_option("--pattern", o->pattern, "pre-tokenizer split regex (default: GPT-4 / Llama 3 style)");
    cmd->add_option("--threads", o->threads, "word counting threads (0: all cores)")->check(int_in(0, 4096));
    cmd->callback([o] {
      std::vector<std::string> texts;
      for (const auto& path : o->corpus) {
        if (o->jsonl) {
          auto t = read_inputs({path}, true);
          for (auto& s : t) texts.push_back(std::move(s));
        } else {
          std::string data = slurp(path);
          texts.push_back(o->brown ? detag_brown(data) : std::move(data));
        }
      }
      tok::TrainOptions opts;
      if (!o->special.empty()) opts.special_tokens = o->special;
      if (!o->pattern.empty()) opts.split_pattern = o->pattern;
      opts.min_frequency = o->min_frequency;
      opts.threads = o->threads;
      opts.bos_template = !o->no_bos;
      size_t bytes = 0;
      for (const auto& t : texts) bytes += t.size();
      auto st = tok::train_bpe(texts, o->vocab_size, o->out, opts);
      std::fprintf(stderr,
                   "dsmoe: trained byte-level BPE on %zu texts (%.1f MB, %lld words, %lld distinct): %lld merges, "
                   "vocabulary %d, %.2f s -> %s\n",
                   texts.size(), bytes / 1e6, (long long)st.words, (long long)st.unique_words, (long long)st.merges,
                   (int)st.vocab_size, st.seconds, o->out.c_str());
    });
  }
}

}  // namespace dsmoe::cli
