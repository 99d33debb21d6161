// The OpenAI-compatible HTTP API over a Scheduler (cpp-httplib):
//   POST /v1/completions       {"prompt", ...} -> text_completion (or SSE text_completion chunks)
//   POST /v1/chat/completions  {"messages", ...} rendered with the model folder's chat format
//                              -> chat.completion (or SSE chat.completion.chunk deltas)
//   GET  /v1/models            the one model served
//   GET  /health               {"status": "ok", "active", "queued", "slots"} (never needs the key)
//   GET  /metrics              Prometheus text: requests, tokens, queue depth, active sequences
//   GET  /                     the web chat page (chat_page.h; never needs the key)
// Streams are server-sent events, `data: {chunk}\n\n` ... `data: [DONE]\n\n`; a client that goes
// away, streaming or not, cancels its request (a write fails: quiet responses write keep-alives)
// and frees its slot. logprobs / top_logprobs come in OpenAI's shapes (chat and completions). Errors are OpenAI's
// error object (api_request.h); with an API key every /v1 and /metrics request needs
// `Authorization: Bearer KEY` (else 401); a full queue is 503 with Retry-After.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "infer/chat_format.h"
#include "infer/text_codec.h"
#include "serve/scheduler.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}

namespace dsmoe::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;           // 0: any free port (bind() returns it)
  std::string api_key;       // empty: no authentication
  std::string model_name;    // the model id clients name
};

class HttpServer {
 public:
  // scheduler, codec and format must outlive the server.
  HttpServer(Scheduler& scheduler, const TextCodec& codec, const ChatFormat& format, ServerOptions o);
  ~HttpServer();
  // Binds host:port; returns the port. An Error naming the address when it cannot.
  int bind();
  // Serves until stop() (from another thread).
  void listen();
  // Stops listening, after the streams in flight have sent their end (up to 2 s): call it once the
  // scheduler has stopped, which ends their requests. httplib stops writing a stream as soon as the
  // server stops, so stopping first would cut them off before their [DONE].
  void stop();

 private:
  void routes();
  // POST /v1/completions (chat false) and /v1/chat/completions.
  void complete(const httplib::Request& req, httplib::Response& res, bool chat);
  Scheduler& sched_;
  const TextCodec& codec_;
  const ChatFormat& format_;
  ServerOptions o_;
  int64_t started_ = 0;  // unix time, the models' "created"
  std::atomic<int64_t> next_id_{0};
  std::atomic<int64_t> streams_{0};  // streamed responses not yet released by httplib
  std::unique_ptr<httplib::Server> svr_;
};

}  // namespace dsmoe::serve
