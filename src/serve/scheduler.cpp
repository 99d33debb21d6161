#include "serve/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <optional>

#include "core/error.h"
#include "infer/text_stream.h"

namespace dsmoe::serve {

const char* finish_reason_json(JobEnd e) {
  switch (e) {
    case JobEnd::Stop: return "stop";
    case JobEnd::Length: return "length";
    default: return nullptr;
  }
}

// ---------------------------------------------------------------- Job

namespace {

// The length of `s` without a trailing UTF-8 sequence that is still incomplete (a lead byte
// followed by fewer continuation bytes than it needs). Byte-level tokens can split a character:
// each streamed piece is sent as JSON, where half a character would become U+FFFD, so the stream
// would differ from the whole text.
size_t complete_utf8_prefix(const std::string& s) {
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const unsigned char c = (unsigned char)s[s.size() - back];
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back for the lead
    const size_t need = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 1;
    return back < need ? s.size() - back : s.size();
  }
  return s.size();
}

}  // namespace

bool Job::wait(std::string& out, std::chrono::milliseconds timeout, std::vector<TokenLogprob>* logprobs) {
  std::unique_lock lk(mu_);
  auto ready = [&] { return end_ != JobEnd::Running ? pending_.size() : complete_utf8_prefix(pending_); };
  cv_.wait_for(lk, timeout, [&] { return ready() > 0 || end_ != JobEnd::Running; });
  const size_t n = ready();
  out.append(pending_, 0, n);
  pending_.erase(0, n);
  const bool ended = end_ != JobEnd::Running;
  if (logprobs && (n > 0 || ended)) {
    for (auto& lp : pending_logprobs_) logprobs->push_back(std::move(lp));
    pending_logprobs_.clear();
  }
  return ended;
}

JobEnd Job::end() const {
  std::lock_guard lk(mu_);
  return end_;
}

int64_t Job::completion_tokens() const {
  std::lock_guard lk(mu_);
  return completion_tokens_;
}

void Job::append(const std::string& text, int64_t tokens, TokenLogprob* logprob) {
  {
    std::lock_guard lk(mu_);
    pending_ += text;
    completion_tokens_ += tokens;
    if (logprob) pending_logprobs_.push_back(std::move(*logprob));
  }
  cv_.notify_all();
}

void Job::finish(const std::string& text, JobEnd end) {
  {
    std::lock_guard lk(mu_);
    pending_ += text;
    end_ = end;
  }
  cv_.notify_all();
}

// ---------------------------------------------------------------- Scheduler

struct Scheduler::Slot {
  KvCache cache;
  std::shared_ptr<Job> job;  // null: the slot is free
  GenRequest req;
  int64_t fed = 0;           // prompt tokens already in the cache
  int32_t next = 0;          // the last sampled token, fed at the next tick
  int64_t generated = 0;
  Rng rng;
  std::optional<TextStream> text;
};

Scheduler::Scheduler(InferenceEngine& engine, const TextCodec& codec, SchedulerOptions o)
    : engine_(engine), codec_(codec), o_(o) {
  const int64_t max_pos = engine.config().max_position_embeddings;
  if (o_.ctx <= 0) o_.ctx = max_pos;
  DSMOE_ASSERT(o_.parallel >= 1 && o_.ctx >= 2 && o_.ctx <= max_pos && o_.prefill_chunk >= 1 && o_.queue >= 0,
               "scheduler options parallel {} ctx {} chunk {} queue {}", o_.parallel, o_.ctx, o_.prefill_chunk,
               o_.queue);
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() { stop(); }

std::shared_ptr<Job> Scheduler::submit(GenRequest r) {
  DSMOE_ASSERT(!r.prompt.empty() && (int64_t)r.prompt.size() < o_.ctx && r.sampling.max_new_tokens >= 1,
               "request of {} prompt tokens, max_new_tokens {}", r.prompt.size(), r.sampling.max_new_tokens);
  auto job = std::make_shared<Job>((int64_t)r.prompt.size());
  {
    std::lock_guard lk(mu_);
    // Room: the free slots plus the queue's own bound.
    const int64_t room = o_.parallel - stats_.active + o_.queue;
    if (stopping_ || (int64_t)queue_.size() >= room) return nullptr;
    queue_.push_back(Waiting{std::move(r), job});
    stats_.requests++;
    stats_.queued = (int64_t)queue_.size();
  }
  cv_.notify_all();
  return job;
}

void Scheduler::stop() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

void Scheduler::loop() {
  std::vector<Slot> slots(o_.parallel);
  for (auto& s : slots) s.cache = engine_.new_cache(o_.ctx);
  auto active = [&] {
    int64_t n = 0;
    for (const auto& s : slots) n += s.job != nullptr;
    return n;
  };
  while (true) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !queue_.empty() || active() > 0; });
      if (stopping_) break;
      for (auto& s : slots) {
        if (s.job || queue_.empty()) continue;
        Waiting w = std::move(queue_.front());
        queue_.pop_front();
        s.cache.clear();
        s.fed = 0;
        s.generated = 0;
        s.rng = Rng(w.req.seed);
        s.text.emplace(codec_, w.req.stops);
        stats_.prompt_tokens += (int64_t)w.req.prompt.size();
        s.req = std::move(w.req);
        s.job = std::move(w.job);
      }
      stats_.queued = (int64_t)queue_.size();
      stats_.active = active();
      stats_.peak_active = std::max(stats_.peak_active, stats_.active);
    }
    try {
      tick(slots);
    } catch (const std::exception& e) {
      // A failed step leaves the caches in an unknown state: end every running request, keep serving.
      std::fprintf(stderr, "dsmoe: serve: engine step failed: %s\n", e.what());
      {
        std::lock_guard lk(mu_);
        stats_.active = 0;
      }
      for (auto& s : slots)
        if (s.job) s.job->finish("", JobEnd::Cancelled), s.job.reset();
    }
  }
  // Stopping: every request still running or waiting ends now.
  std::lock_guard lk(mu_);
  for (auto& s : slots)
    if (s.job) s.job->finish(s.text ? s.text->flush() : "", JobEnd::Cancelled), s.job.reset();
  for (auto& w : queue_) w.job->finish("", JobEnd::Cancelled);
  queue_.clear();
  stats_.queued = stats_.active = 0;
}

void Scheduler::tick(std::vector<Slot>& slots) {
  const int64_t V = engine_.config().vocab_size;
  std::vector<Segment> segs;
  std::vector<Slot*> owner;
  std::vector<int64_t> prefill;  // prompt tokens fed this tick (0: a decode segment)
  auto retire = [&](Slot& s, JobEnd end, const std::string& last) {
    {
      // Counted free before the client hears of the end, so what it asks next sees the slot free.
      std::lock_guard lk(mu_);
      stats_.active--;
      if (end == JobEnd::Cancelled) stats_.cancelled++;
    }
    s.job->finish(last + (s.text ? s.text->flush() : ""), end);
    s.job.reset();
    s.text.reset();
    s.cache.clear();
  };
  for (auto& s : slots) {
    if (!s.job) continue;
    if (s.job->cancelled()) {
      retire(s, JobEnd::Cancelled, "");
      continue;
    }
    const int64_t left = (int64_t)s.req.prompt.size() - s.fed;
    if (left > 0) {
      const int64_t n = std::min(left, o_.prefill_chunk);
      segs.push_back(Segment{&s.cache, s.req.prompt.data() + s.fed, n});
      prefill.push_back(n);
    } else {
      segs.push_back(Segment{&s.cache, &s.next, 1});
      prefill.push_back(0);
    }
    owner.push_back(&s);
  }
  std::vector<float> logits;
  if (segs.empty()) return;
  engine_.step(segs, false, logits);
  {
    // Counted before any client hears of its tokens (a segment samples once its prompt is all in).
    int64_t sampled = 0;
    for (size_t j = 0; j < segs.size(); ++j)
      sampled += owner[j]->fed + prefill[j] >= (int64_t)owner[j]->req.prompt.size();
    std::lock_guard lk(mu_);
    stats_.generated_tokens += sampled;
    stats_.ticks++;
  }
  for (size_t j = 0; j < segs.size(); ++j) {
    Slot& s = *owner[j];
    if (prefill[j] > 0) {
      s.fed += prefill[j];
      if (s.fed < (int64_t)s.req.prompt.size()) continue;  // more prompt to feed: no token yet
    }
    const SamplingOptions& o = s.req.sampling;
    const float* row = logits.data() + j * V;
    const int32_t t = sample_token(row, V, o, s.rng);
    ++s.generated;
    std::optional<TokenLogprob> lp;
    if (s.req.top_logprobs >= 0) {
      const LogSoftmax ls = log_softmax(row, V);
      lp.emplace();
      lp->token = t;
      lp->logprob = ls.logprob(row[t]);
      for (int32_t id : top_tokens(row, V, s.req.top_logprobs)) lp->top.emplace_back(id, ls.logprob(row[id]));
    }
    TokenLogprob* lpp = lp ? &*lp : nullptr;
    std::string piece;
    const bool go = s.text->push(t, piece);
    // The same stopping rules as generate_batch (infer/engine.h), with the slot's ctx as the limit.
    JobEnd end = JobEnd::Running;
    if (t == o.eos_token || !go) end = JobEnd::Stop;
    else if (s.generated >= o.max_new_tokens || s.cache.len + 1 >= o_.ctx) end = JobEnd::Length;
    if (end == JobEnd::Running) {
      s.next = t;
      s.job->append(piece, 1, lpp);
    } else {
      s.job->append("", 1, lpp);
      retire(s, end, piece);
    }
  }
}

}  // namespace dsmoe::serve
