// Surface: the body of an HTTP request to `dsmoe serve` (serve/api_request.h): POST
// /v1/completions and /v1/chat/completions parsed and validated, then, for chat, the messages
// rendered with the DeepSeek chat format and the prompt tokenized, as the server does before a
// request reaches the scheduler. An ApiError (answered as a 4xx) or a dsmoe::Error from the
// template (the server answers it as a 400) is a refusal; anything else would be a 500 or a dead
// handler thread. An accepted request must hold only values in the ranges the header promises.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz_support.h"
#include "infer/chat_format.h"
#include "serve/api_request.h"
#include "small_tokenizer.h"

using namespace dsmoe;

namespace {

void check_request(const serve::ApiRequest& r, bool chat) {
  const bool ok = (chat ? !r.messages.empty() : !r.prompt.empty()) && (!r.max_tokens || *r.max_tokens >= 1) &&
                  r.temperature >= 0 && r.temperature <= 2 && r.top_p > 0 && r.top_p <= 1 && r.top_k >= 0 &&
                  r.stop.size() <= 4;
  if (!ok) std::abort();
  for (const auto& s : r.stop)
    if (s.empty()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ChatFormat format = ChatFormat::deepseek_default();
  const std::string body((const char*)data, size);
  for (const bool chat : {false, true}) {
    serve::ApiRequest r;
    try {
      r = serve::parse_api_request(body, chat);
    } catch (const serve::ApiError& e) {
      if (e.status < 400 || e.status > 499) std::abort();  // a bad body is the client's error
      (void)e.body().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);  // as the server sends it
      continue;
    }
    check_request(r, chat);
    fuzz::refuse_ok([&] {
      const std::string text = chat ? format.render(r.messages, true) : r.prompt;
      (void)fuzz::small_tokenizer().encode(text, !chat);
    });
  }
  return 0;
}
