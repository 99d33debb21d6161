// Surface: a chat_template (tokenizer_config.json's Jinja text) parsed and rendered over a fixed
// conversation, as `dsmoe chat` renders a model folder's template. The render limits are lowered
// so each input's work stays small; they are the same mechanism as the defaults.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz_support.h"
#include "infer/chat_template.h"

using namespace dsmoe;

namespace {

const nlohmann::ordered_json& conversation() {
  static const nlohmann::ordered_json v = {
      {"messages",
       {{{"role", "system"}, {"content", "Be brief."}},
        {{"role", "user"}, {"content", "Hi \xc3\xa9 {{ not a tag }}"}},
        {{"role", "assistant"}, {"content", "Hello."}},
        {{"role", "user"}, {"content", "Count: 1, 2, 3"}}}},
      {"add_generation_prompt", true},
      {"bos_token", "<s>"},
      {"eos_token", "</s>"},
      {"tools", nlohmann::ordered_json::array()},
      {"n", 3},
      {"x", 1.5},
      {"none", nullptr}};
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ChatTemplateLimits limits;
  limits.max_output_bytes = 64 << 10;
  limits.max_work_bytes = 1 << 20;
  limits.max_loop_iterations = 10'000;
  limits.max_call_depth = 16;
  fuzz::refuse_ok([&] {
    const ChatTemplate t = ChatTemplate::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    t.render(conversation(), limits);
  });
  return 0;
}
