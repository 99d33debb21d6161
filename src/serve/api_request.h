// The OpenAI request bodies the server accepts, parsed and validated: POST /v1/completions and
// POST /v1/chat/completions. A bad field is an ApiError naming it (OpenAI's error object:
// {"error": {"message", "type", "param", "code"}}) with the HTTP status to answer. Fields the server
// does not use (user, logit_bias, ...) are ignored, as OpenAI-compatible servers do; n other than 1
// is refused rather than ignored, since the answer would have the wrong shape.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "infer/chat_format.h"

namespace dsmoe::serve {

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "",
           std::string type = "invalid_request_error")
      : std::runtime_error(message), status(status), param(std::move(param)), code(std::move(code)),
        type(std::move(type)) {}
  int status;
  std::string param, code, type;
  nlohmann::json body() const;  // {"error": {...}}, param / code null when empty
};

constexpr int64_t kMaxTopLogprobs = 20;  // alternatives per token at most (OpenAI's limit)

struct ApiRequest {
  std::optional<std::string> model;   // absent: the served model
  std::string prompt;                 // completions
  std::vector<ChatMessage> messages;  // chat completions
  std::optional<int64_t> max_tokens;  // absent: completions 16 (OpenAI's default), chat the rest of the context
  double temperature = 1.0;           // [0, 2]; 0 = greedy
  double top_p = 1.0;                 // (0, 1]
  int64_t top_k = 0;                  // >= 0 (0 = off); an extension of vLLM and llama.cpp
  std::optional<uint64_t> seed;       // absent: a random seed
  std::vector<std::string> stop;      // at most 4, none empty
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage: a last chunk with the usage
  // -1: no logprobs; else return each token's logprob with this many alternatives, 0..20. Chat:
  // "logprobs": true with "top_logprobs": K (0 when absent; top_logprobs without logprobs is an
  // error, as OpenAI's). Completions: "logprobs": K.
  int64_t top_logprobs = -1;
};

// body: the raw request body. chat selects which of prompt / messages is required.
ApiRequest parse_api_request(const std::string& body, bool chat);

}  // namespace dsmoe::serve
