// Continuous batching for the server: one engine thread owns the InferenceEngine and `parallel`
// sequence slots (each with its own KvCache of `ctx` tokens, of the engine's KvType) and loops over ticks:
//   1. admit waiting requests (a bounded queue) into free slots;
//   2. one InferenceEngine::step over every active slot: a request still prefilling feeds at most
//      `prefill_chunk` prompt tokens (so a long prompt does not stall the running streams for its
//      whole length), a decoding one feeds its last sampled token;
//   3. each slot whose prompt is all in samples with its own Rng(seed), so a request gets the same
//      tokens alone or in any batch (the engine computes each sequence as it would alone);
//   4. the text goes through the request's TextStream (stop strings held back) to its Job, and
//      finished requests (EOS, max tokens, stop string, context full, cancelled) free their slot.
// HTTP handler threads submit requests and read their Job (mutex + condition variable).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "infer/engine.h"
#include "infer/sampling.h"
#include "infer/text_codec.h"

namespace dsmoe::serve {

struct GenRequest {
  std::vector<int32_t> prompt;  // >= 1 token, fewer than the slots' ctx
  SamplingOptions sampling;     // max_new_tokens >= 1; eos_token set by the caller
  uint64_t seed = 0;
  std::vector<std::string> stops;
  // -1: no logprobs. 0 or more: each sampled token's log-probability and this many most
  // likely alternatives (of the model's distribution: the raw logits, before temperature, top-k, top-p).
  int64_t top_logprobs = -1;
};

// A sampled token's log-probability (fp64 log-softmax of the step's fp32 logits) and the
// `top_logprobs` most likely tokens with theirs, most likely first.
struct TokenLogprob {
  int32_t token = 0;
  double logprob = 0;
  std::vector<std::pair<int32_t, double>> top;
};

// Why a request ended. Cancelled: its client went away or the server is stopping.
enum class JobEnd { Running, Stop, Length, Cancelled };
// OpenAI's finish_reason: "stop" (EOS or a stop string), "length", or null while running /
// cancelled.
const char* finish_reason_json(JobEnd e);

// One request's output, written by the engine thread and read by its handler thread.
class Job {
 public:
  explicit Job(int64_t prompt_tokens) : prompt_tokens_(prompt_tokens) {}
  // Waits up to `timeout` for new text or the end, then appends the new text to `out` (while
  // running, without a trailing incomplete UTF-8 character). Returns true once the job has ended
  // and all its text has been taken. With `logprobs`, the logprobs of the tokens sampled so far are
  // appended to it whenever text is taken (or at the end), so they travel with the text they made.
  bool wait(std::string& out, std::chrono::milliseconds timeout, std::vector<TokenLogprob>* logprobs = nullptr);
  // Asks the engine thread to stop this request at its next tick (its slot is then freed).
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }
  JobEnd end() const;
  int64_t prompt_tokens() const { return prompt_tokens_; }
  int64_t completion_tokens() const;

  // Engine side.
  void append(const std::string& text, int64_t tokens, TokenLogprob* logprob = nullptr);
  void finish(const std::string& text, JobEnd end);

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string pending_;
  std::vector<TokenLogprob> pending_logprobs_;
  int64_t prompt_tokens_ = 0, completion_tokens_ = 0;
  JobEnd end_ = JobEnd::Running;
  std::atomic<bool> cancelled_{false};
};

struct SchedulerOptions {
  int64_t parallel = 4;        // sequence slots
  int64_t ctx = 0;             // tokens per slot (prompt + generated)
  int64_t prefill_chunk = 128; // prompt tokens a prefilling request feeds per tick, at most
  int64_t queue = 64;          // requests that may wait for a slot
};

struct SchedulerStats {
  int64_t requests = 0, cancelled = 0, prompt_tokens = 0, generated_tokens = 0;
  int64_t queued = 0, active = 0, peak_active = 0, ticks = 0;
};

class Scheduler {
 public:
  // The engine and the codec must outlive the scheduler. Starts the engine thread.
  Scheduler(InferenceEngine& engine, const TextCodec& codec, SchedulerOptions o);
  ~Scheduler();  // stop()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request; null when the queue is full (or the scheduler is stopping).
  std::shared_ptr<Job> submit(GenRequest r);
  // Ends every running and waiting request (Cancelled) and joins the engine thread.
  void stop();
  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return o_; }

 private:
  struct Slot;
  struct Waiting {
    GenRequest req;
    std::shared_ptr<Job> job;
  };
  void loop();
  void tick(std::vector<Slot>& slots);

  InferenceEngine& engine_;
  const TextCodec& codec_;
  SchedulerOptions o_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Waiting> queue_;
  bool stopping_ = false;
  SchedulerStats stats_;  // under mu_
  std::thread thread_;
};

}  // namespace dsmoe::serve
