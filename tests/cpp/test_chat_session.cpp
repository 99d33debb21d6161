// infer/chat_session.h: every reply is what a fresh greedy generation from the whole rendered
// conversation gives (so reusing the KV cache across turns changes nothing), the oldest turns leave
// when the context fills (the system message stays), and a message too long for the context is an
// error that leaves the conversation as it was.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/rng.h"
#include "infer/chat_format.h"
#include "infer/chat_session.h"
#include "infer/engine.h"
#include "infer/text_codec.h"
#include "model/model.h"
#include "test_util.h"

using namespace dsmoe;

namespace {

std::vector<int32_t> bytes_of(const std::string& s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

}  // namespace

TEST(ChatSession, RepliesEqualFreshGenerationAndOldTurnsLeaveWhenTheContextFills) {
  const Config cfg = test::tiny_byte_model_config(160, 16);
  Model model(cfg.model);
  Rng init(test::test_seed());
  model.init_weights(init, 0.3);
  InferenceEngine eng(model);
  const TextCodec codec = TextCodec::for_model("", "bytes", cfg.model);
  const ChatFormat format = ChatFormat::deepseek_default();
  ChatSession chat(eng, codec, format, "Be brief.", 160);
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 12;
  Rng rng(0);
  const nlohmann::ordered_json no_specials = {{"bos_token", ""}, {"eos_token", ""}};
  int64_t dropped = 0;
  for (int turn = 0; turn < 12; ++turn) {
    const std::string msg = "message number " + std::to_string(turn);
    // What the session must give: greedy generation from scratch on the conversation it will render.
    std::vector<ChatMessage> expect_msgs = chat.messages();
    expect_msgs.push_back({"user", msg});
    std::string streamed;
    const ChatSession::Turn t = chat.reply(msg, greedy, rng, {}, [&](const std::string& p) { streamed += p; });
    dropped += t.dropped_messages;
    // The conversation the reply was generated from: the session's messages without the new reply.
    std::vector<ChatMessage> used = chat.messages();
    used.pop_back();
    ASSERT_EQ(used.front().role, "system") << "the system message left the conversation";
    ASSERT_EQ(used.back().content, msg);
    const std::string prompt = format.render(used, true, no_specials);
    EXPECT_EQ((int64_t)prompt.size(), t.prompt_tokens);
    EXPECT_LE(t.prompt_tokens + std::min<int64_t>(12, 160 / 4), 160) << "turn " << turn;
    auto fresh = generate_batch(eng, {bytes_of(prompt)}, greedy, 0);
    EXPECT_EQ(streamed, std::string(fresh[0].tokens.begin(), fresh[0].tokens.end()))
        << "turn " << turn << ": the reply differs from a fresh generation (reused " << t.reused_tokens << " tokens)";
    EXPECT_EQ(streamed, t.text);
    if (turn > 0 && t.dropped_messages == 0) EXPECT_GT(t.reused_tokens, 0) << "turn " << turn << " reused nothing";
  }
  EXPECT_GT(dropped, 0) << "12 turns never filled a 160-token context";
  // A message longer than the context: an error, the conversation unchanged.
  const auto before = chat.messages();
  EXPECT_THROW(chat.reply(std::string(400, 'x'), greedy, rng, {}), Error);
  ASSERT_EQ(chat.messages().size(), before.size());
  for (size_t i = 0; i < before.size(); ++i) EXPECT_EQ(chat.messages()[i].content, before[i].content);
}
