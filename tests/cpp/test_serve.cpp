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
#include <fstream>
#include <thread>

#include "cli_runner.h"
#include "serve_runner.h"
#include "core/rng.h"
#include "infer/chat_format.h"
#include "infer/engine.h"
#include "infer/hf_checkpoint.h"
#include "infer/sampling.h"
#include "model/model.h"
#include "test_util.h"
#include "train/checkpoint.h"

using namespace dsmoe;
namespace fs = std::filesystem;
using json = nlohmann::json;
using test::cli::Proc;
using namespace dsmoe::test::serve;

namespace {

TEST(Serve, GreedyCompletionEqualsGenerate) {
  Server s({"--parallel", "2"});
  ASSERT_GT(s.port, 0);
  const std::string prompt = "The quick brown fox";
  const json want = generate(prompt, 24);
  const Reply r = post(s, "/v1/completions", completion_body(prompt, 24).dump());
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["object"], "text_completion");
  EXPECT_EQ(r.body["model"], model_name());
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

// With --kv-cache bf16 the server's slots store keys and values in bf16 (said on stderr, half the
// bytes): a greedy request still gets what `generate --kv-cache bf16` gives, and concurrent
// requests fed in chunks get what they get alone (the rounding is per element, so it does not
// depend on the batch or the chunking).
TEST(Serve, Bf16KvCacheKeepsGenerateAndBatchingInvariance) {
  Server s({"--parallel", "4", "--prefill-chunk", "4", "--kv-cache", "bf16"});
  ASSERT_GT(s.port, 0);
  const std::string err = test::cli::slurp(s.err);
  EXPECT_NE(err.find("(KV cache: bf16, "), std::string::npos) << err;
  const std::vector<std::string> prompts = {"a", "The rain in Spain", "Lorem ipsum dolor sit amet, consectetur",
                                            "0123456789"};
  std::vector<std::string> alone(prompts.size()), together(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const Reply r = post(s, "/v1/completions", completion_body(prompts[i], 100).dump());
    ASSERT_EQ(r.status, 200) << r.raw;
    alone[i] = r.body["choices"][0]["text"];
    const json want = generate(prompts[i], 100, {"--kv-cache", "bf16"});
    EXPECT_EQ(alone[i], want["text"]) << "prompt " << i << ": server vs generate --kv-cache bf16";
  }
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i)
    threads.emplace_back([&, i] {
      const Reply r = post(s, "/v1/completions", completion_body(prompts[i], 100).dump());
      if (r.status == 200) together[i] = r.body["choices"][0]["text"];
    });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(together[i], alone[i]) << "prompt " << i;
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
      {C, R"({"prompt": "hi", "logprobs": 21})", 400, "logprobs"},
      {C, R"({"prompt": "hi", "logprobs": -1})", 400, "logprobs"},
      {C, R"({"prompt": "hi", "logprobs": true})", 400, "logprobs"},
      {K, R"({"messages": [{"role": "user", "content": "hi"}], "logprobs": 3})", 400, "logprobs"},
      {K, R"({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2})", 400, "top_logprobs"},
      {K, R"({"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 21})", 400,
       "top_logprobs"},
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
  EXPECT_EQ(models.body["data"][0]["id"], model_name()) << models.raw;
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
  const std::string m = wait_for_metric(s, "dsmoe_active_sequences", 0, 10);
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

// The server's logprobs come from its decode steps; `dsmoe score` and a prefill of the whole
// sequence in this process compute the same log-softmax from other kernels (SGEMM over all rows
// instead of one GEMV row per step). Both are fp32 sums over at most 48 terms per dot product, two
// layers deep, on a model of hidden size 32: reassociation moves a logit by ~1e-6, so 1e-4 on a
// log-probability has a wide margin and still catches a wrong row, token or normalisation (~1e-1).
constexpr double kLogprobTol = 1e-4;

// log-softmax rows of the logits of every position of `ids`, from one prefill step.
std::vector<std::vector<double>> engine_logprobs(const std::vector<int32_t>& ids) {
  InferenceModel lm = load_inference_model(model_dir());
  InferenceEngine eng(*lm.weights);
  const int64_t V = eng.config().vocab_size;
  KvCache cache(eng.config(), (int64_t)ids.size());
  Segment seg{&cache, ids.data(), (int64_t)ids.size()};
  std::vector<float> logits;
  eng.step(std::span<const Segment>(&seg, 1), true, logits);
  std::vector<std::vector<double>> rows(ids.size(), std::vector<double>(V));
  for (size_t i = 0; i < ids.size(); ++i) {
    const float* row = logits.data() + i * V;
    const LogSoftmax ls = log_softmax(row, V);
    for (int64_t j = 0; j < V; ++j) rows[i][j] = ls.logprob(row[j]);
  }
  return rows;
}

std::vector<int32_t> bytes_of(const std::string& s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

TEST(Serve, LogprobsMatchScoreAndTheEngine) {
  Server s;
  ASSERT_GT(s.port, 0);
  const int64_t N = 12, K = 5;
  // Completions: token_logprobs against `dsmoe score` on prompt + the greedy ids of generate.
  const std::string prompt = "Logprobs, please";
  const json want = generate(prompt, N);
  json body = completion_body(prompt, N);
  body["logprobs"] = K;
  const Reply r = post(s, "/v1/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.raw;
  const json& lp = r.body["choices"][0]["logprobs"];
  ASSERT_TRUE(lp.is_object()) << r.raw;
  const std::vector<int32_t> ids = want["ids"].get<std::vector<int32_t>>();
  ASSERT_EQ((int64_t)ids.size(), N);
  for (const char* key : {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
    ASSERT_EQ(lp[key].size(), (size_t)N) << key << ": " << lp.dump();
  std::vector<int32_t> seq = bytes_of(prompt);  // the byte codec: no BOS, token = byte
  const int64_t P = (int64_t)seq.size();
  seq.insert(seq.end(), ids.begin(), ids.end());
  const std::string ids_file = test::cli::scratch("score") + "/ids.jsonl";
  std::ofstream(ids_file) << json(seq).dump() << "\n";
  const Proc sc = test::cli::run_cli({"score", "--model", model_dir(), "--ids-jsonl", ids_file}, 120);
  ASSERT_TRUE(sc.ok()) << sc.describe();
  const json scored = json::parse(sc.out)["sequences"][0]["logprobs"];
  ASSERT_EQ(scored.size(), seq.size() - 1);
  const auto rows = engine_logprobs(seq);
  int64_t offset = 0;
  for (int64_t i = 0; i < N; ++i) {
    const double server = lp["token_logprobs"][i], ref = scored[P - 1 + i];
    EXPECT_NEAR(server, ref, kLogprobTol) << "completion token " << i << " (id " << ids[i] << ")";
    EXPECT_EQ(lp["text_offset"][i], offset) << i;
    offset += 1;  // one byte per token
    if (ids[i] < 128) {
      EXPECT_EQ(lp["tokens"][i], std::string(1, (char)ids[i])) << i;
    }
    // top_logprobs: {text: logprob} of the K best ids of the engine's row (ASCII ones: the others
    // all read as U+FFFD and share a key).
    const json& top = lp["top_logprobs"][i];
    EXPECT_LE(top.size(), (size_t)K) << top.dump();
    std::vector<int32_t> best = top_tokens(std::vector<float>(rows[P - 1 + i].begin(), rows[P - 1 + i].end()).data(),
                                           (int64_t)rows[P - 1 + i].size(), K);
    for (int32_t id : best)
      if (id < 128) {
        const std::string t(1, (char)id);
        ASSERT_TRUE(top.contains(t)) << "completion token " << i << ": the engine's top id " << id << " missing from "
                                     << top.dump();
        EXPECT_NEAR(top[t].get<double>(), rows[P - 1 + i][id], kLogprobTol) << i << " alternative " << id;
      }
  }

  // Chat: each content entry's bytes are its id; logprob and the top K (ids from their bytes, in
  // order) against the engine's prefill of the rendered prompt + the reply.
  json chat = {{"messages", json::array({{{"role", "user"}, {"content", "Hi"}}})}, {"max_tokens", N},
               {"temperature", 0}, {"logprobs", true}, {"top_logprobs", K}};
  for (bool stream : {false, true}) {
    chat["stream"] = stream;
    json content = json::array();
    std::string text;
    if (!stream) {
      const Reply c = post(s, "/v1/chat/completions", chat.dump());
      ASSERT_EQ(c.status, 200) << c.raw;
      content = c.body["choices"][0]["logprobs"]["content"];
      text = c.body["choices"][0]["message"]["content"];
    } else {
      const std::vector<std::string> events = post_stream(s, "/v1/chat/completions", chat);
      for (size_t e = 0; e + 1 < events.size(); ++e) {
        const json ch = json::parse(events[e])["choices"][0];
        text += ch["delta"].value("content", "");
        if (ch["logprobs"].is_object())
          for (const auto& x : ch["logprobs"]["content"]) content.push_back(x);
      }
    }
    ASSERT_EQ(content.size(), (size_t)N) << (stream ? "streamed" : "whole") << ": " << content.dump();
    std::vector<int32_t> cseq = bytes_of(ChatFormat::load(model_dir()).render({{"user", "Hi"}}, true));
    const size_t CP = cseq.size();
    for (const auto& x : content) {
      ASSERT_EQ(x["bytes"].size(), 1u) << x.dump();
      cseq.push_back(x["bytes"][0].get<int32_t>());
    }
    const auto crows = engine_logprobs(cseq);
    for (int64_t i = 0; i < N; ++i) {
      const json& x = content[i];
      const auto& row = crows[CP - 1 + i];
      EXPECT_NEAR(x["logprob"].get<double>(), row[cseq[CP + i]], kLogprobTol) << "chat token " << i;
      const std::vector<float> rowf(row.begin(), row.end());
      const std::vector<int32_t> best = top_tokens(rowf.data(), (int64_t)rowf.size(), K);
      ASSERT_EQ(x["top_logprobs"].size(), (size_t)K) << x.dump();
      EXPECT_EQ(cseq[CP + i], best[0]) << "greedy picks the most likely token";
      for (int64_t k = 0; k < K; ++k) {
        const json& alt = x["top_logprobs"][k];
        EXPECT_EQ(alt["bytes"], json::array({best[k]})) << "chat token " << i << " alternative " << k << ": " << x.dump();
        EXPECT_NEAR(alt["logprob"].get<double>(), row[best[k]], kLogprobTol) << i << " alternative " << k;
      }
    }
  }
}

// A non-streamed request whose client goes away: the server's keep-alive write fails, the
// request is cancelled and the slot serves the next one.
TEST(Serve, DisconnectDuringNonStreamedRequestFreesTheSlot) {
  Server s({"--parallel", "1"});
  ASSERT_GT(s.port, 0);
  auto c = s.client();
  std::thread client([&] { c->Post("/v1/completions", completion_body("Wait for me", kMaxPos - 20).dump(), "application/json"); });
  const auto t_wait = Clock::now();
  while (metric(get(s, "/metrics").raw, "dsmoe_generated_tokens_total") < 1 && since(t_wait) < 20)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  c->stop();  // closes the socket of the request in flight
  client.join();
  const auto t0 = Clock::now();
  const std::string m = wait_for_metric(s, "dsmoe_active_sequences", 0, 10);
  EXPECT_EQ(metric(m, "dsmoe_active_sequences"), 0) << "after " << since(t0) << " s:\n" << m;
  EXPECT_EQ(metric(m, "dsmoe_requests_cancelled_total"), 1) << m;
  EXPECT_LT(metric(m, "dsmoe_generated_tokens_total"), kMaxPos - 20) << m;
  const Reply next = post(s, "/v1/completions", completion_body("after", 8).dump());
  EXPECT_EQ(next.status, 200) << next.raw;
}

// GET / is the chat page: HTML from the binary that loads nothing from elsewhere (the page in a
// browser is test_serve_clients).
TEST(Serve, ChatPageIsSelfContained) {
  Server s({"--api-key", "k"});
  ASSERT_GT(s.port, 0);
  auto r = s.client()->Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/html"), std::string::npos);
  EXPECT_NE(r->body.find("/v1/chat/completions"), std::string::npos);
  EXPECT_EQ(r->body.find("://"), std::string::npos) << "the page names another origin";
  EXPECT_EQ(r->body.find("<script src"), std::string::npos);
  EXPECT_EQ(r->body.find("<link"), std::string::npos);
}

// Bounded load on loopback: 32 clients, 256 greedy requests of 8 prompts, half of them streamed,
// more clients than slots (so requests queue). Every request is answered 200, every stream ends with
// [DONE], every answer to a prompt is the same text, and /metrics counts what was sent.
TEST(Serve, LoadTest) {
  Server s({"--parallel", "8", "--queue", "64"});
  ASSERT_GT(s.port, 0);
  constexpr int kClients = 32, kRequests = 256, kPrompts = 8, kMaxTokens = 16;
  std::vector<std::string> prompts;
  for (int p = 0; p < kPrompts; ++p) prompts.push_back("load prompt " + std::string(p + 1, 'a' + p));
  std::mutex mu;
  std::vector<std::vector<std::string>> answers(kPrompts);
  std::vector<std::string> failures;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  std::atomic<int> next{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c)
    clients.emplace_back([&] {
      for (int i; (i = next++) < kRequests;) {
        const int p = i % kPrompts;
        const bool stream = (i / kPrompts) % 2 == 1;
        json body = completion_body(prompts[p], kMaxTokens);
        std::string text, finish, failure;
        json usage;
        if (!stream) {
          auto r = s.client()->Post("/v1/completions", body.dump(), "application/json");
          if (!r || r->status != 200) {
            failure = "request " + std::to_string(i) + ": " + (r ? std::to_string(r->status) + " " + r->body : httplib::to_string(r.error()));
          } else {
            const json j = json::parse(r->body);
            text = j["choices"][0]["text"];
            finish = j["choices"][0]["finish_reason"];
            usage = j["usage"];
          }
        } else {
          body["stream"] = true;
          body["stream_options"] = {{"include_usage", true}};
          const std::vector<std::string> events = post_stream(s, "/v1/completions", body);
          if (events.size() < 3 || events.back() != "[DONE]") {
            failure = "stream " + std::to_string(i) + " did not end with [DONE] (" + std::to_string(events.size()) + " events)";
          } else {
            usage = json::parse(events[events.size() - 2])["usage"];
            for (size_t e = 0; e + 2 < events.size(); ++e) {
              const json ch = json::parse(events[e])["choices"][0];
              text += ch.value("text", "");
              if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
            }
          }
        }
        std::lock_guard lk(mu);
        if (!failure.empty()) {
          failures.push_back(failure);
          continue;
        }
        if (finish != "length" || usage.value("completion_tokens", -1) != kMaxTokens)
          failures.push_back("request " + std::to_string(i) + ": finish " + finish + ", usage " + usage.dump());
        prompt_tokens += usage.value("prompt_tokens", 0);
        completion_tokens += usage.value("completion_tokens", 0);
        answers[p].push_back(text);
      }
    });
  for (auto& t : clients) t.join();
  const double dt = since(t0);
  std::printf("load test: %d requests from %d clients in %.1f s\n", kRequests, kClients, dt);
  EXPECT_TRUE(failures.empty()) << failures.size() << " failed, the first: " << failures[0];
  for (int p = 0; p < kPrompts; ++p) {
    EXPECT_EQ(answers[p].size(), (size_t)(kRequests / kPrompts)) << "prompt " << p;
    for (const auto& a : answers[p]) EXPECT_EQ(a, answers[p][0]) << "prompt " << p << ": the greedy answers differ";
  }
  const std::string m = get(s, "/metrics").raw;
  EXPECT_EQ(metric(m, "dsmoe_requests_total"), kRequests) << m;
  EXPECT_EQ(metric(m, "dsmoe_requests_cancelled_total"), 0) << m;
  EXPECT_EQ(metric(m, "dsmoe_prompt_tokens_total"), prompt_tokens) << m;
  EXPECT_EQ(metric(m, "dsmoe_generated_tokens_total"), completion_tokens) << m;
  EXPECT_EQ(completion_tokens, (int64_t)kRequests * kMaxTokens);
  EXPECT_EQ(metric(m, "dsmoe_active_sequences"), 0) << m;
  EXPECT_EQ(metric(m, "dsmoe_queue_depth"), 0) << m;
  EXPECT_GT(metric(m, "dsmoe_peak_active_sequences"), 1) << m;
}

}  // namespace
