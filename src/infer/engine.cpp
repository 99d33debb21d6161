#include "infer/engine.h"

#include "core/buffers.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>

#include "core/bf16.h"
#include "core/checked.h"
#include "core/error.h"
#include "model/decoder_layer.h"
#include "model/moe_infer.h"
#include "ops/attention.h"
#include "ops/experts.h"
#include "ops/qlinear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"

namespace dsmoe {

const char* kv_type_name(KvType t) { return t == KvType::BF16 ? "bf16" : "f32"; }

KvType parse_kv_type(const std::string& s, const char* flag) {
  if (s == "f32") return KvType::F32;
  if (s == "bf16") return KvType::BF16;
  usage_error("{} '{}': expected f32 or bf16", flag, s);
}

int64_t kv_type_bytes(KvType t) { return t == KvType::BF16 ? 2 : 4; }

int64_t KvCache::bytes_per_token(const ModelConfig& m, KvType type) {
  return 2 * m.num_hidden_layers * m.num_key_value_heads * m.head_dim() * kv_type_bytes(type);
}

std::string kv_cache_note(const ModelConfig& m, KvType type, int64_t tokens) {
  const int64_t per = KvCache::bytes_per_token(m, type);
  return fmt::format("{}, {:.1f} KiB per token, {:.3f} GB for {} tokens", kv_type_name(type), per / 1024.0,
                     (double)per * (double)tokens / 1e9, tokens);
}

KvCache::KvCache(const ModelConfig& m, int64_t cap, KvType t)
    : layers(m.num_hidden_layers), capacity(cap), kv_dim(m.num_key_value_heads * m.head_dim()), type(t) {
  if (cap <= 0 || cap > m.max_position_embeddings)
    fail("KV cache capacity {} must be between 1 and max_position_embeddings ({})", cap, m.max_position_embeddings);
  const int64_t n = checked_numel({layers, capacity, kv_dim}, "KV cache size (layers x capacity x kv_dim)");
  try {
    if (type == KvType::BF16) {
      kh.assign((size_t)n, 0);
      vh.assign((size_t)n, 0);
    } else {
      k.assign((size_t)n, 0.0f);
      v.assign((size_t)n, 0.0f);
    }
  } catch (const std::exception&) {
    fail("cannot allocate a {} KV cache of capacity {} ({} layers x {} values, {:.1f} GiB for keys and values)",
         kv_type_name(type), cap, layers, capacity * kv_dim, (double)n * 2 * kv_type_bytes(type) / (1 << 30));
  }
}

void KvCache::append(int64_t layer, const float* k_rows, const float* v_rows, int64_t n) {
  DSMOE_ASSERT(layer >= 0 && layer < layers && n >= 0 && len + n <= capacity, "KV cache append: layer {} rows {}+{} of {}",
               layer, len, n, capacity);
  const int64_t at = (layer * capacity + len) * kv_dim, count = n * kv_dim;
  if (type == KvType::F32) {
    std::memcpy(k.data() + at, k_rows, (size_t)count * 4);
    std::memcpy(v.data() + at, v_rows, (size_t)count * 4);
    return;
  }
  uint16_t* kd = kh.data() + at;
  uint16_t* vd = vh.data() + at;
  for (int64_t i = 0; i < count; ++i) {
    kd[i] = f32_to_bf16(k_rows[i]);
    vd[i] = f32_to_bf16(v_rows[i]);
  }
}

InferenceEngine::InferenceEngine(const Model& model, KvType kv)
    : view_(std::make_unique<InferenceWeights>(InferenceWeights::view(model))), W_(view_.get()), cfg_(model.config()),
      kv_(kv) {
  cfg_.capacity_factor = 0;  // dropless at inference
  rope_ = ops::rope_table(cfg_.max_position_embeddings, cfg_.head_dim(), cfg_.rope_theta);
}

InferenceEngine::InferenceEngine(const InferenceWeights& weights, TokenDispatcher* dispatcher, Communicator* group,
                                 KvType kv)
    : W_(&weights), dispatcher_(dispatcher), group_(group), cfg_(weights.config()), kv_(kv) {
  cfg_.capacity_factor = 0;
  rope_ = ops::rope_table(cfg_.max_position_embeddings, cfg_.head_dim(), cfg_.rope_theta);
  const ExpertShard& sh = weights.shard();
  if (!sh.all())
    DSMOE_ASSERT(dispatcher && dispatcher->first_expert() == sh.first && dispatcher->local_experts() == sh.count,
                 "weights of routed experts [{}, {}) without a dispatcher that owns them", sh.first,
                 sh.first + sh.count);
  DSMOE_ASSERT(!dispatcher == !group, "a dispatcher without its group, or a group without a dispatcher");
}

bool InferenceEngine::any_rank_busy(bool mine) {
  if (!parallel()) return mine;
  int64_t busy = mine;
  group_->all_reduce_sum(&busy, 1);
  return busy > 0;
}

void InferenceEngine::step(std::span<const Segment> segs, bool all_logits, std::vector<float>& logits) {
  const ModelConfig& m = cfg_;
  const int64_t H = m.hidden_size, V = m.vocab_size, D = m.head_dim();
  const int64_t Hq = m.num_attention_heads, Hkv = m.num_key_value_heads, qd = Hq * D, kvd = Hkv * D;
  const InferenceWeights& P = *W_;
  int64_t N = 0;
  for (const Segment& s : segs) {
    DSMOE_ASSERT(s.cache && s.cache->kv_dim == kvd && s.cache->layers == m.num_hidden_layers, "KV cache of another model");
    if (s.n <= 0) fail("inference step: a sequence has no new tokens");
    if (s.cache->len + s.n > s.cache->capacity)
      fail("sequence of {} tokens exceeds its KV cache capacity {} (max_position_embeddings {})", s.cache->len + s.n,
           s.cache->capacity, m.max_position_embeddings);
    N += s.n;
  }
  if (N == 0) {
    // Nothing here, but the other ranks' rows may need this rank's experts: every MoE layer's
    // exchange, with no rows of its own.
    if (dispatcher_)
      for (int64_t l = 0; l < m.num_hidden_layers; ++l)
        if (m.is_moe_layer(l)) {
          MoeStats stats;
          moe_infer(m, P.layer(l).moe, nullptr, nullptr, 0, nullptr, stats, moe_, MoeDispatch::Grouped, dispatcher_);
        }
    logits.clear();
    return;
  }
  grow(tokens_, N);
  grow(pos_, N);
  {
    int64_t r = 0;
    for (const Segment& s : segs)
      for (int64_t i = 0; i < s.n; ++i, ++r) {
        const int32_t t = s.tokens[i];
        if (t < 0 || t >= V) fail("token id {} is outside the vocabulary [0, {})", t, V);
        tokens_[r] = t;
        pos_[r] = (int32_t)(s.cache->len + i);
      }
  }
  grow(x_, N * H);
  grow(ln_, N * H);
  grow(q_, N * qd);
  grow(k_, N * kvd);
  grow(v_, N * kvd);
  grow(att_, N * qd);
  grow(h_, N * H);
  grow(ffn_, N * H);
  for (int64_t r = 0; r < N; ++r) ops::dequantize_rows(x_.data() + r * H, P.embed(), tokens_[r], 1);  // embedding
  for (int64_t l = 0; l < m.num_hidden_layers; ++l) {
    const InferenceWeights::Layer& W = P.layer(l);
    // Append each sequence's new keys/values to its cache, then attend over the cache.
    const auto attend = [&](float* att, const float* q, const float* k, const float* v) {
      int64_t r0 = 0;
      for (const Segment& s : segs) {
        KvCache& c = *s.cache;
        c.append(l, k + r0 * kvd, v + r0 * kvd, s.n);
        const ops::AttentionShape as{1, s.n, c.len + s.n, Hq, Hkv, D};
        const int64_t at = l * c.capacity * kvd;
        if (c.type == KvType::BF16)
          ops::attention_forward(att + r0 * qd, nullptr, q + r0 * qd, c.kh.data() + at, c.vh.data() + at, as);
        else
          ops::attention_forward(att + r0 * qd, nullptr, q + r0 * qd, c.k.data() + at, c.v.data() + at, as);
        r0 += s.n;
      }
    };
    const auto ffn = [&](float* out, const float* x) {
      if (m.is_moe_layer(l)) {
        MoeStats stats;
        moe_infer(m, W.moe, x, tokens_.data(), N, out, stats, moe_, MoeDispatch::Auto, dispatcher_);
      } else {
        grow(gu_, N * 2 * m.intermediate_size);
        grow(act_, N * m.intermediate_size);
        ops::swiglu_mlp_forward(out, gu_.data(), act_.data(), x, W.mlp_gate_up, W.mlp_down, N);
      }
    };
    // ln1 and ln2 share ln_, the output overwrites x_ (both allowed by DecoderLayerBuffers).
    const DecoderLayerBuffers buf{x_.data(), ln_.data(), nullptr, q_.data(), k_.data(), v_.data(), att_.data(),
                                  h_.data(), ln_.data(), nullptr, ffn_.data(), x_.data()};
    decoder_layer_forward(m, W.attn, N, pos_.data(), rope_, buf, attend, ffn);
  }
  for (const Segment& s : segs) s.cache->len += s.n;
  // Final norm and lm_head over the rows whose logits are wanted.
  const float* rows = x_.data();
  int64_t R = N;
  if (!all_logits) {
    R = (int64_t)segs.size();
    grow(sel_, R * H);
    int64_t r = 0, i = 0;
    for (const Segment& s : segs) {
      r += s.n;
      std::memcpy(sel_.data() + i * H, x_.data() + (r - 1) * H, (size_t)H * 4);
      ++i;
    }
    rows = sel_.data();
  }
  ops::rmsnorm_forward(ln_.data(), nullptr, rows, P.final_norm(), R, H, (float)m.rms_norm_eps);
  logits.resize((size_t)(R * V));
  ops::qlinear_forward(logits.data(), ln_.data(), P.lm_head(), R);
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length: return "length";
    case FinishReason::Eos: return "eos";
    case FinishReason::Stop: return "stop";
  }
  return "?";
}

std::vector<GenerationResult> generate_batch(InferenceEngine& eng, const std::vector<std::vector<int32_t>>& prompts,
                                             const SamplingOptions& o, uint64_t seed,
                                             const std::function<bool(int64_t, int32_t)>& on_token,
                                             GenerationStats* stats) {
  using clock = std::chrono::steady_clock;
  GenerationStats st;
  const ModelConfig& m = eng.config();
  const int64_t V = m.vocab_size, S = (int64_t)prompts.size(), max_pos = m.max_position_embeddings;
  std::vector<GenerationResult> res(S);
  if (o.max_new_tokens < 0) fail("generate: max_new_tokens must be >= 0, got {}", o.max_new_tokens);
  if (S == 0 && !eng.parallel()) return res;  // a parallel rank without prompts still serves its experts
  std::vector<KvCache> caches;
  caches.reserve(S);
  std::vector<Rng> rngs;
  std::vector<Segment> segs;
  for (int64_t i = 0; i < S; ++i) {
    const auto& p = prompts[i];
    if (p.empty()) fail("generate: prompt {} is empty (give at least one token)", i);
    if ((int64_t)p.size() > max_pos)
      fail("generate: prompt {} has {} tokens, more than max_position_embeddings ({})", i, p.size(), max_pos);
    // Generation stops at max_position_embeddings, so the cache never needs more; the sum is checked
    // (max_new_tokens near INT64_MAX would wrap to a negative capacity).
    caches.push_back(eng.new_cache(std::min<int64_t>(max_pos, checked_add<int64_t>((int64_t)p.size(), o.max_new_tokens,
                                                                           "generate: prompt length + max_new_tokens"))));
    rngs.emplace_back(seed);
    segs.push_back(Segment{&caches[i], p.data(), (int64_t)p.size()});
  }
  if (o.max_new_tokens <= 0) return res;
  std::vector<float> logits;
  auto t0 = clock::now();
  eng.step(segs, false, logits);
  st.prefill_s = std::chrono::duration<double>(clock::now() - t0).count();
  for (const auto& p : prompts) st.prefill_tokens += (int64_t)p.size();
  t0 = clock::now();
  std::vector<int64_t> active(S);  // active[j] = sequence of logits row j
  for (int64_t i = 0; i < S; ++i) active[i] = i;
  std::vector<int32_t> next(S);
  // In parallel, the ranks step together until every rank's sequences have ended.
  while (true) {
    std::vector<int64_t> still;
    for (size_t j = 0; j < active.size(); ++j) {
      const int64_t i = active[j];
      const int32_t t = sample_token(logits.data() + j * V, V, o, rngs[i]);
      res[i].tokens.push_back(t);
      bool go = on_token ? on_token(i, t) : true;
      if (t == o.eos_token) res[i].finish = FinishReason::Eos;
      else if (!go) res[i].finish = FinishReason::Stop;
      else if ((int64_t)res[i].tokens.size() >= o.max_new_tokens || caches[i].len + 1 >= max_pos)  // prompt + new <= max_pos
        res[i].finish = FinishReason::Length;
      else {
        next[i] = t;
        still.push_back(i);
      }
    }
    active = still;
    if (!eng.any_rank_busy(!active.empty())) break;
    segs.clear();
    for (int64_t i : active) segs.push_back(Segment{&caches[i], &next[i], 1});
    eng.step(segs, false, logits);
    st.decode_steps++;
    st.decode_tokens += (int64_t)active.size();
  }
  st.decode_s = std::chrono::duration<double>(clock::now() - t0).count();
  if (stats) *stats = st;
  return res;
}

GenerationResult continue_sequence(InferenceEngine& eng, KvCache& cache, const std::vector<int32_t>& input,
                                   const SamplingOptions& o, Rng& rng, const std::function<bool(int32_t)>& on_token) {
  const int64_t V = eng.config().vocab_size;
  GenerationResult res;
  if (input.empty()) fail("generate: no input tokens");
  if (o.max_new_tokens < 0) fail("generate: max_new_tokens must be >= 0, got {}", o.max_new_tokens);
  std::vector<float> logits;
  Segment seg{&cache, input.data(), (int64_t)input.size()};
  eng.step(std::span<const Segment>(&seg, 1), false, logits);
  int32_t t = 0;
  while (true) {
    t = sample_token(logits.data(), V, o, rng);
    res.tokens.push_back(t);
    const bool go = on_token ? on_token(t) : true;
    if (t == o.eos_token) {
      res.finish = FinishReason::Eos;
      break;
    }
    if (!go) {
      res.finish = FinishReason::Stop;
      break;
    }
    if ((int64_t)res.tokens.size() >= o.max_new_tokens || cache.len + 1 >= cache.capacity) {
      res.finish = FinishReason::Length;
      break;
    }
    seg = Segment{&cache, &t, 1};
    eng.step(std::span<const Segment>(&seg, 1), false, logits);
  }
  // Keep the last sampled token in the cache too, so the next turn continues after it.
  if (cache.len < cache.capacity) {
    seg = Segment{&cache, &t, 1};
    eng.step(std::span<const Segment>(&seg, 1), false, logits);
  }
  return res;
}

std::vector<double> score_tokens(InferenceEngine& eng, const std::vector<int32_t>& tokens, int64_t ctx) {
  return score_sequences(eng, {tokens}, ctx).front();
}

std::vector<std::vector<double>> score_sequences(InferenceEngine& eng, const std::vector<std::vector<int32_t>>& seqs,
                                                 int64_t ctx, Communicator* world,
                                                 const std::function<void(int64_t)>& on_scored) {
  const ModelConfig& m = eng.config();
  const int64_t V = m.vocab_size;
  if (ctx <= 0) ctx = m.max_position_embeddings;
  if (ctx < 2 || ctx > m.max_position_embeddings)
    fail("score: context {} must be between 2 and max_position_embeddings ({})", ctx, m.max_position_embeddings);
  struct Window {
    int64_t seq, start, end;
  };
  std::vector<Window> windows;
  std::vector<std::vector<double>> out(seqs.size());
  int64_t longest = 0;
  for (size_t q = 0; q < seqs.size(); ++q) {
    const int64_t n = (int64_t)seqs[q].size();
    if (n < 2) continue;
    out[q].assign((size_t)(n - 1), 0.0);
    longest = std::max(longest, n);
    for (int64_t s = 0; s + 1 < n; s += ctx - 1) windows.push_back({(int64_t)q, s, std::min(n, s + ctx)});
  }
  const int64_t P = world ? world->size() : 1, rank = world ? world->rank() : 0;
  const int64_t W = (int64_t)windows.size(), rounds = (W + P - 1) / P;
  std::optional<KvCache> cache;
  if (longest >= 2) cache.emplace(eng.new_cache(std::min(ctx, longest)));
  std::vector<float> logits;
  int64_t scored = 0;
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t w = round * P + rank;
    if (w >= W) {
      eng.step({}, true, logits);  // nothing left here; the other ranks may still need this rank's experts
      continue;
    }
    const Window& win = windows[(size_t)w];
    const std::vector<int32_t>& tokens = seqs[(size_t)win.seq];
    cache->clear();
    Segment seg{&*cache, tokens.data() + win.start, win.end - win.start};
    eng.step(std::span<const Segment>(&seg, 1), true, logits);
    for (int64_t i = win.start; i + 1 < win.end; ++i) {
      const float* row = logits.data() + (i - win.start) * V;
      out[(size_t)win.seq][(size_t)i] = log_softmax(row, V).logprob(row[tokens[i + 1]]);
    }
    scored += win.end - win.start - 1;
    if (on_scored) on_scored(scored);
  }
  if (P > 1)
    for (auto& o : out) world->all_reduce_sum(o.data(), (int64_t)o.size());
  return out;
}

}  // namespace dsmoe
