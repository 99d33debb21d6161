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
#include "infer/chat_format.h"
#include "infer/chat_session.h"
#include "infer/compute_mode.h"
#include "infer/engine.h"
#include "infer/gguf_checkpoint.h"
#include "infer/hf_checkpoint.h"
#include "infer/infer_weights.h"
#include "infer/sampling.h"
#include "infer/model_files.h"
#include "infer/parallel_inference.h"
#include "dist/mpi_communicator.h"
#include "infer/text_codec.h"
#include "infer/text_stream.h"
#include "io/output_dir.h"
#include "cli/options.h"
#include "core/progress.h"
#include "io/safetensors.h"
#include "io/token_ids.h"
#include "tokenizer/tokenizer.h"

namespace dsmoe::cli {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

int64_t parse_size(const std::string& s) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (...) {
    usage_error("--shard-size '{}': expected a size like 2GB, 500MB or a byte count", s);
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
  else usage_error("--shard-size '{}': unknown unit '{}' (B, KB, MB, GB, KiB, MiB, GiB)", s, unit);
  if (!std::isfinite(v) || v <= 0 || v * mul > 1e15)
    usage_error("--shard-size '{}' is out of range (more than 0 bytes, at most 1PB)", s);
  return (int64_t)(v * mul);
}

struct SamplingArgs {
  SamplingOptions o;
  uint64_t seed = 0;
  std::vector<std::string> stops;
  bool ignore_eos = false;
};

void add_sampling_options(CLI::App* c, SamplingArgs& a) {
  c->add_option("--max-new-tokens", a.o.max_new_tokens, "tokens to generate at most (the context may end it sooner)")
      ->check(int_in(0, kMaxTokens))
      ->capture_default_str();
  c->add_option("--temperature", a.o.temperature, "0 = greedy")->check(real_in(0, 100))->capture_default_str();
  c->add_option("--top-k", a.o.top_k, "sample among the k most likely tokens (0 = off)")
      ->check(int_in(0, kMaxTokens))
      ->capture_default_str();
  c->add_option("--top-p", a.o.top_p, "nucleus sampling mass (1 = off)")->check(real_in(0, 1, true))->capture_default_str();
  c->add_option("--seed", a.seed, "sampling seed (each prompt gets its own generator with this seed)")->capture_default_str();
  c->add_option("--stop", a.stops, "stop when the generated text contains this string (repeatable)");
  c->add_flag("--ignore-eos", a.ignore_eos, "do not stop at the end-of-sequence token");
}

// A TensorProgress that draws a progress line ("load 120/347 tensors"), made on the first call
// (when the total is known).
struct TensorProgressLine {
  std::string label;
  std::optional<Progress> line;
  TensorProgress callback() {
    return [this](int64_t done, int64_t total) {
      if (!line) line.emplace(label, total, "tensors");
      line->update(done);
      if (done == total) line->finish();
    };
  }
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// dtype: "auto" (the folder's own storage: q8/q4 for a quantized folder, bf16 for a BF16
// checkpoint, else f32) or f32 | bf16 | q8 | q4 (converted while loading). compute: --compute
// (infer/compute_mode.h), said on stderr with the storage. Under mpirun, this rank's part of the
// model (infer/parallel_inference.h), after every rank has been checked to run the same model,
// settings and inputs; only rank 0 speaks.
ParallelInferenceModel load_for_inference(Communicator& world, const std::string& dir, const std::string& dtype,
                                          const std::string& compute, bool no_verify, const ParallelArgs& par,
                                          const std::string& settings = "",
                                          const std::vector<std::string>& inputs = {}) {
  const double t0 = now_s();
  const bool root = world.rank() == 0;
  std::optional<ops::WType> type;
  if (dtype != "auto") type = ops::parse_wtype(dtype, "--dtype (auto, f32, bf16, q8 or q4)");
  if (world.size() > 1)
    check_same_on_all_ranks(world,
                            inference_fingerprint(dir, fmt::format("dtype {}\ncompute {}\nep {}\n{}", dtype, compute,
                                                                   par.ep, settings),
                                                  inputs),
                            "model, settings and input");
  TensorProgressLine progress{"load"};
  const int64_t ep = checked_expert_parallel(inference_model_config(dir), world.size(), par.ep);
  const Checksums checksums = root ? checksums_of(no_verify, dir) : no_verify ? Checksums::Skip : Checksums::Verify;
  ParallelInferenceModel pm = load_parallel_inference_model(world, dir, ep, type,
                                                            root ? progress.callback() : TensorProgress{}, checksums);
  InferenceModel& im = pm.model;
  const std::string note = apply_compute(*im.weights, compute).note;
  // Each rank's memory after loading (what expert parallelism divides), said by rank 0.
  const MemoryUse mem = memory_use();
  const int64_t mine[2] = {mem.rss, mem.peak_rss};
  std::vector<int64_t> all((size_t)(2 * world.size()));
  world.all_gather(mine, all.data(), 2);
  if (!root) return pm;
  std::string mem_note;
  for (int r = 0; r < world.size(); ++r)
    mem_note += fmt::format("{}rank {} {:.1f} MB (peak {:.1f} MB)", r ? ", " : "", r, all[(size_t)(2 * r)] / 1e6,
                            all[(size_t)(2 * r + 1)] / 1e6);
  // Always said: which weights (and, by the caller, which tokenizer) produced the output.
  std::fprintf(stderr,
                 "dsmoe: loaded %s: %lld tensors from %lld file(s) (%lld F32, %lld BF16, %lld F16, %lld quantized), %.2f GB on "
                 "disk -> %.2f GB %s weights, %.2f s\n",
                 dir.c_str(), (long long)im.report.tensors, (long long)im.report.files, (long long)im.report.f32,
                 (long long)im.report.bf16, (long long)im.report.f16, (long long)im.report.quantized,
                 im.report.bytes_read / 1e9, im.weights->bytes() / 1e9, ops::wtype_name(im.weights->type()),
                 now_s() - t0);
  std::fprintf(stderr, "dsmoe: resident memory after loading: %s\n", mem_note.c_str());
  if (world.size() > 1) {
    const ExpertShard& sh = pm.layout.shard;
    std::fprintf(stderr, "dsmoe: %d processes: expert-parallel %lld x data-parallel %lld%s\n", world.size(),
                 (long long)pm.layout.expert_parallel(), (long long)pm.layout.groups.data_parallel(),
                 sh.all() ? "" : fmt::format(" (rank 0 holds routed experts [{}, {}))", sh.first, sh.first + sh.count).c_str());
  }
  std::fprintf(stderr, "dsmoe: compute: %s\n", note.c_str());
  return pm;
}

// ---------------------------------------------------------------- generate

struct GenerateArgs {
  std::string dir, tokenizer, dtype = "auto", compute = "auto", kv_cache = "f32";
  ParallelArgs par;
  std::vector<std::string> prompts, prompt_ids;
  std::string prompts_file;
  bool json_out = false, verbose = false, no_special = false, no_verify = false;
  SamplingArgs s;
};

void cmd_generate(const GenerateArgs& a) {
  apply_comm_timeout(a.par);
  const std::unique_ptr<Communicator> world = world_communicator();
  const bool root = world->rank() == 0;
  std::vector<std::string> inputs;
  if (!a.prompts_file.empty()) inputs.push_back(a.prompts_file);
  std::string settings = fmt::format("tokenizer {}\nmax_new_tokens {}\ntemperature {}\ntop_k {}\ntop_p {}\nseed {}\n"
                                     "ignore_eos {}\nno_special {}",
                                     a.tokenizer, a.s.o.max_new_tokens, a.s.o.temperature, a.s.o.top_k, a.s.o.top_p,
                                     a.s.seed, a.s.ignore_eos, a.no_special);
  for (const auto& p : a.prompts) settings += "\nprompt " + p;
  for (const auto& p : a.prompt_ids) settings += "\nprompt ids " + p;
  for (const auto& p : a.s.stops) settings += "\nstop " + p;
  ParallelInferenceModel pm = load_for_inference(*world, a.dir, a.dtype, a.compute, a.no_verify, a.par, settings, inputs);
  InferenceModel& lm = pm.model;
  const ModelConfig& m = lm.config.model;
  const TextCodec io = TextCodec::for_model(a.dir, a.tokenizer, m);
  if (root) std::fprintf(stderr, "dsmoe: text: %s\n", io.describe().c_str());
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
    prompts.push_back(parse_id_list(p, "--prompt-ids", m.vocab_size));
    prompt_text.push_back(io.decode(prompts.back()));
  }
  if (prompts.empty()) {  // the historical default
    prompts.push_back(io.encode("The ", !a.no_special));
    prompt_text.push_back("The ");
  }
  SamplingOptions o = a.s.o;
  o.eos_token = a.s.ignore_eos ? -1 : io.eos_id();
  const std::unique_ptr<InferenceEngine> engine = pm.engine(parse_kv_type(a.kv_cache, "--kv-cache"));
  InferenceEngine& eng = *engine;
  int64_t cache_tokens = 0;  // generate_batch's caches: prompt + max_new_tokens each, at most max_position_embeddings
  for (const auto& p : prompts)
    cache_tokens += std::min<int64_t>(m.max_position_embeddings, (int64_t)p.size() + o.max_new_tokens);
  if (root) std::fprintf(stderr, "dsmoe: KV cache: %s\n", kv_cache_note(m, eng.kv_type(), cache_tokens).c_str());
  // Prompt 0 runs on rank 0 (generate_parallel), so a single prompt streams from there.
  const bool stream = !a.json_out && prompts.size() == 1 && root;
  std::vector<TextStream> streams;
  for (size_t i = 0; i < prompts.size(); ++i) streams.emplace_back(io, a.s.stops);
  if (stream) {
    std::printf("%s", prompt_text[0].c_str());
    std::fflush(stdout);
  }
  const double t0 = now_s();
  int64_t produced = 0;
  GenerationStats gs;
  auto res = generate_parallel(eng, prompts, o, a.s.seed, world->size() > 1 ? world.get() : nullptr, [&](int64_t i, int32_t t) {
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
  if (!root) return;  // rank 0 prints for the job
  if (stream) {
    std::printf("%s\n", streams[0].flush().c_str());
  } else {
    for (size_t i = 0; i < prompts.size(); ++i) {
      if (i % (size_t)world->size() != 0) {  // produced by another rank: its stream here saw no token yet
        std::string piece;
        for (int32_t t : res[i].tokens) streams[i].push(t, piece);
      }
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
  std::string dir, tokenizer, system, dtype = "auto", compute = "auto", kv_cache = "f32";
  int64_t ctx = 0;
  bool no_verify = false;
  SamplingArgs s;
};

// One user message per line; the conversation is rendered with the model folder's chat template
// (tokenizer_config.json), else the DeepSeek format, and trimmed from the oldest turn when the
// context fills (infer/chat_session.h).
void cmd_chat(const ChatArgs& a) {
  refuse_under_mpirun("chat", "it reads the conversation from stdin");
  SingleProcessCommunicator alone;
  ParallelInferenceModel pm = load_for_inference(alone, a.dir, a.dtype, a.compute, a.no_verify, ParallelArgs{});
  InferenceModel& lm = pm.model;
  const ModelConfig& m = lm.config.model;
  const TextCodec io = TextCodec::for_model(a.dir, a.tokenizer, m);
  std::fprintf(stderr, "dsmoe: text: %s\n", io.describe().c_str());
  ChatFormat format = ChatFormat::load(a.dir);
  std::fprintf(stderr, "dsmoe: chat format: %s\n", format.describe().c_str());
  SamplingOptions o = a.s.o;
  o.eos_token = a.s.ignore_eos ? -1 : io.eos_id();
  InferenceEngine eng(*lm.weights, parse_kv_type(a.kv_cache, "--kv-cache"));
  const int64_t ctx = a.ctx > 0 ? a.ctx : m.max_position_embeddings;
  if (ctx > m.max_position_embeddings)
    usage_error("--ctx {} is larger than the model's max_position_embeddings ({})", ctx, m.max_position_embeddings);
  std::fprintf(stderr, "dsmoe: KV cache: %s\n", kv_cache_note(m, eng.kv_type(), ctx).c_str());
  ChatSession chat(eng, io, std::move(format), a.system, ctx);
  Rng rng(a.s.seed);
  const bool tty = isatty(0);
  std::string line;
  while (true) {
    if (tty) {
      std::fprintf(stderr, "User: ");
      std::fflush(stderr);
    }
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    if (tty) std::fprintf(stderr, "Assistant:");
    ChatSession::Turn t;
    try {
      t = chat.reply(line, o, rng, a.s.stops, [](const std::string& piece) {
        std::printf("%s", piece.c_str());
        std::fflush(stdout);
      });
    } catch (const Error& e) {  // a message too long for the context: say so, keep the conversation
      std::printf("\n");
      std::fprintf(stderr, "dsmoe: %s\n", e.what());
      continue;
    }
    std::printf("\n");
    std::fflush(stdout);
    if (t.dropped_messages > 0)
      std::fprintf(stderr, "dsmoe: the conversation filled the context (%lld tokens): the oldest %lld message%s "
                           "left it\n",
                   (long long)ctx, (long long)t.dropped_messages, t.dropped_messages == 1 ? "" : "s");
  }
}

// ---------------------------------------------------------------- score

struct ScoreArgs {
  std::string dir, tokenizer, text_file, ids_jsonl, dtype = "auto", compute = "auto", kv_cache = "f32";
  ParallelArgs par;
  int64_t ctx = 0;
  bool summary = false, no_special = false, no_verify = false;
};

void cmd_score(const ScoreArgs& a) {
  if (a.text_file.empty() == a.ids_jsonl.empty()) usage_error("score: give exactly one of --text-file or --ids-jsonl");
  apply_comm_timeout(a.par);
  const std::unique_ptr<Communicator> world = world_communicator();
  const bool root = world->rank() == 0;
  ParallelInferenceModel pm = load_for_inference(
      *world, a.dir, a.dtype, a.compute, a.no_verify, a.par,
      fmt::format("tokenizer {}\nctx {}\nno_special {}", a.tokenizer, a.ctx, a.no_special),
      {a.text_file.empty() ? a.ids_jsonl : a.text_file});
  InferenceModel& lm = pm.model;
  const ModelConfig& m = lm.config.model;
  if (a.ctx > m.max_position_embeddings)
    usage_error("--ctx {} is larger than the model's max_position_embeddings ({})", a.ctx, m.max_position_embeddings);
  std::vector<std::vector<int32_t>> seqs;
  if (!a.text_file.empty()) {
    const TextCodec io = TextCodec::for_model(a.dir, a.tokenizer, m);
    if (root) std::fprintf(stderr, "dsmoe: text: %s\n", io.describe().c_str());
    seqs.push_back(io.encode(read_text_file(a.text_file), !a.no_special));
  } else {
    seqs = parse_ids_jsonl(read_text_file(a.ids_jsonl), a.ids_jsonl, m.vocab_size);
  }
  int64_t to_score = 0;
  for (const auto& s : seqs) to_score += std::max<int64_t>(0, (int64_t)s.size() - 1);
  // A perplexity of 1.0 over nothing would read as a perfect model.
  if (to_score == 0)
    fail("score: {} has no token to score (a sequence needs at least 2 tokens: each is scored given those before it)",
         a.text_file.empty() ? a.ids_jsonl : a.text_file);
  const std::unique_ptr<InferenceEngine> engine = pm.engine(parse_kv_type(a.kv_cache, "--kv-cache"));
  InferenceEngine& eng = *engine;
  int64_t cache_tokens = 0;  // score_tokens' one cache per sequence: its window
  for (const auto& s : seqs)
    cache_tokens = std::max<int64_t>(cache_tokens, std::min<int64_t>(a.ctx > 0 ? a.ctx : m.max_position_embeddings,
                                                                      (int64_t)s.size()));
  if (root) std::fprintf(stderr, "dsmoe: KV cache: %s\n", kv_cache_note(m, eng.kv_type(), cache_tokens).c_str());
  json out_seqs = json::array();
  double total = 0;
  int64_t n = 0;
  const double t0 = now_s();
  ProgressOptions po;
  po.enabled = root;
  Progress progress("score", world->size() > 1 ? 0 : to_score, "tok", po);  // a rank's share is not known up front
  // Windows spread over the ranks (each its share; rank 0 shows its own progress), every rank
  // receiving every log-prob.
  const auto all = score_sequences(*engine, seqs, a.ctx, world->size() > 1 ? world.get() : nullptr,
                                   [&](int64_t done) { progress.update(done); });
  progress.finish();
  if (!root) return;  // rank 0 prints for the job
  for (size_t q = 0; q < seqs.size(); ++q) {
    const auto& s = seqs[q];
    const auto& lp = all[q];
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
  const double nll = -total / (double)n;
  json j = {{"tokens_scored", n}, {"mean_nll", nll}, {"perplexity", std::exp(nll)},
            {"dtype", ops::wtype_name(lm.weights->type())},
            {"compute", ops::compute_name(lm.weights->compute())}, {"kv_cache", kv_type_name(eng.kv_type())},
            {"ctx", a.ctx > 0 ? a.ctx : m.max_position_embeddings}, {"seconds", dt}, {"sequences", out_seqs}};
  std::printf("%s\n", j.dump().c_str());
}

// ---------------------------------------------------------------- export, quantize

// --model, --out, --force, --shard-size, --tokenizer of the commands that write a model folder.
struct ModelOutArgs {
  std::string dir, out, shard = "2GiB", tokenizer;
  bool force = false, no_verify = false;
  OutputRequest request(const std::string& command) const {
    OutputRequest r;
    r.dir = out;
    r.command = command;
    r.replaces = {"export", "quantize"};  // both write model folders; --force may replace either
    r.force = force;
    r.inputs = {dir};
    if (!tokenizer.empty() && tokenizer != "bytes") r.inputs.push_back(tokenizer);
    return r;
  }
};

void add_model_out_options(CLI::App* c, ModelOutArgs& a, const std::string& model_help) {
  c->add_option("--model", a.dir, model_help)->required();
  c->add_option("--out", a.out, "output folder: new or empty, or an earlier export/quantize output with --force "
                                "(written beside it, then swapped in)")
      ->required();
  c->add_flag("--force", a.force, "replace --out when it holds an earlier dsmoe export or quantize output");
  c->add_option("--shard-size", a.shard, "largest shard, e.g. 2GiB, 500MB")->capture_default_str();
  c->add_option("--tokenizer", a.tokenizer,
                "tokenizer.json to write beside the weights (default: the model folder's; needed when it has none)");
  add_no_verify_flag(c, a.no_verify);
}

// export --format gguf. --out FILE.gguf: one file, written atomically; an existing one is replaced
// only with --force and only when it is a GGUF file. Any other --out is a folder (the rules of
// io/output_dir.h) that receives model.gguf.
void export_gguf_command(const ModelOutArgs& a, GgmlType type) {
  const bool to_file = a.out.size() > 5 && a.out.compare(a.out.size() - 5, 5, ".gguf") == 0;
  TensorProgressLine read{"load"}, write{"write"};
  GgufExportOptions o;
  o.type = type;
  o.progress = write.callback();
  o.name = fs::path(a.dir).filename().string();
  std::optional<StagedOutput> staged;
  std::string file = a.out;
  if (to_file) {
    OutputRequest r = a.request("export");
    check_disjoint(a.out, r.inputs, "--out");
    if (fs::exists(a.out)) {
      if (!is_gguf_file(a.out))
        usage_error("--out {} exists and is not a GGUF file; choose another name (dsmoe never replaces other files)", a.out);
      if (!a.force) usage_error("--out {} exists; add --force to replace it", a.out);
    }
  } else {
    staged.emplace(a.request("export"));
    file = (fs::path(staged->path()) / "model.gguf").string();
  }
  LoadedModel lm = load_model_dir(a.dir, read.callback());
  check_gguf_exportable(lm.config.model);  // before reading the tokenizer: the cheaper refusal first
  const TextCodec text = TextCodec::for_model(a.dir, a.tokenizer, lm.config.model);
  GgufTokenizerSource src;
  if (!text.is_bytes()) {
    src.json = text.tokenizer_json();
    src.origin = text.spec();
    const std::vector<int32_t> specials = text.encode("", /*add_special=*/true);
    src.add_bos = text.bos_id() >= 0 && !specials.empty() && specials.front() == text.bos_id();
    src.add_eos = text.eos_id() >= 0 && !specials.empty() && specials.back() == text.eos_id();
    if (specials.size() > (size_t)src.add_bos + (size_t)src.add_eos)
      fail("{}: encoding adds {} special tokens to empty text, not only BOS/EOS: GGUF cannot express that",
           text.spec(), specials.size());
  }
  src.bos = text.bos_id();
  src.eos = text.eos_id();
  // The model's chat template (its folder's, or a GGUF's tokenizer.chat_template), else the one beside
  // --tokenizer's file, as llama.cpp's converter takes tokenizer_config.json's.
  ChatFormat::Source tmpl = ChatFormat::model_template(a.dir);
  if (tmpl.origin.empty() && text.is_file()) tmpl = ChatFormat::model_template(fs::path(text.spec()).parent_path().string());
  src.chat_template = tmpl.text;
  export_gguf(file, lm.config, *lm.model, src, o);
  if (staged) staged->commit();
  std::printf("exported %s -> %s (gguf, %s, %s, %s)\n", a.dir.c_str(),
              to_file ? a.out.c_str() : (fs::path(a.out) / "model.gguf").string().c_str(), ggml_type_name((uint32_t)type),
              text.describe().c_str(), tmpl.origin.empty() ? "no chat template" : ("chat template of " + tmpl.origin).c_str());
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
    add_compute_option(c, a->compute);
    add_kv_cache_option(c, a->kv_cache);
    add_no_verify_flag(c, a->no_verify);
    add_sampling_options(c, a->s);
    add_parallel_options(c, a->par,
                         "under mpirun: expert-parallel size (default: every rank, each holding 1/P of the routed "
                         "experts); prompts are spread over the ranks");
    c->callback([a] { cmd_generate(*a); });
  }
  // chat
  {
    auto* c = app.add_subcommand("chat", "chat on stdin/stdout with the model's chat template (one user message per line)");
    auto a = std::make_shared<ChatArgs>();
    a->s.o.temperature = 0.7;
    a->s.o.top_p = 0.95;
    a->s.o.max_new_tokens = 512;
    c->add_option("--model", a->dir, "model folder")->required();
    c->add_option("--tokenizer", a->tokenizer, "tokenizer.json, or \"bytes\" (default: the model folder's)");
    c->add_option("--system", a->system, "system prompt");
    c->add_option("--ctx", a->ctx, "context of the conversation in tokens (default max_position_embeddings); the "
                                   "oldest turns leave when it fills")
        ->check(int_in(2, kMaxTokens));
    c->add_option("--dtype", a->dtype, "weight storage: auto (the folder's own), f32, bf16, q8, q4")->capture_default_str();
    add_compute_option(c, a->compute);
    add_kv_cache_option(c, a->kv_cache);
    add_no_verify_flag(c, a->no_verify);
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
    c->add_option("--ctx", a->ctx, "window length (default max_position_embeddings); windows overlap by one token")
        ->check(int_in(2, kMaxTokens));
    c->add_flag("--summary", a->summary, "omit the per-token log-probabilities");
    c->add_option("--dtype", a->dtype, "weight storage: auto (the folder's own), f32, bf16, q8, q4")->capture_default_str();
    add_compute_option(c, a->compute);
    add_kv_cache_option(c, a->kv_cache);
    c->add_flag("--no-special-tokens", a->no_special, "do not add BOS to the text");
    add_no_verify_flag(c, a->no_verify);
    add_parallel_options(c, a->par,
                         "under mpirun: expert-parallel size (default: every rank, each holding 1/P of the routed "
                         "experts); the windows are spread over the ranks");
    c->callback([a] { cmd_score(*a); });
  }
  // quantize
  {
    auto* c = app.add_subcommand("quantize", "write a q8 / q4 weight-quantized copy of a model folder");
    auto a = std::make_shared<ModelOutArgs>();
    auto type = std::make_shared<std::string>();
    add_model_out_options(c, *a, "model folder: HF checkpoint, dsmoe run folder (or a quantized folder)");
    c->add_option("--type", *type, "q8 (int8, llama.cpp Q8_0-like) or q4 (4-bit, Q4_0-like); blocks of 32")
        ->required()
        ->check(CLI::IsMember({"q8", "q4"}));
    c->callback([=] {
      refuse_under_mpirun("quantize", "it writes one folder");
      const ops::WType t = ops::parse_wtype(*type, "--type (q8 or q4)");
      ExportOptions o;
      o.max_shard_bytes = parse_size(a->shard);
      TensorProgressLine write{"write"};
      o.progress = write.callback();
      StagedOutput out(a->request("quantize"));
      const double t0 = now_s();
      SingleProcessCommunicator alone;
      ParallelInferenceModel pm = load_for_inference(alone, a->dir, *type, "f32", a->no_verify, ParallelArgs{});
      InferenceModel& im = pm.model;
      // The text files come from the model folder (or --tokenizer): a folder without them could not be
      // used for text, so a model that needs a tokenizer and has none is refused here.
      const TextCodec text = TextCodec::for_model(a->dir, a->tokenizer, im.config.model);
      const int64_t n = write_quantized(out.path(), im.config, *im.weights, o);
      write_model_text_files(out.path(), text, im.config.model);
      out.commit();
      std::printf("quantized %s -> %s (%s, %.3f GB of weights, %lld shard%s, %s, %.1f s)\n", a->dir.c_str(),
                  a->out.c_str(), ops::wtype_name(t), im.weights->bytes() / 1e9, (long long)n, n == 1 ? "" : "s",
                  text.describe().c_str(), now_s() - t0);
    });
  }
  // export
  {
    auto* c = app.add_subcommand("export", "write a model as a Hugging Face checkpoint folder (with its tokenizer files) "
                                           "or as a llama.cpp GGUF file");
    auto a = std::make_shared<ModelOutArgs>();
    auto dtype = std::make_shared<std::string>("f32");
    auto format = std::make_shared<std::string>("hf");
    auto gtype = std::make_shared<std::string>("f32");
    add_model_out_options(c, *a, "dsmoe run folder (or HF checkpoint / GGUF file to re-shard / convert)");
    c->add_option("--format", *format, "hf (a checkpoint folder) or gguf (one file llama.cpp loads, architecture deepseek)")
        ->capture_default_str()
        ->check(CLI::IsMember({"hf", "gguf"}));
    auto* dtype_opt = c->add_option("--dtype", *dtype, "hf: f32 or bf16")->capture_default_str()->check(CLI::IsMember({"f32", "bf16"}));
    auto* type_opt = c->add_option("--type", *gtype, "gguf: f32, bf16, q8_0 or q4_0 (ggml's blocks, quantized from the fp32 weights)")
        ->capture_default_str()
        ->check(CLI::IsMember({"f32", "bf16", "q8_0", "q4_0"}));
    c->callback([=] {
      if (*format == "gguf") {
        if (dtype_opt->count() > 0) usage_error("export --format gguf: use --type (f32, bf16, q8_0, q4_0), not --dtype");
        const GgmlType t = *gtype == "bf16" ? GgmlType::BF16 : *gtype == "q8_0" ? GgmlType::Q8_0
                           : *gtype == "q4_0" ? GgmlType::Q4_0 : GgmlType::F32;
        export_gguf_command(*a, t);
        return;
      }
      if (type_opt->count() > 0) usage_error("export --type is for --format gguf; the HF format takes --dtype");
      ExportOptions o;
      o.dtype = *dtype == "bf16" ? DType::BF16 : DType::F32;
      o.max_shard_bytes = parse_size(a->shard);
      TensorProgressLine read{"load"}, write{"write"};
      o.progress = write.callback();
      StagedOutput out(a->request("export"));
      LoadedModel lm = load_model_dir(a->dir, read.callback(), checksums_of(a->no_verify, a->dir));
      // The text files come from the model folder (or --tokenizer): a folder without them could not be
      // used for text, so a model that needs a tokenizer and has none is refused here.
      const TextCodec text = TextCodec::for_model(a->dir, a->tokenizer, lm.config.model);
      const int64_t n = export_hf(out.path(), lm.config, *lm.model, o);
      write_model_text_files(out.path(), text, lm.config.model);
      out.commit();
      std::printf("exported %s -> %s (%s, %lld shard%s, %s)\n", a->dir.c_str(), a->out.c_str(), dtype->c_str(),
                  (long long)n, n == 1 ? "" : "s", text.describe().c_str());
    });
  }
}

}  // namespace dsmoe::cli
