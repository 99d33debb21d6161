// The inference forward: prefill and KV-cache decoding of several sequences at once. Each layer is
// the decoder layer shared with training (model/decoder_layer.h) with the inference strategies:
//   attention  per sequence over its own cache of the rotated keys and the values (the new rows are
//              appended first; q_len < kv_len, the ops' contract), so sequences of different lengths
//              need no padding and a batch computes what each sequence would compute alone (tested);
//   weights    the InferenceWeights' storage (fp32, bf16, q8, q4): every projection is the one linear
//              kernel of that storage (ops/qlinear.h): a GEMV streaming the weights once for decode
//              steps, dequantized tiles + SGEMM for prefill;
//   FFN        dense SwiGLU or the dropless inference MoE layer (model/moe_infer.h: token-major when a
//              step has fewer (token, expert) pairs than experts, grouped by expert otherwise).
// The rows of all sequences are packed into one matrix for every projection and the MoE layer
// (weights are read once per step for the whole batch).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/rng.h"
#include "infer/infer_weights.h"
#include "infer/sampling.h"
#include "model/model.h"
#include "ops/rope.h"

namespace dsmoe {

// How a KV cache stores keys and values: fp32, or rounded to bf16 (nearest even, core/bf16.h) as
// they are appended, which halves the cache (the attention widens them back to fp32 exactly, so
// the only error is that rounding: 2^-9 relative per element).
enum class KvType { F32, BF16 };
const char* kv_type_name(KvType t);  // "f32" | "bf16"
// "f32" | "bf16"; anything else is a UsageError naming `flag` (e.g. "--kv-cache").
KvType parse_kv_type(const std::string& s, const char* flag);
int64_t kv_type_bytes(KvType t);     // bytes per element: 4 | 2

// Rotated keys and values of one sequence: k, v [layers, capacity, kv_heads * head_dim], in the
// vectors of its type (k, v for F32; kh, vh holding bf16 bits for BF16; the others stay empty).
struct KvCache {
  int64_t layers = 0, capacity = 0, kv_dim = 0;
  int64_t len = 0;  // positions filled (the next token's position)
  KvType type = KvType::F32;
  std::vector<float> k, v;
  std::vector<uint16_t> kh, vh;
  KvCache() = default;
  KvCache(const ModelConfig& m, int64_t capacity, KvType type = KvType::F32);
  void clear() { len = 0; }
  int64_t bytes() const { return 2 * layers * capacity * kv_dim * kv_type_bytes(type); }
  // Keys and values of one token over all layers: what a cache of `tokens` positions allocates per token.
  static int64_t bytes_per_token(const ModelConfig& m, KvType type);
  // Stores rows [len, len + n) of `layer` from fp32 k, v [n, kv_dim] (rounded for BF16).
  void append(int64_t layer, const float* k_rows, const float* v_rows, int64_t n);
};

// What the start-up line of a command says about its caches: "bf16, 48 KiB per token, 0.101 GB
// for 2048 tokens" (tokens: the positions all of the command's caches hold together).
std::string kv_cache_note(const ModelConfig& m, KvType type, int64_t tokens);

// New tokens of one sequence in a step: they take positions cache->len, cache->len + 1, ...
struct Segment {
  KvCache* cache;
  const int32_t* tokens;
  int64_t n;
};

class InferenceEngine {
 public:
  // fp32, viewing the model's parameters (no copy); the model must outlive the engine.
  explicit InferenceEngine(const Model& model, KvType kv = KvType::F32);
  // Any storage; the weights must outlive the engine. kv: the storage of the caches made by
  // new_cache (generation, scoring, chat, the server's slots); step() takes caches of either type.
  // Expert parallelism: the weights hold the dispatcher's routed experts only
  // (InferenceWeights::shard), every MoE layer sends its rows to the experts' ranks (the training
  // layer's dispatcher), and `group` (the dispatcher's expert-parallel communicator; both
  // non-owning, outliving the engine) steps in lock-step: every rank of it must call step() the same
  // number of times, with no segments when it has nothing to run.
  explicit InferenceEngine(const InferenceWeights& weights, TokenDispatcher* dispatcher = nullptr,
                           Communicator* group = nullptr, KvType kv = KvType::F32);
  InferenceEngine(const InferenceWeights& weights, KvType kv) : InferenceEngine(weights, nullptr, nullptr, kv) {}
  const ModelConfig& config() const { return cfg_; }
  // True when several processes step together (expert parallelism).
  bool parallel() const { return group_ != nullptr && group_->size() > 1; }
  // Whether any rank stepping with this one still has work (`mine`: this rank has); `mine` alone in
  // one process. Collective over the group when parallel().
  bool any_rank_busy(bool mine);
  const InferenceWeights& weights() const { return *W_; }
  KvType kv_type() const { return kv_; }
  KvCache new_cache(int64_t capacity) const { return KvCache(cfg_, capacity, kv_); }

  // Runs the segments' tokens through the model and appends them to their caches (no segments: only
  // the parallel MoE layers' exchanges, for a rank with nothing to run). Logits rows
  // (fp32, [rows, V]) go to `logits`: the last new token of each segment, or every new token when
  // all_logits (segment order, token order within a segment).
  void step(std::span<const Segment> segs, bool all_logits, std::vector<float>& logits);

 private:
  std::unique_ptr<InferenceWeights> view_;  // the fp32 view when built from a Model
  const InferenceWeights* W_;
  TokenDispatcher* dispatcher_ = nullptr;
  Communicator* group_ = nullptr;
  ModelConfig cfg_;
  KvType kv_ = KvType::F32;
  ops::RopeTable rope_;
  // scratch, grown as needed
  std::vector<int32_t> tokens_, pos_;
  std::vector<float> x_, ln_, q_, k_, v_, att_, h_, ffn_, gu_, act_, sel_;
  MoeInferScratch moe_;
};

// ---------- generation over the engine ----------

enum class FinishReason { Length, Eos, Stop };
const char* finish_reason_name(FinishReason r);

struct GenerationResult {
  std::vector<int32_t> tokens;  // the new tokens (EOS included when it ended the sequence)
  FinishReason finish = FinishReason::Length;
};

// Generates continuations of several prompts in one batch: one prefill step for all prompts, then
// one decode step per token for the sequences still running. Sequence i samples with its own
// generator Rng(seed) (so a batch gives each prompt what it would get alone with that seed).
// on_token(i, token) is called as each token is produced (streaming); returning false stops that
// sequence with FinishReason::Stop (stop strings are checked by the caller, who sees the text).
// A sequence also stops at o.eos_token, after o.max_new_tokens, or when prompt + new tokens reach
// max_position_embeddings.
struct GenerationStats {
  int64_t prefill_tokens = 0, decode_steps = 0, decode_tokens = 0;
  double prefill_s = 0, decode_s = 0;  // wall time of the prefill step / of all decode steps (incl. sampling)
};
std::vector<GenerationResult> generate_batch(InferenceEngine& eng, const std::vector<std::vector<int32_t>>& prompts,
                                             const SamplingOptions& o, uint64_t seed,
                                             const std::function<bool(int64_t, int32_t)>& on_token = {},
                                             GenerationStats* stats = nullptr);

// Continues one sequence whose cache already holds its context (chat): feeds `input` (>= 1 token),
// then samples up to o.max_new_tokens. The cache keeps everything, the sampled tokens included.
GenerationResult continue_sequence(InferenceEngine& eng, KvCache& cache, const std::vector<int32_t>& input,
                                   const SamplingOptions& o, Rng& rng,
                                   const std::function<bool(int32_t)>& on_token = {});

// Caches come from eng.new_cache (the engine's KvType).

// log p(tokens[t] | tokens[<t]) for t = 1..n-1 (n-1 values, fp64 log-softmax of fp32 logits), in
// windows of at most `ctx` tokens (0 = max_position_embeddings) that overlap by one token, so every
// token but the first is scored once; each window starts from an empty cache.
std::vector<double> score_tokens(InferenceEngine& eng, const std::vector<int32_t>& tokens, int64_t ctx = 0);

// score_tokens of several sequences, whose windows (in sequence order) are spread over the ranks of
// `world` (null: this process alone): window w runs on rank w % P, one window per round on every
// rank, and a rank with none left in a round takes an empty step (so that the expert-parallel
// exchanges of its group stay in step). Every rank returns every sequence's log-probs, each value
// computed by exactly one rank (then summed with zeros: exact). on_scored(n): this rank has scored n
// tokens (for progress).
std::vector<std::vector<double>> score_sequences(InferenceEngine& eng, const std::vector<std::vector<int32_t>>& seqs,
                                                 int64_t ctx = 0, Communicator* world = nullptr,
                                                 const std::function<void(int64_t)>& on_scored = {});

}  // namespace dsmoe
