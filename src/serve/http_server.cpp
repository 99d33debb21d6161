#include "serve/http_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <random>
#include <thread>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "serve/api_request.h"
#include "serve/chat_page.h"

namespace dsmoe::serve {

using json = nlohmann::json;

namespace {

// Generated text need not be valid UTF-8 (a byte-level model can sample any byte): invalid bytes
// become U+FFFD rather than failing the response.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(dump(j), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status, e.body()); }

json finish_reason(JobEnd e) {
  const char* r = finish_reason_json(e);
  return r ? json(r) : json(nullptr);
}

// The part of a streamed chunk that carries text: completions put it in "text", chat in a delta.
json choice_piece(bool chat, const std::string& text, bool first) {
  if (!chat) return {{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  json delta = {{"content", text}};
  if (first) delta["role"] = "assistant";
  return {{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
}

// What one streamed response has sent so far.
struct StreamState {
  std::shared_ptr<Job> job;
  json head;  // id, object, created, model
  bool chat = false, include_usage = false, first = true, logprobs = false;
  int64_t text_offset = 0;  // completions' logprobs: bytes of token text sent so far
  std::chrono::steady_clock::time_point last_write = std::chrono::steady_clock::now();
};

// A client that has gone away is only noticed when a write to it fails (cpp-httplib 0.11 does
// not expose the socket to poll): a response that has sent nothing for this long writes a
// keep-alive (an SSE comment in a stream, JSON's insignificant leading whitespace otherwise), so a
// disconnected client frees its slot within about two of these periods.
constexpr auto kKeepAlive = std::chrono::milliseconds(250);
constexpr auto kPoll = std::chrono::milliseconds(50);

// OpenAI's logprobs objects for `lps` (the tokens of one response or one streamed chunk).
// Chat: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
// Completions: {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}, the
// offsets counted in bytes of the completion text from `text_offset` on (which it advances).
json logprobs_json(const TextCodec& codec, const std::vector<TokenLogprob>& lps, bool chat, int64_t& text_offset) {
  auto text_of = [&](int32_t id) { return codec.decode({id}); };
  auto bytes_of = [](const std::string& t) {
    json b = json::array();
    for (unsigned char c : t) b.push_back((int)c);
    return b;
  };
  if (chat) {
    json content = json::array();
    for (const auto& lp : lps) {
      const std::string t = text_of(lp.token);
      json top = json::array();
      for (const auto& [id, l] : lp.top) {
        const std::string a = text_of(id);
        top.push_back({{"token", a}, {"logprob", l}, {"bytes", bytes_of(a)}});
      }
      content.push_back({{"token", t}, {"logprob", lp.logprob}, {"bytes", bytes_of(t)}, {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json tokens = json::array(), logprobs = json::array(), tops = json::array(), offsets = json::array();
  for (const auto& lp : lps) {
    const std::string t = text_of(lp.token);
    tokens.push_back(t);
    logprobs.push_back(lp.logprob);
    json top = json::object();
    for (const auto& [id, l] : lp.top) top[text_of(id)] = l;
    tops.push_back(top);
    offsets.push_back(text_offset);
    text_offset += (int64_t)t.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", logprobs}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

// cpp-httplib 0.11 listens with a backlog of 5 and has no setting for it. A burst of more clients
// overflowed the accept queue: the kernel dropped the last packet of their handshakes, their
// requests were retransmitted late, and the server, which waits for a new connection's request no
// longer than the keep-alive timeout, closed some unanswered (the load test saw it). listen() again
// on the bound socket raises the backlog (Linux allows it on a listening socket); the socket is
// found among the process's descriptors by its port.
void raise_listen_backlog(int port) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    int fd = -1;
    try {
      fd = std::stoi(e.path().filename().string());
    } catch (const std::exception&) {
      continue;
    }
    int listening = 0;
    socklen_t len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) continue;
    sockaddr_storage a{};
    socklen_t alen = sizeof a;
    if (getsockname(fd, (sockaddr*)&a, &alen) != 0) continue;
    const int p = a.ss_family == AF_INET    ? ntohs(((const sockaddr_in*)&a)->sin_port)
                  : a.ss_family == AF_INET6 ? ntohs(((const sockaddr_in6*)&a)->sin6_port)
                                            : -1;
    if (p == port && ::listen(fd, SOMAXCONN) != 0)
      std::fprintf(stderr, "dsmoe: serve: could not raise the listen backlog: %s\n", std::strerror(errno));
  }
}

json usage(const Job& job) {
  return {{"prompt_tokens", job.prompt_tokens()}, {"completion_tokens", job.completion_tokens()},
          {"total_tokens", job.prompt_tokens() + job.completion_tokens()}};
}

}  // namespace

HttpServer::HttpServer(Scheduler& scheduler, const TextCodec& codec, const ChatFormat& format, ServerOptions o)
    : sched_(scheduler), codec_(codec), format_(format), o_(std::move(o)), started_((int64_t)std::time(nullptr)),
      svr_(std::make_unique<httplib::Server>()) {
  // One handler thread per stream that may run or wait, plus a few for the cheap endpoints.
  const size_t threads = (size_t)(sched_.options().parallel + sched_.options().queue + 4);
  svr_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // Idle keep-alive connections hold a handler thread; a short timeout lets stop() finish quickly.
  svr_->set_keep_alive_timeout(2);
  routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  const int port = o_.port == 0 ? svr_->bind_to_any_port(o_.host) : (svr_->bind_to_port(o_.host, o_.port) ? o_.port : -1);
  if (port <= 0) fail("serve: cannot listen on {}:{} (address in use, or not an address of this machine)", o_.host, o_.port);
  raise_listen_backlog(port);
  return port;
}

void HttpServer::listen() { svr_->listen_after_bind(); }

void HttpServer::stop() {
  const auto t0 = std::chrono::steady_clock::now();
  while (streams_.load() > 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2))
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  svr_->stop();
}

void HttpServer::routes() {
  using httplib::Request, httplib::Response;
  svr_->set_pre_routing_handler([this](const Request& req, Response& res) {
    // The probe and the chat page need no key (the page sends the one typed into it).
    if (o_.api_key.empty() || req.path == "/health" || req.path == "/")
      return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") == "Bearer " + o_.api_key)
      return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'", "",
                             "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  // Unknown paths get an error object too (handlers that answered an error set their own body).
  svr_->set_error_handler([](const Request& req, Response& res) {
    if (!res.body.empty()) return;
    send_json(res, res.status,
              ApiError(res.status, fmt::format("no route for {} {}", req.method, req.path), "", "not_found").body());
  });
  svr_->set_exception_handler([](const Request&, Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, what, "", "internal_error", "server_error"));
  });
  svr_->Post("/v1/completions", [this](const Request& req, Response& res) { complete(req, res, false); });
  svr_->Post("/v1/chat/completions", [this](const Request& req, Response& res) { complete(req, res, true); });
  svr_->Get("/", [](const Request&, Response& res) {
    const std::string_view page = chat_page_html();
    res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
  });
  svr_->Get("/v1/models", [this](const Request&, Response& res) {
    json m = {{"id", o_.model_name}, {"object", "model"}, {"created", started_}, {"owned_by", "dsmoe"}};
    send_json(res, 200, {{"object", "list"}, {"data", json::array({m})}});
  });
  svr_->Get("/health", [this](const Request&, Response& res) {
    const SchedulerStats s = sched_.stats();
    send_json(res, 200, {{"status", "ok"}, {"model", o_.model_name}, {"slots", sched_.options().parallel},
                         {"active", s.active}, {"queued", s.queued}});
  });
  svr_->Get("/metrics", [this](const Request&, Response& res) {
    const SchedulerStats s = sched_.stats();
    std::string out;
    auto metric = [&](const char* name, const char* type, const char* help, int64_t v) {
      out += fmt::format("# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}\n", name, help, type, v);
    };
    metric("dsmoe_requests_total", "counter", "Generation requests accepted.", s.requests);
    metric("dsmoe_requests_cancelled_total", "counter", "Requests ended early because the client went away.",
           s.cancelled);
    metric("dsmoe_prompt_tokens_total", "counter", "Prompt tokens prefilled.", s.prompt_tokens);
    metric("dsmoe_generated_tokens_total", "counter", "Tokens generated.", s.generated_tokens);
    metric("dsmoe_queue_depth", "gauge", "Requests waiting for a sequence slot.", s.queued);
    metric("dsmoe_active_sequences", "gauge", "Requests in a sequence slot.", s.active);
    metric("dsmoe_peak_active_sequences", "gauge", "Most requests in slots at once since the start.", s.peak_active);
    metric("dsmoe_slots", "gauge", "Sequence slots (--parallel).", sched_.options().parallel);
    res.set_content(out, "text/plain; version=0.0.4");
  });
}

void HttpServer::complete(const httplib::Request& req, httplib::Response& res, bool chat) {
  ApiRequest a;
  GenRequest g;
  try {
    a = parse_api_request(req.body, chat);
    if (a.model && *a.model != o_.model_name)
      throw ApiError(404, fmt::format("the model '{}' does not exist: this server serves '{}'", *a.model, o_.model_name),
                     "model", "model_not_found");
    const char* prompt_param = chat ? "messages" : "prompt";
    std::string text;
    if (chat) {
      try {
        text = format_.render(a.messages, true);
      } catch (const Error& e) {  // the template's raise_exception (roles that do not alternate, ...)
        throw ApiError(400, fmt::format("the chat template refused the messages: {}", e.what()), "messages");
      }
    }
    // As `dsmoe generate` (BOS when the tokenizer adds it) and `dsmoe chat` (the rendered template
    // already holds its special tokens) tokenize.
    g.prompt = chat ? codec_.encode(text, false) : codec_.encode(a.prompt, true);
    const int64_t ctx = sched_.options().ctx, n = (int64_t)g.prompt.size();
    if (n == 0) throw ApiError(400, fmt::format("'{}' encodes to no tokens", prompt_param), prompt_param);
    if (n >= ctx)
      throw ApiError(400,
                     fmt::format("'{}' is {} tokens; this server's context is {} tokens, so a prompt may have at most {}",
                                 prompt_param, n, ctx, ctx - 1),
                     prompt_param, "context_length_exceeded");
    // Without max_tokens a chat reply may use the rest of the context; a completion gets OpenAI's 16.
    g.sampling.max_new_tokens = a.max_tokens.value_or(chat ? ctx - n : 16);
    g.sampling.temperature = a.temperature;
    g.sampling.top_p = a.top_p;
    g.sampling.top_k = a.top_k;
    g.sampling.eos_token = codec_.eos_id();
    g.seed = a.seed ? *a.seed : std::random_device{}();
    g.stops = a.stop;
    g.top_logprobs = a.top_logprobs;
  } catch (const ApiError& e) {
    return send_error(res, e);
  }
  std::shared_ptr<Job> job = sched_.submit(std::move(g));
  if (!job) {
    res.set_header("Retry-After", "1");
    return send_error(res, ApiError(503, "the server is busy: every sequence slot is taken and the queue is full; retry later",
                                    "", "server_busy", "server_error"));
  }
  const std::string id = fmt::format("{}-{}-{}", chat ? "chatcmpl" : "cmpl", started_, next_id_++);
  json head = {{"id", id}, {"object", chat ? (a.stream ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
               {"created", (int64_t)std::time(nullptr)}, {"model", o_.model_name}};
  const bool want_logprobs = a.top_logprobs >= 0;
  res.set_header("Cache-Control", "no-cache");
  streams_++;  // stop() waits for this response too
  if (!a.stream) {
    // Sent through a content provider, so that waiting can notice a client that went away (the
    // keep-alive write fails) and cancel its request; the status is 200 once anything is written,
    // so a request ended by the server stopping closes the connection instead of answering.
    res.set_chunked_content_provider(
        "application/json",
        [this, job, head, chat, want_logprobs](size_t, httplib::DataSink& sink) {
          std::string text;
          std::vector<TokenLogprob> lps;
          auto last_write = std::chrono::steady_clock::now();
          bool gone = false;
          while (!job->wait(text, kPoll, want_logprobs ? &lps : nullptr)) {
            if (std::chrono::steady_clock::now() - last_write < kKeepAlive) continue;
            if (!sink.write(" ", 1)) {
              gone = true;
              break;
            }
            last_write = std::chrono::steady_clock::now();
          }
          if (gone || job->end() == JobEnd::Cancelled) {
            job->cancel();
            return false;
          }
          json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_reason(job->end())}};
          if (chat) choice["message"] = {{"role", "assistant"}, {"content", text}};
          else choice["text"] = text;
          if (want_logprobs) {
            int64_t offset = 0;
            choice["logprobs"] = logprobs_json(codec_, lps, chat, offset);
          }
          json body = head;
          body["choices"] = json::array({choice});
          body["usage"] = usage(*job);
          const std::string out = dump(body);
          if (!sink.write(out.data(), out.size())) return false;
          sink.done();
          return true;
        },
        [this, job](bool) {
          job->cancel();
          streams_--;
        });
    return;
  }
  auto st = std::make_shared<StreamState>();
  st->job = job;
  st->head = head;
  st->chat = chat;
  st->include_usage = a.include_usage;
  st->logprobs = want_logprobs;
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, st](size_t, httplib::DataSink& sink) {
        auto write = [&](const std::string& event) {
          st->last_write = std::chrono::steady_clock::now();
          return sink.write(event.data(), event.size());
        };
        auto send = [&](const json& chunk) { return write("data: " + dump(chunk) + "\n\n"); };
        auto with_choice = [&](const json& choice) {
          json c = st->head;
          c["choices"] = json::array({choice});
          return c;
        };
        std::string text;
        std::vector<TokenLogprob> lps;
        const bool done = st->job->wait(text, kPoll, st->logprobs ? &lps : nullptr);
        // A failed write or an unwritable socket: the client is gone, so its slot is freed.
        if (!text.empty() || !lps.empty() || (st->chat && st->first)) {
          json piece = choice_piece(st->chat, text, st->first);
          if (st->logprobs) piece["logprobs"] = logprobs_json(codec_, lps, st->chat, st->text_offset);
          if (!send(with_choice(piece))) {
            st->job->cancel();
            return false;
          }
          st->first = false;
        }
        if (!done) {
          const bool quiet = std::chrono::steady_clock::now() - st->last_write >= kKeepAlive;
          if (sink.is_writable() && (!quiet || write(": keep-alive\n\n"))) return true;
          st->job->cancel();
          return false;
        }
        if (st->job->end() != JobEnd::Cancelled) {
          json last = choice_piece(st->chat, "", false);
          if (st->chat) last["delta"] = json::object();
          last["finish_reason"] = finish_reason(st->job->end());
          if (!send(with_choice(last))) return false;
          if (st->include_usage) {  // as OpenAI: one more chunk, no choices, the request's usage
            json u = st->head;
            u["choices"] = json::array();
            u["usage"] = usage(*st->job);
            if (!send(u)) return false;
          }
        }
        const std::string end = "data: [DONE]\n\n";
        if (!sink.write(end.data(), end.size())) return false;
        sink.done();
        return true;
      },
      [this, st](bool) {
        st->job->cancel();
        streams_--;
      });
}

}  // namespace dsmoe::serve
