// `dsmoe serve` end to end: the real binary on a loopback port (127.0.0.1, a port the kernel picks:
// --port 0) over a tiny byte-level model saved as a run folder, driven with httplib::Client.
// Outputs are checked against `dsmoe generate` on the same prompt (the engine and generate are
// checked elsewhere): greedy completions, SSE streams, concurrent requests (batching invariance),
// chat through the folder's chat format; plus the API's errors, the API key, a full queue, a client
// that disconnects mid-stream, and SIGTERM.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "cli_runner.h"
#include "core/rng.h"
#include "infer/chat_format.h"
#include "model/model.h"
#include "test_util.h"
#include "train/checkpoint.h"

using namespace dsmoe;
namespace fs = std::filesystem;
using json = nlohmann::json;
using test::cli::Proc;

namespace {

constexpr int64_t kMaxPos = 2048;

// A byte-level model (no EOS: generation ends at max_tokens or the context) as a run folder.
const std::string& model_dir() {
  static const std::string dir = [] {
    const std::string d = test::tmp_path("serve_model");
    fs::remove_all(d);
    Config c = test::tiny_byte_model_config(kMaxPos, 32);
    Model model(c.model);
    Rng rng(11);
    model.init_weights(rng, 0.3);
    save_checkpoint(d, c, model, nullptr, TrainState{});
    return d;
  }();
  return dir;
}

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A running `dsmoe serve`; killed (SIGKILL) if the test did not stop it.
struct Server {
  pid_t pid = -1;
  int port = 0;
  std::string out, err, cmd;

  explicit Server(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"serve", "--model", model_dir(), "--host", "127.0.0.1", "--port", "0"};
    args.insert(args.end(), extra.begin(), extra.end());
    const std::string base = test::cli::scratch("serve") + "/server";
    out = base + ".out", err = base + ".err";
    cmd = test::cli::quote_args(args);
    pid = test::cli::spawn(args, out, err);
    const std::regex listening("dsmoe: listening on http://127\\.0\\.0\\.1:([0-9]+)");
    const auto t0 = Clock::now();
    while (since(t0) < 60) {
      std::smatch m;
      const std::string e = test::cli::slurp(err);
      if (std::regex_search(e, m, listening)) {
        port = std::stoi(m[1]);
        return;
      }
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        ADD_FAILURE() << cmd << " exited before listening:\n" << e;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << cmd << " did not print 'listening on' within 60 s:\n" << test::cli::slurp(err);
  }
  ~Server() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  std::unique_ptr<httplib::Client> client() const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
    c->set_read_timeout(60);
    c->set_connection_timeout(5);
    return c;
  }
  // SIGTERM, then the exit status (the process is killed after timeout_s).
  Proc terminate(double timeout_s) {
    kill(pid, SIGTERM);
    Proc p = test::cli::finish(pid, cmd, out, err, timeout_s);
    pid = -1;
    return p;
  }
};

struct Reply {
  int status = 0;
  json body;
  std::string raw, retry_after;
};

// The reply to `what` ("POST /v1/completions"); a request that got no response is a failure.
Reply reply(const httplib::Result& r, const std::string& what) {
  Reply out;
  if (!r) {
    ADD_FAILURE() << what << ": no response (" << httplib::to_string(r.error()) << ")";
    return out;
  }
  out.status = r->status;
  out.raw = r->body;
  out.retry_after = r->get_header_value("Retry-After");
  out.body = json::parse(r->body, nullptr, false);
  return out;
}

Reply post(const Server& s, const std::string& path, const std::string& body, const httplib::Headers& h = {}) {
  return reply(s.client()->Post(path.c_str(), h, body, "application/json"), "POST " + path);
}

Reply get(const Server& s, const std::string& path, const httplib::Headers& h = {}) {
  return reply(s.client()->Get(path.c_str(), h), "GET " + path);
}

// A streamed request: the data: payloads in order. stop_after > 0: the client closes the connection
// after that many events.
std::vector<std::string> post_stream(const Server& s, const std::string& path, const json& body, int stop_after = 0) {
  auto c = s.client();
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  std::string buf;
  std::vector<std::string> events;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buf.append(data, n);
    for (size_t at; (at = buf.find("\n\n")) != std::string::npos;) {
      const std::string ev = buf.substr(0, at);
      buf.erase(0, at + 2);
      EXPECT_EQ(ev.rfind("data: ", 0), 0u) << "an SSE event that is not 'data: ...': " << ev;
      events.push_back(ev.substr(6));
    }
    return stop_after == 0 || (int)events.size() < stop_after;
  };
  auto r = c->send(req);
  if (stop_after == 0) {
    EXPECT_TRUE(r) << "stream " << path << ": " << httplib::to_string(r.error());
    if (r) {
      EXPECT_EQ(r->status, 200);
      EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
    }
  }
  return events;
}

// The text of a stream's chunks (completions: choices[0].text, chat: choices[0].delta.content),
// with the final finish_reason; checks each chunk's shape and the closing [DONE].
std::string stream_text(const std::vector<std::string>& events, bool chat, std::string* finish) {
  EXPECT_GE(events.size(), 2u);
  if (events.empty()) return "";
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json c = json::parse(events[i], nullptr, false);
    EXPECT_EQ(c.value("object", ""), chat ? "chat.completion.chunk" : "text_completion") << events[i];
    const json& ch = c["choices"][0];
    if (chat) text += ch["delta"].value("content", "");
    else text += ch.value("text", "");
    if (!ch["finish_reason"].is_null()) {
      EXPECT_EQ(i + 2, events.size()) << "finish_reason before the last chunk: " << events[i];
      *finish = ch["finish_reason"].get<std::string>();
    }
  }
  if (chat) {
    EXPECT_EQ(json::parse(events[0])["choices"][0]["delta"].value("role", ""), "assistant") << events[0];
  }
  return text;
}

// `dsmoe generate --temperature 0 --json` on one prompt.
json generate(const std::string& prompt, int64_t max_tokens, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args = {"generate", "--model", model_dir(), "--prompt", prompt, "--temperature", "0",
                                   "--max-new-tokens", std::to_string(max_tokens), "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  Proc p = test::cli::run_cli(args, 120);
  EXPECT_TRUE(p.ok()) << p.describe();
  return json::parse(p.out, nullptr, false);
}

json completion_body(const std::string& prompt, int64_t max_tokens, double temperature = 0) {
  return {{"model", fs::path(model_dir()).filename().string()}, {"prompt", prompt}, {"max_tokens", max_tokens},
          {"temperature", temperature}, {"seed", 5}};
}

TEST(Serve, GreedyCompletionEqualsGenerate) {
  Server s({"--parallel", "2"});
  ASSERT_GT(s.port, 0);
  const std::string prompt = "The quick brown fox";
  const json want = generate(prompt, 24);
  const Reply r = post(s, "/v1/completions", completion_body(prompt, 24).dump());
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["object"], "text_completion");
  EXPECT_EQ(r.body["model"], fs::path(model_dir()).filename().string());
  EXPECT_TRUE(r.body["id"].is_string() && r.body["created"].is_number_integer()) << r.raw;
  const json& ch = r.body["choices"][0];
  EXPECT_EQ(ch["text"], want["text"]) << "server: " << r.raw << "\ngenerate: " << want.dump();
  EXPECT_EQ(ch["finish_reason"], "length");
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], (int64_t)prompt.size());  // bytes, no BOS
  EXPECT_EQ(r.body["usage"]["completion_tokens"], (int64_t)want["ids"].size());
  EXPECT_EQ(r.body["usage"]["total_tokens"], (int64_t)(prompt.size() + want["ids"].size()));

  // A stop string taken from the greedy text ends both at the same place, with "stop".
  const std::string text = want["text"];
  std::string stop;
  for (size_t i = 3; i + 1 < text.size() && stop.empty(); ++i)
    if (std::isalnum((unsigned char)text[i]) && std::isalnum((unsigned char)text[i + 1])) stop = text.substr(i, 2);
  ASSERT_FALSE(stop.empty()) << "no two ASCII letters in the greedy text to use as a stop string: " << want.dump();
  const json want_stop = generate(prompt, 24, {"--stop", stop});
  json body = completion_body(prompt, 24);
  body["stop"] = json::array({stop, "never appears"});
  const Reply rs = post(s, "/v1/completions", body.dump());
  ASSERT_EQ(rs.status, 200) << rs.raw;
  EXPECT_EQ(rs.body["choices"][0]["text"], want_stop["text"]) << "stop " << stop;
  EXPECT_EQ(rs.body["choices"][0]["finish_reason"], "stop");
}

TEST(Serve, StreamingEqualsNonStreaming) {
  Server s;
  ASSERT_GT(s.port, 0);
  for (bool chat : {false, true}) {
    json body = completion_body("Once upon a time", 30);
    if (chat) {
      body.erase("prompt");
      body["messages"] = json::array({{{"role", "user"}, {"content", "Tell me a story"}}});
    }
    const std::string path = chat ? "/v1/chat/completions" : "/v1/completions";
    const Reply whole = post(s, path, body.dump());
    ASSERT_EQ(whole.status, 200) << whole.raw;
    body["stream"] = true;
    std::string finish;
    const std::string streamed = stream_text(post_stream(s, path, body), chat, &finish);
    const json& ch = whole.body["choices"][0];
    EXPECT_EQ(streamed, chat ? ch["message"]["content"].get<std::string>() : ch["text"].get<std::string>())
        << (chat ? "chat" : "completion");
    EXPECT_EQ(finish, ch["finish_reason"]);
    // stream_options.include_usage: one more chunk before [DONE], no choices, the same usage.
    body["stream_options"] = {{"include_usage", true}};
    const std::vector<std::string> events = post_stream(s, path, body);
    ASSERT_GE(events.size(), 3u);
    const json u = json::parse(events[events.size() - 2], nullptr, false);
    EXPECT_EQ(u["usage"], whole.body["usage"]) << events[events.size() - 2];
    EXPECT_TRUE(u["choices"].is_array() && u["choices"].empty()) << events[events.size() - 2];
  }
}

int64_t metric(const std::string& text, const std::string& name) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex("\n" + name + " ([0-9]+)"))) return -1;
  return std::stoll(m[1]);
}

// Four greedy and four sampled requests at once, with prompts of different lengths fed in chunks
// of 4 tokens: each gets what it gets alone.
TEST(Serve, ConcurrentRequestsEqualAlone) {
  Server s({"--parallel", "4", "--prefill-chunk", "4"});
  ASSERT_GT(s.port, 0);
  const std::vector<std::string> prompts = {"a", "The rain in Spain", "Lorem ipsum dolor sit amet, consectetur",
                                            "0123456789"};
  for (double temperature : {0.0, 0.9}) {
    std::vector<std::string> alone(prompts.size()), together(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      const Reply r = post(s, "/v1/completions", completion_body(prompts[i], 200, temperature).dump());
      ASSERT_EQ(r.status, 200) << r.raw;
      alone[i] = r.body["choices"][0]["text"];
    }
    std::vector<std::thread> threads;
    for (size_t i = 0; i < prompts.size(); ++i)
      threads.emplace_back([&, i] {
        const Reply r = post(s, "/v1/completions", completion_body(prompts[i], 200, temperature).dump());
        if (r.status == 200) together[i] = r.body["choices"][0]["text"];
      });
    for (auto& t : threads) t.join();
    for (size_t i = 0; i < prompts.size(); ++i)
      EXPECT_EQ(together[i], alone[i]) << "prompt " << i << " temperature " << temperature;
  }
  // The concurrent requests did share steps (else this would test nothing).
  const Reply m = get(s, "/metrics");
  EXPECT_GE(metric(m.raw, "dsmoe_peak_active_sequences"), 2) << m.raw;
}

TEST(Serve, ChatEqualsRenderedPromptGeneration) {
  Server s;
  ASSERT_GT(s.port, 0);
  const std::vector<ChatMessage> msgs = {{"system", "You are terse."}, {"user", "Hello there"}};
  const std::string rendered = ChatFormat::load(model_dir()).render(msgs, true);
  const json want = generate(rendered, 20, {"--no-special-tokens"});
  json body = {{"messages", json::array()}, {"max_tokens", 20}, {"temperature", 0}};
  for (const auto& m : msgs) body["messages"].push_back({{"role", m.role}, {"content", m.content}});
  const Reply r = post(s, "/v1/chat/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["object"], "chat.completion");
  EXPECT_EQ(r.body["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r.body["choices"][0]["message"]["content"], want["text"]) << "rendered prompt: " << rendered;
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], (int64_t)rendered.size());
}

TEST(Serve, BadRequestsNameTheParam) {
  Server s({"--ctx", "64"});
  ASSERT_GT(s.port, 0);
  struct Case {
    std::string path, body;
    int status;
    std::string param;  // "" = null
  };
  const std::string C = "/v1/completions", K = "/v1/chat/completions";
  const std::vector<Case> cases = {
      {C, "{not json", 400, ""},
      {C, "[1, 2]", 400, ""},
      {C, R"({"max_tokens": 4})", 400, "prompt"},
      {C, R"({"prompt": 7})", 400, "prompt"},
      {C, R"({"prompt": "hi", "temperature": 2.5})", 400, "temperature"},
      {C, R"({"prompt": "hi", "temperature": "hot"})", 400, "temperature"},
      {C, R"({"prompt": "hi", "top_p": 0})", 400, "top_p"},
      {C, R"({"prompt": "hi", "max_tokens": 0})", 400, "max_tokens"},
      {C, R"({"prompt": "hi", "max_tokens": 1.5})", 400, "max_tokens"},
      {C, R"({"prompt": "hi", "top_k": -1})", 400, "top_k"},
      {C, R"({"prompt": "hi", "stop": 3})", 400, "stop"},
      {C, R"({"prompt": "hi", "stream": "yes"})", 400, "stream"},
      {C, R"({"prompt": "hi", "n": 2})", 400, "n"},
      {C, R"({"prompt": "hi", "stream": true, "stream_options": {"include_usage": 1}})", 400,
       "stream_options.include_usage"},
      {C, json({{"prompt", std::string(100, 'a')}}).dump(), 400, "prompt"},
      {C, R"({"prompt": "hi", "model": "gpt-4"})", 404, "model"},
      {K, R"({"messages": []})", 400, "messages"},
      {K, R"({"messages": [{"content": "hi"}]})", 400, "messages[0].role"},
      {K, R"({"messages": [{"role": "user", "content": 5}]})", 400, "messages[0].content"},
  };
  for (const auto& c : cases) {
    const Reply r = post(s, c.path, c.body);
    EXPECT_EQ(r.status, c.status) << c.body << " -> " << r.raw;
    ASSERT_TRUE(r.body.is_object() && r.body.contains("error")) << c.body << " -> " << r.raw;
    const json& e = r.body["error"];
    EXPECT_EQ(e["param"], c.param.empty() ? json(nullptr) : json(c.param)) << c.body << " -> " << r.raw;
    EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << r.raw;
    if (c.status == 400) {
      EXPECT_EQ(e["type"], "invalid_request_error") << r.raw;
    }
  }
  const Reply nf = get(s, "/v1/nothing");
  EXPECT_EQ(nf.status, 404);
  EXPECT_TRUE(nf.body.contains("error")) << nf.raw;
  const Reply models = get(s, "/v1/models");
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(models.body["data"][0]["id"], fs::path(model_dir()).filename().string()) << models.raw;
}

TEST(Serve, ApiKeyIsRequired) {
  Server s({"--api-key", "sekrit", "--model-name", "tiny"});
  ASSERT_GT(s.port, 0);
  const std::string body = R"({"prompt": "hi", "max_tokens": 2, "model": "tiny"})";
  const Reply none = post(s, "/v1/completions", body);
  EXPECT_EQ(none.status, 401) << none.raw;
  EXPECT_TRUE(none.body.contains("error")) << none.raw;
  EXPECT_EQ(post(s, "/v1/completions", body, {{"Authorization", "Bearer wrong"}}).status, 401);
  EXPECT_EQ(get(s, "/v1/models").status, 401);
  const Reply ok = post(s, "/v1/completions", body, {{"Authorization", "Bearer sekrit"}});
  EXPECT_EQ(ok.status, 200) << ok.raw;
  EXPECT_EQ(get(s, "/health").status, 200);  // probes need no key
}


// A client that goes away mid-stream: its request is cancelled, the slot is free for the next one.
// One slot and no queue, so a second request while the first runs is refused with 503.
TEST(Serve, DisconnectFreesTheSlotAndFullQueueIs503) {
  Server s({"--parallel", "1", "--queue", "0"});
  ASSERT_GT(s.port, 0);
  json body = completion_body("Stream me", kMaxPos - 20);
  body["stream"] = true;
  std::thread second;
  Reply busy;
  auto c = s.client();
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  int chunks = 0;
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
    if (++chunks == 1) busy = post(s, "/v1/completions", completion_body("x", 2).dump());  // while the first runs
    return chunks < 3;  // then hang up
  };
  c->send(req);
  c->stop();
  EXPECT_EQ(busy.status, 503) << busy.raw;
  EXPECT_EQ(busy.retry_after, "1");
  // The slot frees within a few seconds (bounded poll), long before the request's 2028 tokens.
  const auto t0 = Clock::now();
  std::string m;
  while (since(t0) < 10) {
    m = get(s, "/metrics").raw;
    if (metric(m, "dsmoe_active_sequences") == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(metric(m, "dsmoe_active_sequences"), 0) << m;
  EXPECT_EQ(metric(m, "dsmoe_requests_cancelled_total"), 1) << m;
  EXPECT_LT(metric(m, "dsmoe_generated_tokens_total"), kMaxPos - 20) << m;
  const Reply next = post(s, "/v1/completions", completion_body("after", 8).dump());
  EXPECT_EQ(next.status, 200) << next.raw;
  const Reply h = get(s, "/health");
  EXPECT_EQ(h.body["active"], 0) << h.raw;
}

TEST(Serve, SigtermStopsCleanly) {
  Server s({"--parallel", "1"});
  ASSERT_GT(s.port, 0);
  // A long stream in flight when the signal comes: it ends, and so does the server.
  std::atomic<int> events{0};
  std::vector<std::string> got;
  std::thread client([&] {
    json body = completion_body("Stream me", kMaxPos - 20);
    body["stream"] = true;
    got = post_stream(s, "/v1/completions", body);
    events = (int)got.size();
  });
  const auto t_wait = Clock::now();
  while (metric(get(s, "/metrics").raw, "dsmoe_generated_tokens_total") < 1 && since(t_wait) < 10)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const auto t0 = Clock::now();
  Proc p = s.terminate(10);
  const double dt = since(t0);
  client.join();
  EXPECT_TRUE(p.ok()) << p.describe();
  EXPECT_LT(dt, 5.0) << "seconds to stop";
  EXPECT_TRUE(test::cli::contains(p.err, "stopped by signal 15")) << p.err;
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got.back(), "[DONE]") << "the stream in flight did not end with [DONE]";
}

}  // namespace
