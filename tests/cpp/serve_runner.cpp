#include "serve_runner.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <regex>
#include <thread>

#include "core/rng.h"
#include "model/model.h"
#include "test_util.h"
#include "train/checkpoint.h"

namespace dsmoe::test::serve {

namespace fs = std::filesystem;

// One folder per process: CTest runs each TEST as its own process, several at once.
const std::string& model_dir() {
  static const std::string dir = [] {
    const std::string d = test::tmp_path("serve_model_" + std::to_string(getpid()));
    fs::remove_all(d);
    Config c = test::tiny_byte_model_config(kMaxPos, 32);
    Model model(c.model);
    Rng rng(11);
    model.init_weights(rng, 0.3);
    save_checkpoint(d, c, model, nullptr, TrainState{});
    return d;
  }();
  static const struct Cleanup {
    ~Cleanup() { std::error_code ec; fs::remove_all(dir, ec); }
  } cleanup;
  return dir;
}

std::string model_name() { return fs::path(model_dir()).filename().string(); }

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

Server::Server(const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"serve", "--model", model_dir(), "--host", "127.0.0.1", "--port", "0"};
  args.insert(args.end(), extra.begin(), extra.end());
  const std::string base = cli::scratch("serve") + "/server";
  out = base + ".out", err = base + ".err";
  cmd = cli::quote_args(args);
  pid = cli::spawn(args, out, err);
  const std::regex listening("dsmoe: listening on http://127\\.0\\.0\\.1:([0-9]+)");
  const auto t0 = Clock::now();
  while (since(t0) < 60) {
    std::smatch m;
    const std::string e = cli::slurp(err);
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
  ADD_FAILURE() << cmd << " did not print 'listening on' within 60 s:\n" << cli::slurp(err);
}

Server::~Server() {
  if (pid > 0) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
}

std::unique_ptr<httplib::Client> Server::client() const {
  auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
  c->set_read_timeout(60);
  c->set_connection_timeout(5);
  return c;
}

cli::Proc Server::terminate(double timeout_s) {
  kill(pid, SIGTERM);
  cli::Proc p = cli::finish(pid, cmd, out, err, timeout_s);
  pid = -1;
  return p;
}

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

Reply post(const Server& s, const std::string& path, const std::string& body, const httplib::Headers& h) {
  return reply(s.client()->Post(path.c_str(), h, body, "application/json"), "POST " + path);
}

Reply get(const Server& s, const std::string& path, const httplib::Headers& h) {
  return reply(s.client()->Get(path.c_str(), h), "GET " + path);
}

// A streamed request: the data: payloads in order. stop_after > 0: the client closes the connection
// after that many events.
std::vector<std::string> post_stream(const Server& s, const std::string& path, const json& body, int stop_after) {
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
      if (ev.rfind(":", 0) == 0) continue;  // a comment: the server's keep-alive
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
json generate(const std::string& prompt, int64_t max_tokens, const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"generate", "--model", model_dir(), "--prompt", prompt, "--temperature", "0",
                                   "--max-new-tokens", std::to_string(max_tokens), "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  cli::Proc p = cli::run_cli(args, 120);
  EXPECT_TRUE(p.ok()) << p.describe();
  return json::parse(p.out, nullptr, false);
}

json completion_body(const std::string& prompt, int64_t max_tokens, double temperature) {
  return {{"model", fs::path(model_dir()).filename().string()}, {"prompt", prompt}, {"max_tokens", max_tokens},
          {"temperature", temperature}, {"seed", 5}};
}


int64_t metric(const std::string& text, const std::string& name) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex("\n" + name + " ([0-9]+)"))) return -1;
  return std::stoll(m[1]);
}

std::string wait_for_metric(const Server& s, const std::string& name, int64_t value, double timeout_s) {
  const auto t0 = Clock::now();
  std::string m;
  while (since(t0) < timeout_s) {
    m = get(s, "/metrics").raw;
    if (metric(m, name) == value) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return m;
}

}  // namespace dsmoe::test::serve
