// `dsmoe serve` from tests: the real binary on a loopback port (127.0.0.1, a port the kernel picks:
// --port 0) over a tiny byte-level model saved as a run folder, and small httplib helpers to talk
// to it. Shared by test_serve (httplib client) and test_serve_clients (the OpenAI Node SDK, the
// web page in Chromium, the load test).
#pragma once
#include <httplib.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_runner.h"

namespace dsmoe::test::serve {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0);

constexpr int64_t kMaxPos = 2048;

// A byte-level model (token id = byte, no BOS, no EOS: generation ends at max_tokens or the
// context), random weights, as a run folder; made once per process.
const std::string& model_dir();
std::string model_name();  // the folder's name: the id the server serves it as

// A running `dsmoe serve`; killed (SIGKILL) if the test did not stop it.
struct Server {
  pid_t pid = -1;
  int port = 0;
  std::string out, err, cmd;

  explicit Server(const std::vector<std::string>& extra = {});
  ~Server();
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
  std::unique_ptr<httplib::Client> client() const;
  // SIGTERM, then the exit status (the process is killed after timeout_s).
  cli::Proc terminate(double timeout_s);
};

struct Reply {
  int status = 0;
  json body;
  std::string raw, retry_after;
};

// The reply to `what` ("POST /v1/completions"); a request that got no response is a failure.
Reply reply(const httplib::Result& r, const std::string& what);
Reply post(const Server& s, const std::string& path, const std::string& body, const httplib::Headers& h = {});
Reply get(const Server& s, const std::string& path, const httplib::Headers& h = {});

// A streamed request: the data: payloads in order (SSE comments, the server's keep-alives, are
// skipped). stop_after > 0: the client closes the connection after that many events.
std::vector<std::string> post_stream(const Server& s, const std::string& path, const json& body, int stop_after = 0);

// The text of a stream's chunks (completions: choices[0].text, chat: choices[0].delta.content),
// with the final finish_reason; checks each chunk's shape and the closing [DONE].
std::string stream_text(const std::vector<std::string>& events, bool chat, std::string* finish);

// `dsmoe generate --temperature 0 --json` on one prompt: {ids, text, finish_reason}.
json generate(const std::string& prompt, int64_t max_tokens, const std::vector<std::string>& extra = {});

json completion_body(const std::string& prompt, int64_t max_tokens, double temperature = 0);

// A counter or gauge of /metrics' text; -1 when absent.
int64_t metric(const std::string& text, const std::string& name);
// Polls /metrics until `name` reads `value` or timeout_s pass; returns the last /metrics text.
std::string wait_for_metric(const Server& s, const std::string& name, int64_t value, double timeout_s);

}  // namespace dsmoe::test::serve
