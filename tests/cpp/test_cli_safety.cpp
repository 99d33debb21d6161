// The commands around the engine do not hurt the person typing them: no output folder destroys what
// dsmoe did not write, model folders are complete (tokenizer files beside the weights), training data
// and inference agree on BOS/EOS, Ctrl-C during training keeps the work, every out-of-range value is
// refused with exit 2 naming the flag, and progress in a pipe is plain lines. Each case failed on
// the commands as they were before (the README's own `export` produced a folder that scored
// perplexity 96 068 instead of 57).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli_runner.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "train/data.h"

using namespace dsmoe;
using namespace dsmoe::test::cli;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Every file under DIR (hidden ones included) with its bytes.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) m[fs::relative(e.path(), dir).string()] = slurp(e.path().string());
  return m;
}

void write_text(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

// n short documents, one text file each, from a few fixed sentences (learnable in a few hundred
// steps by the tiny model, so that it can learn where a document ends).
std::vector<std::string> write_documents(const std::string& dir, int n) {
  static const char* kSentences[] = {"the cat sat on the mat.", "a dog ran in the park.", "the bird sang a song."};
  std::vector<std::string> files;
  for (int i = 0; i < n; ++i) {
    const std::string f = dir + "/doc" + std::to_string(i) + ".txt";
    write_text(f, kSentences[i % 3]);
    files.push_back(f);
  }
  return files;
}

// prepare --text over the documents with a byte-level BPE of 300 ids: a model that needs its tokenizer.
std::string prepare_bpe(const std::string& dir, int docs = 200) {
  std::vector<std::string> args = {"prepare", "--tokenizer", "bpe", "--vocab-size", "300", "--out", dir + "/data", "--text"};
  for (const auto& f : write_documents(dir + "/docs", docs)) args.push_back(f);
  Proc p = run_cli(args);
  EXPECT_TRUE(p.ok()) << p.describe();
  return dir + "/data";
}

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& more) {
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

}  // namespace

// ---------------------------------------------------------------- nothing destroyed

TEST(CliSafety, QuantizeIntoTheParentOfTheModelIsRefusedAndDestroysNothing) {
  const std::string dir = scratch("q_parent");
  const std::string data = make_dataset(dir + "/data");
  const std::string cfg = write_config(dir, "config.json");
  ASSERT_TRUE(run_cli(train_args(cfg, data, dir + "/models/m")).ok());
  write_text(dir + "/models/notes.txt", "my notes");
  const auto before = snapshot(dir + "/models");
  for (bool force : {false, true}) {
    auto args = std::vector<std::string>{"quantize", "--model", dir + "/models/m", "--out", dir + "/models", "--type", "q8"};
    if (force) args.push_back("--force");
    Proc p = run_cli(args);
    EXPECT_EQ(p.exit_code, 2) << p.describe();
    EXPECT_TRUE(contains(p.err, "contains the input")) << p.describe();
    EXPECT_EQ(snapshot(dir + "/models"), before) << "quantize --out PARENT changed the parent folder";
  }
}

TEST(CliSafety, ExportRefusesForeignFoldersAndReplacesItsOwnOnlyWithForce) {
  const std::string dir = scratch("export_out");
  const std::string data = make_dataset(dir + "/data");
  const std::string cfg = write_config(dir, "config.json");
  ASSERT_TRUE(run_cli(train_args(cfg, data, dir + "/run")).ok());
  // A folder of the user's: refused with or without --force, untouched.
  write_text(dir + "/mine/important.txt", "keep me");
  for (bool force : {false, true}) {
    auto args = std::vector<std::string>{"export", "--model", dir + "/run", "--out", dir + "/mine"};
    if (force) args.push_back("--force");
    Proc p = run_cli(args);
    EXPECT_EQ(p.exit_code, 2) << p.describe();
    EXPECT_TRUE(contains(p.err, "files dsmoe did not write")) << p.describe();
    EXPECT_EQ(slurp(dir + "/mine/important.txt"), "keep me");
    EXPECT_EQ(fs::directory_iterator(dir + "/mine")->path().filename(), "important.txt");
  }
  // A new folder, then the same again: refused without --force, replaced with it.
  const std::vector<std::string> exp = {"export", "--model", dir + "/run", "--out", dir + "/hf"};
  Proc first = run_cli(exp);
  ASSERT_TRUE(first.ok()) << first.describe();
  const auto exported = snapshot(dir + "/hf");
  Proc again = run_cli(exp);
  EXPECT_EQ(again.exit_code, 2) << again.describe();
  EXPECT_TRUE(contains(again.err, "--force")) << again.describe();
  EXPECT_EQ(snapshot(dir + "/hf"), exported);
  Proc forced = run_cli(with(exp, {"--force", "--dtype", "bf16"}));
  ASSERT_TRUE(forced.ok()) << forced.describe();
  EXPECT_NE(snapshot(dir + "/hf"), exported);
  EXPECT_TRUE(contains(slurp(dir + "/hf/config.json"), "bfloat16"));
  // Nothing left beside it (staging or moved-aside folders).
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".hf."), std::string::npos) << e.path();
}

TEST(CliSafety, TrainOutRefusesToOverwriteAndResumeNeedsACheckpoint) {
  const std::string dir = scratch("train_out");
  const std::string data = make_dataset(dir + "/data");
  const std::string cfg = write_config(dir, "config.json");
  const std::string run = dir + "/run";
  ASSERT_TRUE(run_cli(train_args(cfg, data, run)).ok());
  const std::string ckpt = slurp(run + "/checkpoint.safetensors");
  Proc again = run_cli(train_args(cfg, data, run));
  EXPECT_EQ(again.exit_code, 2) << again.describe();
  EXPECT_TRUE(contains(again.err, "--resume") && contains(again.err, "--force")) << again.describe();
  EXPECT_EQ(slurp(run + "/checkpoint.safetensors"), ckpt) << "a finished run was overwritten";
  Proc both = run_cli(with(train_args(cfg, data, run), {"--resume", "--force"}));
  EXPECT_EQ(both.exit_code, 2) << both.describe();
  // --resume where there is nothing to resume: an error, not a silent fresh start.
  Proc nothing = run_cli(with(train_args(cfg, data, dir + "/empty"), {"--resume"}));
  EXPECT_EQ(nothing.exit_code, 2) << nothing.describe();
  EXPECT_TRUE(contains(nothing.err, "nothing to resume")) << nothing.describe();
  EXPECT_FALSE(fs::exists(dir + "/empty/checkpoint.safetensors"));
  // A folder that is not a run: refused even with --force.
  write_text(dir + "/notes/a.txt", "x");
  Proc foreign = run_cli(with(train_args(cfg, data, dir + "/notes"), {"--force"}));
  EXPECT_EQ(foreign.exit_code, 2) << foreign.describe();
  EXPECT_EQ(slurp(dir + "/notes/a.txt"), "x");
  // --force starts over: the same seed gives the same checkpoint again; files of the user's stay.
  write_text(run + "/my_notes.txt", "mine");
  Proc forced = run_cli(with(train_args(cfg, data, run), {"--force"}));
  ASSERT_TRUE(forced.ok()) << forced.describe();
  EXPECT_EQ(slurp(run + "/checkpoint.safetensors"), ckpt);
  EXPECT_EQ(slurp(run + "/my_notes.txt"), "mine");
}

// ---------------------------------------------------------------- Ctrl-C keeps the work

TEST(CliSafety, SigintCheckpointsTheCurrentStepAndResumeEqualsAnUninterruptedRun) {
  const std::string dir = scratch("sigint");
  const std::string data = make_dataset(dir + "/data");
  // Long enough to be interrupted; no periodic checkpoint, so only the interrupt can save the steps.
  const std::string cfg = write_config(dir, "config.json", {{"training", {{"steps", 400}, {"checkpoint_interval", 0}}}});
  const std::string io = dsmoe::test::tmp_path("cli_sigint_io");
  const auto args = train_args(cfg, data, dir + "/split");
  pid_t pid = spawn(args, io + ".out", io + ".err");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {  // until a few steps are logged
    if (read_metrics(dir + "/split").size() >= 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_GE(read_metrics(dir + "/split").size(), 3u) << "training did not start";
  kill(pid, SIGINT);
  Proc p = finish(pid, quote_args(args), io + ".out", io + ".err", 60);
  ASSERT_FALSE(p.signaled) << p.describe();
  EXPECT_EQ(p.exit_code, 128 + SIGINT) << p.describe();
  EXPECT_TRUE(contains(p.err, "checkpoint saved") && contains(p.err, "--resume")) << p.describe();
  SafeTensorsFile part(dir + "/split/checkpoint.safetensors");
  const int64_t step = std::stoll(part.metadata().at("step"));
  EXPECT_GE(step, 3);
  EXPECT_LT(step, 400) << "the interrupt came after the end";
  Proc resumed = run_cli(with(args, {"--resume"}));
  ASSERT_TRUE(resumed.ok()) << resumed.describe();
  EXPECT_TRUE(contains(resumed.err, "at step " + std::to_string(step))) << resumed.describe();
  Proc full = run_cli(train_args(cfg, data, dir + "/full"));
  ASSERT_TRUE(full.ok()) << full.describe();
  SafeTensorsFile fa(dir + "/full/checkpoint.safetensors"), fb(dir + "/split/checkpoint.safetensors");
  ASSERT_EQ(fa.tensors().size(), fb.tensors().size());
  for (const auto& [name, t] : fa.tensors()) {
    ASSERT_TRUE(fb.has(name)) << name;
    EXPECT_TRUE(t.nbytes == fb.get(name).nbytes && std::memcmp(t.data, fb.get(name).data, t.nbytes) == 0)
        << "tensor '" << name << "' differs between the interrupted+resumed and the uninterrupted run";
  }
  const auto rows = read_metrics(dir + "/split");
  ASSERT_FALSE(rows.empty());
  EXPECT_EQ(rows.back()["step"].get<int64_t>(), 400);
}

// ---------------------------------------------------------------- complete model folders

TEST(CliSafety, ExportWritesTheTokenizerFilesAndScoresLikeTheRunFolder) {
  const std::string dir = scratch("export_tok");
  const std::string data = prepare_bpe(dir);
  const std::string cfg = write_config(dir, "config.json", {{"vocab_size", 300}});
  ASSERT_TRUE(run_cli(train_args(cfg, data, dir + "/run")).ok());
  Proc e = run_cli({"export", "--model", dir + "/run", "--out", dir + "/hf"});
  ASSERT_TRUE(e.ok()) << e.describe();
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"})
    EXPECT_TRUE(fs::exists(dir + "/hf/" + f)) << f << " missing from the export";
  const json tc = json::parse(slurp(dir + "/hf/tokenizer_config.json"));
  EXPECT_EQ(tc.value("bos_token", ""), "<|begin_of_text|>") << tc.dump();
  EXPECT_EQ(tc.value("eos_token", ""), "<|end_of_text|>") << tc.dump();
  EXPECT_TRUE(tc.contains("chat_template")) << tc.dump();
  const json gen = json::parse(slurp(dir + "/hf/generation_config.json"));
  EXPECT_EQ(gen["bos_token_id"], 0);
  EXPECT_EQ(gen["eos_token_id"], 1);
  write_text(dir + "/text.txt", "the cat sat on the mat. a dog ran in the park.");
  Proc a = run_cli({"score", "--model", dir + "/run", "--text-file", dir + "/text.txt", "--summary"});
  Proc b = run_cli({"score", "--model", dir + "/hf", "--text-file", dir + "/text.txt", "--summary"});
  ASSERT_TRUE(a.ok() && b.ok()) << a.describe() << b.describe();
  const double pa = json::parse(a.out)["perplexity"], pb = json::parse(b.out)["perplexity"];
  EXPECT_NEAR(pb, pa, 1e-6 * pa) << "the export reads text differently from its run folder";
  EXPECT_TRUE(contains(b.err, "tokenizer " + dir + "/hf/tokenizer.json")) << "which tokenizer was used is not said\n"
                                                                          << b.describe();
  // Without its tokenizer the folder is refused, naming it, instead of read as bytes.
  fs::copy(dir + "/hf", dir + "/bare", fs::copy_options::recursive);
  fs::remove(dir + "/bare/tokenizer.json");
  Proc c = run_cli({"score", "--model", dir + "/bare", "--text-file", dir + "/text.txt"});
  EXPECT_EQ(c.exit_code, 1) << c.describe();
  EXPECT_TRUE(contains(c.err, dir + "/bare has no tokenizer.json") && contains(c.err, "--tokenizer")) << c.describe();
  Proc g = run_cli({"generate", "--model", dir + "/bare", "--prompt", "the"});
  EXPECT_EQ(g.exit_code, 1) << g.describe();
  // Exporting such a folder needs --tokenizer; with it the export is complete again.
  Proc e2 = run_cli({"export", "--model", dir + "/bare", "--out", dir + "/hf2"});
  EXPECT_EQ(e2.exit_code, 1) << e2.describe();
  Proc e3 = run_cli({"export", "--model", dir + "/bare", "--out", dir + "/hf2", "--tokenizer", dir + "/hf/tokenizer.json"});
  ASSERT_TRUE(e3.ok()) << e3.describe();
  EXPECT_TRUE(fs::exists(dir + "/hf2/tokenizer.json"));
  // chat renders the folder's chat_template and, when the 64-token context fills, drops the oldest
  // turns instead of ending: every one of 12 messages gets a reply.
  std::string lines;
  for (int i = 0; i < 12; ++i) lines += "the cat sat on the mat number " + std::to_string(i) + "\n";
  Proc chat = run_cli({"chat", "--model", dir + "/hf", "--temperature", "0", "--max-new-tokens", "8"}, 120, lines);
  ASSERT_TRUE(chat.ok()) << chat.describe();
  EXPECT_TRUE(contains(chat.err, "chat format: chat_template from " + dir + "/hf/tokenizer_config.json")) << chat.describe();
  EXPECT_EQ(std::count(chat.out.begin(), chat.out.end(), '\n'), 12) << chat.describe();
  EXPECT_TRUE(contains(chat.err, "the oldest")) << chat.describe();
}

// ---------------------------------------------------------------- BOS/EOS agree

TEST(CliSafety, PreparedDocumentsAreBosTextEosAndATrainedModelEndsWithEos) {
  const std::string dir = scratch("bos_eos");
  const std::string data = prepare_bpe(dir);
  const TokenSplit tr = load_split(data, "train"), va = load_split(data, "val");
  EXPECT_EQ(tr.bos_id, 0);
  EXPECT_EQ(tr.eos_id, 1);
  ASSERT_FALSE(va.tokens.empty());
  auto count = [](const std::vector<int32_t>& v, int32_t id) { return std::count(v.begin(), v.end(), id); };
  // 200 documents, every 20th held out: 190 + 10, each BOS ... EOS.
  EXPECT_EQ(count(tr.tokens, 0), 190);
  EXPECT_EQ(count(tr.tokens, 1), 190);
  EXPECT_EQ(count(va.tokens, 0), 10);
  EXPECT_EQ(count(va.tokens, 1), 10);
  EXPECT_EQ(tr.tokens.front(), 0);
  EXPECT_EQ(tr.tokens.back(), 1);
  for (size_t i = 0; i + 1 < tr.tokens.size(); ++i)
    if (tr.tokens[i] == 1) EXPECT_EQ(tr.tokens[i + 1], 0) << "EOS at " << i << " not followed by the next BOS";
  const std::string cfg = write_config(dir, "config.json",
                                       {{"vocab_size", 300}, {"training", {{"steps", 150}, {"lr", 1e-2}, {"warmup_steps", 10}}}});
  Proc t = run_cli(train_args(cfg, data, dir + "/run"));
  ASSERT_TRUE(t.ok()) << t.describe();
  Proc g = run_cli({"generate", "--model", dir + "/run", "--prompt", "the cat", "--temperature", "0", "--max-new-tokens",
                    "40", "--json"});
  ASSERT_TRUE(g.ok()) << g.describe();
  const json j = json::parse(g.out);
  EXPECT_EQ(j["finish_reason"], "eos") << "the trained model never ended its text: " << j.dump();
}

TEST(CliSafety, PrepareWithTwoTextFilesHoldsOutTheirTails) {
  const std::string dir = scratch("two_texts");
  std::string a, b;
  for (int i = 0; i < 200; ++i) a += "line " + std::to_string(i) + " of the first file\n";
  for (int i = 0; i < 200; ++i) b += "line " + std::to_string(i) + " of the second file\n";
  write_text(dir + "/a.txt", a);
  write_text(dir + "/b.txt", b);
  Proc p = run_cli({"prepare", "--out", dir + "/data", "--text", dir + "/a.txt", dir + "/b.txt"});
  ASSERT_TRUE(p.ok()) << p.describe();
  EXPECT_TRUE(contains(p.err, "last 5%")) << p.describe();
  const TokenSplit va = load_split(dir + "/data", "val"), tr = load_split(dir + "/data", "train");
  EXPECT_GT(va.tokens.size(), (a.size() + b.size()) / 40) << "validation split nearly empty";
  EXPECT_EQ(va.tokens.size() + tr.tokens.size(), a.size() + b.size() + 4) << "bytes lost or duplicated at the cut";
}

// ---------------------------------------------------------------- every value checked

TEST(CliSafety, OutOfRangeValuesAreUsageErrorsNamingTheFlagAndRange) {
  const std::string dir = scratch("ranges");
  const std::string data = make_dataset(dir + "/data");
  const std::string cfg = write_config(dir, "config.json");
  ASSERT_TRUE(run_cli(train_args(cfg, data, dir + "/run")).ok());
  const std::string m = dir + "/run";
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {{"train", "--config", cfg, "--data", data, "--out", dir + "/r2", "--steps", "-5"}, "--steps: -5 is out of range [1, "},
      {{"generate", "--model", m, "--temperature", "nan"}, "--temperature: nan is not a finite number"},
      {{"generate", "--model", m, "--top-p", "1.5"}, "--top-p: 1.5 is out of range (0, 1]"},
      {{"generate", "--model", m, "--top-k", "-3"}, "--top-k: -3 is out of range [0, "},
      {{"generate", "--model", m, "--max-new-tokens", "9223372036854775807"}, "--max-new-tokens: 9223372036854775807 is out of range"},
      {{"generate", "--model", m, "--max-new-tokens", "99999999999999999999"}, "is out of range"},
      {{"prepare", "--out", dir + "/p", "--val-every", "0"}, "--val-every: 0 is out of range [2, "},
      {{"score", "--model", m, "--ids-jsonl", "x", "--ctx", "1"}, "--ctx: 1 is out of range [2, "},
      {{"export", "--model", m, "--out", dir + "/e", "--shard-size", "-1GB"}, "--shard-size '-1GB' is out of range"},
      {{"eval", "--model", m, "--data", data, "--batches", "0"}, "--batches: 0 is out of range [1, "},
      {{"train", "--config", cfg, "--data", data, "--out", dir + "/r3", "--stpes", "3"}, "did you mean '--steps'?"},
      {{"trian"}, "did you mean 'train'?"},
      {{"experiment", "--out", dir + "/x", "--shard", "2/2"}, "--shard: expected I/N with 0 <= I < N <= 64, got '2/2'"},
      {{"experiment", "--out", dir + "/x", "--shard", "1/2x"}, "--shard: expected I/N"},
      {{"experiment", "--out", dir + "/x", "--shard", "0/2", "--report-only"}, "cannot go with --report-only"},
  };
  for (const auto& c : cases) {
    Proc p = run_cli(c.args);
    EXPECT_EQ(p.exit_code, 2) << p.describe();
    EXPECT_TRUE(contains(p.err, c.expect)) << "expected '" << c.expect << "'\n" << p.describe();
  }
  EXPECT_FALSE(fs::exists(dir + "/r2"));
  EXPECT_FALSE(fs::exists(dir + "/p"));
  EXPECT_FALSE(fs::exists(dir + "/x"));
  // Nothing to score is an error, not perplexity 1.
  write_text(dir + "/empty.jsonl", "\n");
  Proc e = run_cli({"score", "--model", m, "--ids-jsonl", dir + "/empty.jsonl"});
  EXPECT_EQ(e.exit_code, 1) << e.describe();
  EXPECT_TRUE(contains(e.err, "no token to score")) << e.describe();
}

// --report-only redraws OUT/results.json; a --suite given with it must be the suite of those results
// (it used to be ignored: a mistyped or other suite redrew the report without a word).
TEST(CliSafety, ReportOnlyRefusesASuiteThatIsNotTheResultsSuite) {
  const std::string dir = scratch("report_only_suite");
  const std::string suite = std::string(DSMOE_SOURCE_DIR) + "/configs/paper/suite.json";
  write_text(dir + "/out/results.json", R"({"suite": "another suite", "suite_file": "other.json", "runs": []})");
  Proc missing = run_cli({"experiment", "--suite", dir + "/nope.json", "--out", dir + "/out", "--report-only"});
  EXPECT_EQ(missing.exit_code, 1) << missing.describe();
  EXPECT_TRUE(contains(missing.err, dir + "/nope.json")) << missing.describe();
  Proc other = run_cli({"experiment", "--suite", suite, "--out", dir + "/out", "--report-only"});
  EXPECT_EQ(other.exit_code, 1) << other.describe();
  EXPECT_TRUE(contains(other.err, "is the results of suite \"another suite\" (other.json), not of --suite"))
      << other.describe();
  write_text(dir + "/out/results.json", "[1, 2]");
  Proc array = run_cli({"experiment", "--out", dir + "/out", "--report-only"});
  EXPECT_EQ(array.exit_code, 1) << array.describe();
  EXPECT_TRUE(contains(array.err, "not a results file: not a JSON object")) << array.describe();
  EXPECT_FALSE(fs::exists(dir + "/out/report.md"));
}

TEST(CliSafety, HelpVersionAndTheCommandList) {
  Proc bare = run_cli({});
  EXPECT_EQ(bare.exit_code, 2) << bare.describe();
  Proc help = run_cli({"help"});
  EXPECT_TRUE(help.ok()) << help.describe();
  for (const char* c : {"prepare", "train", "eval", "generate", "chat", "score", "export", "quantize", "experiment"}) {
    EXPECT_TRUE(contains(bare.out, std::string("  ") + c + " ")) << c << " missing from the list\n" << bare.out;
    EXPECT_TRUE(contains(help.out, std::string("  ") + c + " ")) << c << " missing from the list\n" << help.out;
  }
  Proc one = run_cli({"help", "train"});
  EXPECT_TRUE(one.ok() && contains(one.out, "--resume")) << one.describe();
  Proc v = run_cli({"--version"});
  EXPECT_TRUE(v.ok() && contains(v.out, "dsmoe 0.")) << v.describe();
}

// ---------------------------------------------------------------- progress

TEST(CliSafety, ProgressInAPipeIsPlainLinesAndTheSummaryIsTheRunAverage) {
  const std::string dir = scratch("progress");
  const std::string data = make_dataset(dir + "/data");
  const std::string cfg = write_config(dir, "config.json", {{"training", {{"steps", 12}, {"log_interval", 3}}}});
  Proc t = run_cli({"train", "--config", cfg, "--data", data, "--out", dir + "/run", "--sample-tokens", "0"});
  ASSERT_TRUE(t.ok()) << t.describe();
  EXPECT_EQ(t.err.find('\r'), std::string::npos) << "carriage returns in piped progress:\n" << t.err;
  for (const char* s : {"step 3/12", "step 6/12", "step 9/12", "step 12/12"})
    EXPECT_TRUE(contains(t.err, s)) << s << "\n" << t.err;
  EXPECT_TRUE(contains(t.out, "tok/s average over 12 steps") && contains(t.out, "MFU")) << t.describe();
  Proc e = run_cli({"eval", "--model", dir + "/run", "--data", data, "--batches", "2"});
  ASSERT_TRUE(e.ok()) << e.describe();
  EXPECT_TRUE(contains(e.err, "eval 2/2 batches")) << e.describe();
  EXPECT_EQ(e.err.find('\r'), std::string::npos) << e.err;
}

// A model whose vocab_size exceeds its data's tokenizer trains (ids past the tokenizer never occur)
// and the sample after training, which could draw ids no text exists for, is skipped with a note:
// it failed the finished command with "token id N is not a byte" (exit 1).
TEST(CliSafety, TheSampleAfterTrainingIsSkippedWhenTheModelsVocabularyIsLargerThanTheTokenizers) {
  const std::string dir = scratch("sample_vocab");
  const std::string data = make_dataset(dir + "/data");  // byte-level ids, vocab 256
  const std::string cfg = write_config(dir, "config.json", {{"vocab_size", 4096}, {"training", {{"steps", 3}}}});
  Proc t = run_cli({"train", "--config", cfg, "--data", data, "--out", dir + "/run", "--sample-tokens", "200"});
  ASSERT_TRUE(t.ok()) << t.describe();
  EXPECT_TRUE(contains(t.err, "no sample: the model's vocab_size 4096 is larger than the data's tokenizer")) << t.describe();
  EXPECT_FALSE(contains(t.out, "sample>")) << t.describe();
  EXPECT_TRUE(fs::exists(dir + "/run/checkpoint.safetensors"));
}

// ---------------------------------------------------------------- fine-tuning

TEST(CliSafety, InitFromStartsFromTheFoldersWeightsAndRefusesModelChanges) {
  const std::string dir = scratch("init_from");
  const std::string data = make_dataset(dir + "/data");
  const std::string cfg = write_config(dir, "config.json");
  ASSERT_TRUE(run_cli(train_args(cfg, data, dir + "/base")).ok());
  ASSERT_TRUE(run_cli({"export", "--model", dir + "/base", "--out", dir + "/hf"}).ok());
  // Training keys only; a learning rate so small that the weights stay the source's to ~1e-9.
  const std::string tune = dir + "/tune.json";
  write_text(tune, json{{"training", {{"lr", 1e-9}, {"min_lr", 0}, {"steps", 2}, {"warmup_steps", 1}, {"batch_size", 2},
                                      {"seq_len", 32}, {"eval_batches", 1}, {"weight_decay", 0}}}}
                       .dump());
  Proc t = run_cli({"train", "--config", tune, "--data", data, "--out", dir + "/ft", "--init-from", dir + "/hf", "--quiet",
                    "--sample-tokens", "0"});
  ASSERT_TRUE(t.ok()) << t.describe();
  SafeTensorsFile a(dir + "/base/checkpoint.safetensors"), b(dir + "/ft/checkpoint.safetensors");
  const auto& wa = a.get("model.embed_tokens.weight");
  const auto wb = b.read_f32("model.embed_tokens.weight");
  const auto wsrc = a.read_f32("model.embed_tokens.weight");
  ASSERT_EQ(wb.size(), wsrc.size()) << wa.nbytes;
  double worst = 0;
  for (size_t i = 0; i < wb.size(); ++i) worst = std::max(worst, (double)std::fabs(wb[i] - wsrc[i]));
  EXPECT_LT(worst, 1e-6) << "the fine-tuned run did not start from --init-from's weights";
  // A model key that differs from the folder's would be silently ignored: refused.
  write_text(dir + "/bad.json", json{{"hidden_size", 64}, {"training", {{"steps", 2}, {"warmup_steps", 1}}}}.dump());
  Proc bad = run_cli({"train", "--config", dir + "/bad.json", "--data", data, "--out", dir + "/ft2", "--init-from",
                      dir + "/hf", "--quiet"});
  EXPECT_EQ(bad.exit_code, 2) << bad.describe();
  EXPECT_TRUE(contains(bad.err, "'hidden_size' is 64")) << bad.describe();
}

// ---------------------------------------------------------------- --no-verify

// A finite change to one weight byte (the kind no format check sees): every command that loads the
// run folder refuses it naming the file and the tensor; with --no-verify each loads it, says so on
// stderr, and still checks the rest (a NaN planted beside the change is refused).
TEST(CliSafety, NoVerifySkipsOnlyTheChecksumsOnEveryCommandThatLoadsWeights) {
  const std::string dir = scratch("no_verify");
  const std::string data = make_dataset(dir + "/data");
  const std::string cfg = write_config(dir, "config.json");
  const std::string run = dir + "/run";
  ASSERT_TRUE(run_cli(train_args(cfg, data, run)).ok());
  const std::string file = run + "/checkpoint.safetensors";
  const std::string tensor = "model.layers.1.mlp.experts.3.up_proj.weight";
  test::flip_tensor_byte(file, tensor);
  write_text(dir + "/ids.jsonl", "[1, 2, 3, 4]\n");
  write_text(dir + "/tune.json", json{{"training", {{"steps", 2}, {"warmup_steps", 1}, {"batch_size", 2}, {"seq_len", 32},
                                                    {"eval_batches", 1}}}}.dump());
  const std::vector<std::pair<std::vector<std::string>, std::string>> commands = {
      {{"eval", "--model", run, "--data", data, "--batches", "1"}, ""},
      {{"generate", "--model", run, "--prompt-ids", "1,2,3", "--max-new-tokens", "2"}, ""},
      {{"score", "--model", run, "--ids-jsonl", dir + "/ids.jsonl", "--summary"}, ""},
      {{"chat", "--model", run, "--max-new-tokens", "2"}, "hello\n"},
      {{"export", "--model", run, "--out", dir + "/hf"}, ""},
      {{"quantize", "--model", run, "--out", dir + "/q8", "--type", "q8"}, ""},
      // --force: the refused attempt leaves its marked --out behind.
      {{"train", "--config", dir + "/tune.json", "--data", data, "--out", dir + "/ft", "--init-from", run, "--quiet",
        "--sample-tokens", "0", "--force"},
       ""},
      // Last: resuming the finished run may write its checkpoint again (with new checksums).
      {{"train", "--config", cfg, "--data", data, "--out", run, "--quiet", "--resume", "--sample-tokens", "20"}, ""},
  };
  // serve: refused at load; with --no-verify it loads and listens.
  const std::vector<std::string> serve = {"serve", "--model", run, "--host", "127.0.0.1", "--port", "0"};
  Proc serve_refused = run_cli(serve, 60);
  EXPECT_EQ(serve_refused.exit_code, 1) << serve_refused.describe();
  EXPECT_TRUE(contains(serve_refused.err, "tensor '" + tensor + "' fails its checksum")) << serve_refused.describe();
  const std::string out = dir + "/serve.out", err = dir + "/serve.err";
  const pid_t pid = spawn(with(serve, {"--no-verify"}), out, err);
  const auto t0 = std::chrono::steady_clock::now();
  while (!contains(slurp(err), "listening on") && waitpid(pid, nullptr, WNOHANG) == 0 &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, SIGTERM);
  Proc served = finish(pid, quote_args(serve) + " --no-verify", out, err, 30);
  EXPECT_TRUE(contains(served.err, "listening on") && contains(served.err, "--no-verify")) << served.describe();
  for (const auto& [args, stdin_text] : commands) {
    Proc refused = run_cli(args, 120, stdin_text);
    EXPECT_EQ(refused.exit_code, 1) << refused.describe();
    EXPECT_TRUE(contains(refused.err, file) && contains(refused.err, "tensor '" + tensor + "' fails its checksum"))
        << refused.describe();
    Proc loaded = run_cli(with(args, {"--no-verify"}), 120, stdin_text);
    EXPECT_TRUE(loaded.ok()) << loaded.describe();
    EXPECT_TRUE(contains(loaded.err, "--no-verify: the tensor checksums of")) << loaded.describe();
  }
  // Everything but the checksum is still checked: a NaN in a weight is refused with --no-verify too.
  {
    std::fstream f(file, std::ios::binary | std::ios::in | std::ios::out);
    uint64_t hlen = 0;
    f.read((char*)&hlen, 8);
    std::string header(hlen, '\0');
    f.read(header.data(), (std::streamsize)hlen);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    f.seekp(8 + (std::streamoff)hlen + json::parse(header)["model.norm.weight"]["data_offsets"][0].get<std::streamoff>());
    f.write((const char*)&nan, 4);
  }
  Proc nan = run_cli({"eval", "--model", run, "--data", data, "--batches", "1", "--no-verify"});
  EXPECT_EQ(nan.exit_code, 1) << nan.describe();
  EXPECT_TRUE(contains(nan.err, "'model.norm.weight' holds a non-finite value")) << nan.describe();
}
