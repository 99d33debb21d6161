// dsmoe serve: the OpenAI-compatible HTTP server over a model folder (src/serve). Loads the model,
// its tokenizer and chat format as generate/chat do, says on stderr what it loaded and, once it
// accepts connections, "dsmoe: listening on http://HOST:PORT". SIGINT / SIGTERM stop it: running
// requests end, the listener closes, and the command exits 0.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>

#include "cli/commands.h"
#include "cli/options.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "infer/chat_format.h"
#include "infer/compute_mode.h"
#include "infer/engine.h"
#include "infer/hf_checkpoint.h"
#include "infer/text_codec.h"
#include "serve/http_server.h"
#include "serve/scheduler.h"

namespace dsmoe::cli {

namespace {

struct ServeArgs {
  std::string dir, tokenizer, dtype = "auto", compute = "auto", kv_cache = "f32", host = "127.0.0.1", api_key, model_name;
  int64_t port = 8080, parallel = 4, ctx = 0, prefill_chunk = 128, queue = 64;
  bool no_verify = false;
};

// The model id clients send: --model-name, else the folder's name.
std::string model_id(const ServeArgs& a) {
  if (!a.model_name.empty()) return a.model_name;
  std::filesystem::path p = std::filesystem::path(a.dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

void cmd_serve(const ServeArgs& a) {
  // Every rank would load the whole model and bind its own port: requests would not be spread over
  // the ranks' experts, and all but one bind would fail.
  refuse_under_mpirun("serve", "one HTTP server over one whole model; expert-parallel serving is not built");
  // A client that closes its connection must not kill the server with SIGPIPE: the failed write
  // is how a stream notices it is gone.
  signal(SIGPIPE, SIG_IGN);
  InterruptGuard interrupt;
  std::optional<ops::WType> type;
  if (a.dtype != "auto") type = ops::parse_wtype(a.dtype, "--dtype (auto, f32, bf16, q8 or q4)");
  InferenceModel lm = load_inference_model(a.dir, type, {}, checksums_of(a.no_verify, a.dir));
  const ModelConfig& m = lm.config.model;
  std::fprintf(stderr, "dsmoe: loaded %s: %lld tensors, %.3f GB %s weights\n", a.dir.c_str(),
               (long long)lm.report.tensors, lm.weights->bytes() / 1e9, ops::wtype_name(lm.weights->type()));
  std::fprintf(stderr, "dsmoe: compute: %s\n", apply_compute(*lm.weights, a.compute).note.c_str());
  const TextCodec codec = TextCodec::for_model(a.dir, a.tokenizer, m);
  std::fprintf(stderr, "dsmoe: text: %s\n", codec.describe().c_str());
  const ChatFormat format = ChatFormat::load(a.dir);
  std::fprintf(stderr, "dsmoe: chat format: %s\n", format.describe().c_str());
  const int64_t ctx = a.ctx > 0 ? a.ctx : m.max_position_embeddings;
  if (ctx > m.max_position_embeddings)
    usage_error("--ctx {} is larger than the model's max_position_embeddings ({})", ctx, m.max_position_embeddings);
  InferenceEngine engine(*lm.weights, parse_kv_type(a.kv_cache, "--kv-cache"));
  serve::Scheduler sched(engine, codec, {a.parallel, ctx, a.prefill_chunk, a.queue});
  serve::HttpServer http(sched, codec, format, {a.host, (int)a.port, a.api_key, model_id(a)});
  const int port = http.bind();
  std::fprintf(stderr, "dsmoe: serving '%s': %lld slots of %lld tokens (KV cache: %s)\n", model_id(a).c_str(),
               (long long)a.parallel, (long long)ctx, kv_cache_note(m, engine.kv_type(), a.parallel * ctx).c_str());
  std::fprintf(stderr, "dsmoe: listening on http://%s:%d\n", a.host.c_str(), port);
  std::fflush(stderr);
  std::atomic<bool> done{false};
  // Signals only set a flag (core/interrupt.h); this thread turns it into a clean stop.
  std::thread watcher([&] {
    while (!done.load() && interrupt_requested() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    sched.stop();  // running and waiting requests end first, so their handlers return
    http.stop();
  });
  http.listen();
  done.store(true);
  watcher.join();
  if (const int sig = interrupt_requested()) std::fprintf(stderr, "dsmoe: stopped by signal %d\n", sig);
}

}  // namespace

void add_serve_commands(CLI::App& app) {
  auto* c = app.add_subcommand("serve", "OpenAI-compatible HTTP server (completions, chat, streaming) over a model folder");
  auto a = std::make_shared<ServeArgs>();
  c->add_option("--model", a->dir, "model folder: HF checkpoint, dsmoe run folder or quantized folder")->required();
  c->add_option("--tokenizer", a->tokenizer, "tokenizer.json, or \"bytes\" (default: the model folder's)");
  c->add_option("--host", a->host, "address to listen on")->capture_default_str();
  c->add_option("--port", a->port, "TCP port (0: any free port, printed when listening)")
      ->check(int_in(0, 65535))
      ->capture_default_str();
  c->add_option("--parallel", a->parallel, "sequence slots: requests generated at once (continuous batching)")
      ->check(int_in(1, 256))
      ->capture_default_str();
  c->add_option("--ctx", a->ctx, "tokens per slot, prompt + reply (default max_position_embeddings)")
      ->check(int_in(2, kMaxTokens));
  c->add_option("--prefill-chunk", a->prefill_chunk,
                "prompt tokens a new request feeds per step at most, so long prompts do not stall running streams")
      ->check(int_in(1, kMaxTokens))
      ->capture_default_str();
  c->add_option("--queue", a->queue, "requests that may wait for a free slot; beyond that, 503")
      ->check(int_in(0, 4096))
      ->capture_default_str();
  c->add_option("--dtype", a->dtype, "weight storage: auto (the folder's own), f32, bf16, q8, q4")->capture_default_str();
  add_compute_option(c, a->compute);
  add_kv_cache_option(c, a->kv_cache);
  c->add_option("--api-key", a->api_key, "require 'Authorization: Bearer KEY' on /v1 and /metrics requests");
  c->add_option("--model-name", a->model_name, "the model id clients use (default: the model folder's name)");
  add_no_verify_flag(c, a->no_verify);
  c->callback([a] { cmd_serve(*a); });
}

}  // namespace dsmoe::cli
