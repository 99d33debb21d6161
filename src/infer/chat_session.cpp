#include "infer/chat_session.h"

#include <algorithm>

#include "core/error.h"
#include "infer/text_stream.h"

namespace dsmoe {

ChatSession::ChatSession(InferenceEngine& engine, const TextCodec& codec, ChatFormat format, const std::string& system,
                         int64_t context)
    : engine_(engine), codec_(codec), format_(std::move(format)), cache_(engine.new_cache(context)) {
  if (!system.empty()) messages_.push_back({"system", system});
  first_turn_ = messages_.size();
}

std::vector<int32_t> ChatSession::render_tokens() const {
  // Byte-level models have no special tokens: the template's BOS/EOS strings would become bytes.
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();
  if (codec_.is_bytes()) extra = {{"bos_token", ""}, {"eos_token", ""}};
  // The template writes BOS (and EOS after replies) itself, as apply_chat_template(tokenize=True),
  // which encodes without adding special tokens again.
  return codec_.encode(format_.render(messages_, /*add_generation_prompt=*/true, extra), false);
}

ChatSession::Turn ChatSession::reply(const std::string& user, const SamplingOptions& o, Rng& rng,
                                     const std::vector<std::string>& stops,
                                     const std::function<void(const std::string&)>& on_text) {
  Turn turn;
  const std::vector<ChatMessage> before = messages_;
  messages_.push_back({"user", user});
  const int64_t room = std::max<int64_t>(1, std::min<int64_t>(o.max_new_tokens, cache_.capacity / 4));
  std::vector<int32_t> ids = render_tokens();
  while ((int64_t)ids.size() + room > cache_.capacity) {
    if (messages_.size() - first_turn_ <= 1) {
      const int64_t n = (int64_t)ids.size();
      messages_ = before;
      fail("chat: the message needs {} tokens with the conversation's format, and the context holds {} (with {} kept "
           "for the reply); send a shorter message",
           n, cache_.capacity, room);
    }
    // The oldest exchange goes: a user message and the assistant's reply to it.
    size_t n = 1;
    if (messages_.size() - first_turn_ > 2 && messages_[first_turn_ + 1].role == "assistant") n = 2;
    messages_.erase(messages_.begin() + (std::ptrdiff_t)first_turn_, messages_.begin() + (std::ptrdiff_t)(first_turn_ + n));
    turn.dropped_messages += (int64_t)n;
    ids = render_tokens();
  }
  // Reuse the cache up to the first differing token; at least one token is fed to get logits.
  size_t common = 0;
  while (common < cached_.size() && common < ids.size() && cached_[common] == ids[common]) ++common;
  common = std::min(common, ids.size() - 1);
  cache_.len = (int64_t)common;
  cached_.resize(common);
  const std::vector<int32_t> input(ids.begin() + (std::ptrdiff_t)common, ids.end());
  turn.prompt_tokens = (int64_t)ids.size();
  turn.reused_tokens = (int64_t)common;
  TextStream stream(codec_, stops);
  GenerationResult r = continue_sequence(engine_, cache_, input, o, rng, [&](int32_t t) {
    std::string piece;
    const bool go = stream.push(t, piece);
    if (on_text && !piece.empty()) on_text(piece);
    return go;
  });
  const std::string rest = stream.flush();
  if (on_text && !rest.empty()) on_text(rest);
  cached_.insert(cached_.end(), input.begin(), input.end());
  cached_.insert(cached_.end(), r.tokens.begin(), r.tokens.end());
  cached_.resize(std::min<size_t>(cached_.size(), (size_t)cache_.len));  // the last sampled token may not be fed
  turn.text = stream.text();
  turn.finish = r.finish;
  // Stored without the whitespace around it: the templates put their own separator before a reply
  // ("Assistant: " + content), and the model's reply to "Assistant:" starts with a space.
  const size_t b = turn.text.find_first_not_of(" \t\r\n"), e = turn.text.find_last_not_of(" \t\r\n");
  messages_.push_back({"assistant", b == std::string::npos ? std::string() : turn.text.substr(b, e - b + 1)});
  return turn;
}

}  // namespace dsmoe
