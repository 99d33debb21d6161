// Tokenizer unit tests that need no reference library: error messages for malformed and unsupported
// tokenizer.json files, the regex dialect translation and Oniguruma's empty-match iteration, every
// split behaviour, the two BPE merge loops, lossy UTF-8, the trainer, round trips, and the CLI.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "test_tokenizer_util.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

using namespace dsmoe;
using namespace dsmoe::test::tok;
using dsmoe::tok::Tokenizer;

namespace {

// A minimal valid byte-level tokenizer.json; tests patch fields of it.
json base_json() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    std::string c;
    dsmoe::tok::utf8_append(c, dsmoe::tok::byte_to_char((unsigned char)b));
    vocab[c] = b;
  }
  vocab["he"] = 256;
  vocab["hel"] = 257;
  vocab["Ġw"] = 258;
  return json{{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", json::array({{{"id", 259},
                                             {"content", "<eos>"},
                                             {"single_word", false},
                                             {"lstrip", false},
                                             {"rstrip", false},
                                             {"normalized", false},
                                             {"special", true}}})},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
              {"post_processor", nullptr},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model",
               {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"h e", "he l", "Ġ w"})}}}};
}

std::string load_error(const json& j) {
  try {
    Tokenizer::from_json(j.dump(), "tok.json");
  } catch (const dsmoe::Error& e) {
    return e.what();
  }
  return "(no error)";
}

#define EXPECT_CONTAINS(hay, needle) EXPECT_NE(std::string(hay).find(needle), std::string::npos) << (hay)

}  // namespace

TEST(Tokenizer, LoadsMinimalAndEncodes) {
  auto t = Tokenizer::from_json(base_json().dump());
  EXPECT_EQ(t.vocab_size(), 260);
  std::vector<int32_t> ids = t.encode("hello world<eos>");
  // "hello" -> hel l o ; " world" -> Ġw o r l d ; <eos>
  std::vector<int32_t> want = {257, 'l', 'o', 258, 'o', 'r', 'l', 'd', 259};
  EXPECT_EQ(ids, want);
  EXPECT_EQ(t.decode(ids), "hello world<eos>");
  EXPECT_EQ(t.decode(ids, /*skip_special_tokens=*/true), "hello world");
  EXPECT_EQ(t.token_to_id("<eos>"), 259);
  EXPECT_EQ(t.token_to_id("hel"), 257);
  EXPECT_EQ(t.id_to_token(258), "Ġw");
  EXPECT_FALSE(t.token_to_id("nope").has_value());
  EXPECT_TRUE(t.is_special(259));
  EXPECT_FALSE(t.is_special(257));
}

TEST(Tokenizer, ErrorsNameTheComponentAndItsPath) {
  json j = base_json();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", json::array({{{"type", "ByteLevel"}}, {{"type", "Metaspace"}}})}};
  std::string e = load_error(j);
  EXPECT_CONTAINS(e, "tok.json");
  EXPECT_CONTAINS(e, "pre_tokenizer.pretokenizers[1].type");
  EXPECT_CONTAINS(e, "Metaspace");

  j = base_json();
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "BertNormalizer"}}})}};
  e = load_error(j);
  EXPECT_CONTAINS(e, "normalizer.normalizers[0].type");
  EXPECT_CONTAINS(e, "BertNormalizer");

  j = base_json();
  j["model"]["type"] = "WordPiece";
  e = load_error(j);
  EXPECT_CONTAINS(e, "model.type");
  EXPECT_CONTAINS(e, "WordPiece");

  j = base_json();
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_CONTAINS(load_error(j), "decoder.type");

  j = base_json();
  j["post_processor"] = {{"type", "Whatever"}};
  EXPECT_CONTAINS(load_error(j), "post_processor.type");

  j = base_json();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  e = load_error(j);
  EXPECT_CONTAINS(e, "pre_tokenizer.pattern.Regex");
  EXPECT_CONTAINS(e, "does not compile");

  j = base_json();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}};
  EXPECT_CONTAINS(load_error(j), "pre_tokenizer.behavior");
}

TEST(Tokenizer, ErrorsForMalformedFiles) {
  EXPECT_THROW(Tokenizer::from_json("{not json", "tok.json"), dsmoe::Error);
  try {
    Tokenizer::from_json("{not json", "tok.json");
  } catch (const dsmoe::Error& e) {
    EXPECT_CONTAINS(e.what(), "not valid JSON");
  }
  json j = base_json();
  j.erase("model");
  EXPECT_CONTAINS(load_error(j), "model: missing");

  j = base_json();
  j["model"].erase("vocab");
  EXPECT_CONTAINS(load_error(j), "model.vocab: missing");

  j = base_json();
  j["model"]["vocab"] = json::array();
  EXPECT_CONTAINS(load_error(j), "model.vocab");

  j = base_json();
  j["model"]["merges"].push_back("a b c");
  EXPECT_CONTAINS(load_error(j), "model.merges[3]");

  j = base_json();
  j["model"]["merges"].push_back(json::array({"x", "qq"}));
  std::string e = load_error(j);
  EXPECT_CONTAINS(e, "model.merges[3]");
  EXPECT_CONTAINS(e, "not in the vocabulary");

  j = base_json();
  j["model"]["dropout"] = 0.1;
  EXPECT_CONTAINS(load_error(j), "model.dropout");

  j = base_json();
  j["truncation"] = {{"max_length", 512}};
  EXPECT_CONTAINS(load_error(j), "truncation");

  j = base_json();
  j["added_tokens"][0]["lstrip"] = "yes";
  EXPECT_CONTAINS(load_error(j), "added_tokens[0].lstrip");

  EXPECT_THROW(Tokenizer::load("/nonexistent/tokenizer.json"), dsmoe::Error);
  auto t = Tokenizer::from_json(base_json().dump());
  EXPECT_THROW(t.encode(std::string("bad \xC3 utf8")), dsmoe::Error);
}

TEST(Tokenizer, MergesInBothFormatsAgree) {
  json a = base_json(), b = base_json();
  b["model"]["merges"] = json::array({json::array({"h", "e"}), json::array({"he", "l"}), json::array({"Ġ", "w"})});
  auto ta = Tokenizer::from_json(a.dump()), tb = Tokenizer::from_json(b.dump());
  for (const char* s : {"hello world", "he hel", " w w"}) EXPECT_EQ(ta.encode(s), tb.encode(s)) << s;
}

TEST(Tokenizer, RegexDialect) {
  using dsmoe::tok::onig_to_pcre2;
  EXPECT_EQ(onig_to_pcre2("a\\sb").find("\\s"), std::string::npos);  // \s spelt out (no U+180E)
  EXPECT_NE(onig_to_pcre2("[^\\s\\p{L}]").find("[^\\t"), std::string::npos);
  EXPECT_EQ(onig_to_pcre2("\\u4e00"), "\\x{4e00}");
  EXPECT_EQ(onig_to_pcre2("[]a]"), "[]a]");

  // Oniguruma's iterator: an empty match right after the previous match is skipped.
  dsmoe::tok::Regex re("a*", "test");
  std::vector<std::pair<size_t, size_t>> m;
  re.find_all("baac", m);
  std::vector<std::pair<size_t, size_t>> want = {{0, 0}, {1, 3}, {4, 4}};
  EXPECT_EQ(m, want);
  dsmoe::tok::Regex ws("\\s+", "test");
  ws.find_all("a\u180Eb c", m);  // U+180E is not White_Space
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].first, 5u);
}

TEST(Tokenizer, SplitBehaviors) {
  // HF's documented example: "the-final--countdown" split on '-'.
  using dsmoe::tok::detail::SplitBehavior;
  std::string s = "the-final--countdown";
  std::vector<std::pair<size_t, size_t>> m = {{3, 4}, {9, 10}, {10, 11}};
  auto run = [&](SplitBehavior b, bool invert) {
    std::vector<std::string_view> out;
    dsmoe::tok::detail::split_by_matches(s, m, b, invert, out);
    return std::vector<std::string>(out.begin(), out.end());
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(run(SplitBehavior::Removed, false), (V{"the", "final", "countdown"}));
  EXPECT_EQ(run(SplitBehavior::Isolated, false), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(run(SplitBehavior::MergedWithPrevious, false), (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(run(SplitBehavior::MergedWithNext, false), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(run(SplitBehavior::Contiguous, false), (V{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(run(SplitBehavior::Removed, true), (V{"-", "-", "-"}));
}

TEST(Tokenizer, Utf8Lossy) {
  using dsmoe::tok::utf8_lossy;
  const std::string R = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8_lossy("ok"), "ok");
  EXPECT_EQ(utf8_lossy("\xC3"), R);
  EXPECT_EQ(utf8_lossy("\xE2\x82"), R);            // a truncated sequence: one replacement
  EXPECT_EQ(utf8_lossy("\xF0\x80\x80"), R + R + R);  // F0 80 is ill-formed at its second byte
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), R + R + R);  // a surrogate
  EXPECT_EQ(utf8_lossy("a\xFF" "b"), "a" + R + "b");
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");
}

TEST(Tokenizer, MergeLoopsAgree) {
  // The scan loop (short words) and the heap loop (long words) must give HF's result alike.
  std::vector<std::string> texts;
  std::mt19937 rng(dsmoe::test::test_seed());
  for (int i = 0; i < 200; ++i) {
    std::string s;
    for (int k = 0; k < 200; ++k) s += "abcde fgh  ab ab aaa bbbb"[rng() % 25];
    texts.push_back(s);
  }
  json j = json::parse(dsmoe::tok::train_bpe_json(texts, 400, {}));
  dsmoe::tok::detail::BpeModel m;
  for (auto it = j["model"]["vocab"].begin(); it != j["model"]["vocab"].end(); ++it)
    m.vocab.emplace(it.key(), it.value().get<int32_t>());
  std::vector<std::pair<uint64_t, std::pair<uint32_t, int32_t>>> entries;
  uint32_t rank = 0;
  for (const auto& mg : j["model"]["merges"]) {
    int32_t a = m.vocab.at(mg[0].get<std::string>()), b = m.vocab.at(mg[1].get<std::string>());
    int32_t c = m.vocab.at(mg[0].get<std::string>() + mg[1].get<std::string>());
    entries.push_back({((uint64_t)(uint32_t)a << 32) | (uint32_t)b, {rank++, c}});
  }
  m.merges.build(entries);
  m.finish();
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int32_t> syms;
    int n = 2 + (int)(rng() % 120);
    for (int k = 0; k < n; ++k) syms.push_back(m.vocab.at(std::string(1, "abcdefgh"[rng() % 8])));
    std::vector<int32_t> a = syms, b = syms;
    m.merge_symbols(a, false);
    m.merge_symbols(b, true);
    ASSERT_EQ(a, b) << "trial " << trial;
  }
}

TEST(Tokenizer, TrainerBasics) {
  std::vector<std::string> texts = {"low lower lowest newer wider new newest\n", "the the the quick brown fox\r\n"};
  for (int i = 0; i < 50; ++i) texts.push_back("lower newest widest the fox <|end_of_text|> jumps 12345\n");
  dsmoe::tok::TrainStats st;
  std::string text = dsmoe::tok::train_bpe_json(texts, 280, {}, &st);
  auto t = Tokenizer::from_json(text, "trained");
  EXPECT_EQ(t.vocab_size(), 280);
  EXPECT_EQ(t.token_to_id("<|begin_of_text|>"), 0);
  EXPECT_EQ(t.token_to_id("<|end_of_text|>"), 1);
  EXPECT_EQ(st.vocab_size, 280);
  // The special token in the corpus was not learnt from; BOS comes with special tokens on.
  auto ids = t.encode("the fox<|end_of_text|>", true);
  EXPECT_EQ(ids.front(), 0);
  EXPECT_EQ(ids.back(), 1);
  EXPECT_EQ(t.decode(ids, true), "the fox");
  // Deterministic, whatever the number of threads.
  dsmoe::tok::TrainOptions o1, o2;
  o1.threads = 1;
  o2.threads = 2;
  EXPECT_EQ(dsmoe::tok::train_bpe_json(texts, 300, o1), dsmoe::tok::train_bpe_json(texts, 300, o2));
  // Too small a vocabulary is an error that says why.
  try {
    dsmoe::tok::train_bpe_json(texts, 100, {});
    ADD_FAILURE() << "no error";
  } catch (const dsmoe::Error& e) {
    EXPECT_CONTAINS(e.what(), "too small");
  }
}

TEST(Tokenizer, RoundTripsValidUtf8) {
  std::mt19937 rng(dsmoe::test::test_seed());
  std::vector<std::string> corpus;
  for (int i = 0; i < 20; ++i) corpus.push_back("Hello world, 12345 numbers; 中文テキスト and émojis 😀👍🏽!\r\n\t  x");
  auto t = Tokenizer::from_json(dsmoe::tok::train_bpe_json(corpus, 600, {}), "trained");
  std::vector<Tokenizer> toks = {t};
  if (std::filesystem::exists(deepseek_v3_json())) toks.push_back(Tokenizer::load(deepseek_v3_json()));
  for (int trial = 0; trial < 2000; ++trial) {
    std::string s;
    int n = (int)(rng() % 40);
    for (int k = 0; k < n; ++k) {
      char32_t c;
      switch (rng() % 5) {
        case 0: c = 0x20 + rng() % 0x5F; break;
        case 1: c = rng() % 0x20; break;
        case 2: c = 0x80 + rng() % 0x780; break;
        case 3: c = 0x800 + rng() % 0xF7FE; break;
        default: c = 0x10000 + rng() % 0x100000; break;
      }
      if (c >= 0xD800 && c <= 0xDFFF) c = 'x';
      dsmoe::tok::utf8_append(s, c);
    }
    if (rng() % 4 == 0) s += "<|end_of_text|>";
    for (const auto& tk : toks) ASSERT_EQ(tk.decode(tk.encode(s)), s) << json(s).dump();
  }
}

TEST(Tokenizer, CliTokenizeDetokenizeTrain) {
  std::string dir = dsmoe::test::tmp_path("tok_cli");
  std::filesystem::create_directories(dir);
  std::string corpus = dir + "/corpus.txt";
  std::string text;
  for (int i = 0; i < 200; ++i) text += "The quick brown fox jumps over the lazy dog. 0123456789\n";
  write_file(corpus, text);
  std::string out, bin = DSMOE_BINARY;
  ASSERT_EQ(sh(bin + " tokenizer train --vocab-size 300 --out " + q(dir + "/tok.json") + " " + q(corpus), &out), 0)
      << out;
  EXPECT_CONTAINS(out, "trained byte-level BPE");
  write_file(dir + "/in.jsonl", "\"line one\\nline two\"\n\"  spaces\\r\\n\"\n");
  ASSERT_EQ(sh(bin + " tokenize --tokenizer " + q(dir + "/tok.json") + " --jsonl " + q(dir + "/in.jsonl") + " > " +
                   q(dir + "/ids.jsonl"),
               &out),
            0)
      << out;
  auto ids = read_jsonl_ids(dir + "/ids.jsonl");
  ASSERT_EQ(ids.size(), 2u);
  ASSERT_EQ(sh(bin + " detokenize --tokenizer " + q(dir + "/tok.json") + " --jsonl " + q(dir + "/ids.jsonl") +
                   " > " + q(dir + "/back.jsonl"),
               &out),
            0)
      << out;
  EXPECT_EQ(read_jsonl_strings(dir + "/back.jsonl"), (std::vector<std::string>{"line one\nline two", "  spaces\r\n"}));
  ASSERT_EQ(sh("printf 'the fox\\n' | " + bin + " tokenize --tokenizer " + q(dir + "/tok.json") + " --tokens --special",
               &out),
            0);
  EXPECT_CONTAINS(out, "[\"<|begin_of_text|>\",");
  // A bad file: exit 1 and a message that names it.
  write_file(dir + "/bad.json", "{\"model\": {\"type\": \"Unigram\"}}");
  EXPECT_EQ(sh("echo x | " + bin + " tokenize --tokenizer " + q(dir + "/bad.json"), &out), 1);
  EXPECT_CONTAINS(out, "bad.json: model.type: unsupported model \"Unigram\"");
}
