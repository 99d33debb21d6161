// A conversation with a model: the messages so far rendered with the model's chat format
// (infer/chat_format.h), one KV cache that keeps what the previous turns computed, and turns
// trimmed from the oldest when the context fills (the system message stays), so a long chat goes
// on instead of ending. Each turn renders the whole conversation and re-tokenizes it; the cache is
// reused up to the first token that differs from what it holds (templates are not always
// prefix-stable, and a reply re-tokenized need not equal the sampled ids), so the prompt is always
// exactly what apply_chat_template + encode would give.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "infer/chat_format.h"
#include "infer/engine.h"
#include "infer/text_codec.h"

namespace dsmoe {

class ChatSession {
 public:
  // context: tokens of the conversation's KV cache (<= max_position_embeddings).
  ChatSession(InferenceEngine& engine, const TextCodec& codec, ChatFormat format, const std::string& system,
              int64_t context);

  struct Turn {
    std::string text;                 // the reply (a stop string, if one ended it, excluded)
    FinishReason finish = FinishReason::Length;
    int64_t prompt_tokens = 0;        // the rendered conversation, in tokens
    int64_t reused_tokens = 0;        // of those, already in the cache
    int64_t dropped_messages = 0;     // oldest messages removed to make room, this turn
  };
  // Adds the user's message and generates the reply; on_text receives the reply's text as it
  // becomes final (see infer/text_stream.h). At least min(o.max_new_tokens, context / 4) tokens of
  // room are kept for the reply. A message that cannot fit even alone is an Error (the
  // conversation is left as it was).
  Turn reply(const std::string& user, const SamplingOptions& o, Rng& rng, const std::vector<std::string>& stops,
             const std::function<void(const std::string&)>& on_text = {});

  const std::vector<ChatMessage>& messages() const { return messages_; }
  int64_t context() const { return cache_.capacity; }

 private:
  std::vector<int32_t> render_tokens() const;

  InferenceEngine& engine_;
  const TextCodec& codec_;
  ChatFormat format_;
  std::vector<ChatMessage> messages_;  // the system message first, when there is one
  size_t first_turn_ = 0;              // index of the first non-system message
  KvCache cache_;
  std::vector<int32_t> cached_;        // the tokens whose keys and values cache_ holds
};

}  // namespace dsmoe
