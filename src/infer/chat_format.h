// The chat format of a model folder: how a conversation becomes the prompt text, as transformers'
// tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...) produces it.
//
//   auto chat = dsmoe::ChatFormat::load(model_dir);   // at start-up: a bad template fails here
//   std::string prompt = chat.render({{"system", "Be brief."}, {"user", "Hi"}}, true);
//
// The template comes from, in this order: DIR/chat_template.jinja (the file newer transformers
// save), the "chat_template" of DIR/tokenizer_config.json (a string, or a list of
// {"name", "template"} of which "default" is used), else the format of deepseek-moe-16b-chat
// (kDeepSeekChatTemplate). The template sees `messages`, `add_generation_prompt` and the special
// tokens of tokenizer_config.json (bos_token, eos_token, unk_token, pad_token, ...; plain strings
// or {"__type": "AddedToken", "content": ...}); a folder without tokenizer_config.json gets
// DeepSeek's <｜begin▁of▁sentence｜> / <｜end▁of▁sentence｜>.
//
// A GGUF file (`--model FILE.gguf`) is read as llama.cpp reads it: the template is its
// tokenizer.chat_template (else the DeepSeek default), and bos_token / eos_token are the tokens of
// tokenizer.ggml.bos_token_id / eos_token_id in tokenizer.ggml.tokens (a file without those ids
// keeps DeepSeek's, as a folder without tokenizer_config.json does).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "infer/chat_template.h"

namespace dsmoe {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

// deepseek-ai/deepseek-moe-16b-chat's chat_template.
extern const char* const kDeepSeekChatTemplate;

class ChatFormat {
 public:
  // Reads the model folder's template and special tokens. A folder without one gets the DeepSeek
  // default; a template that does not parse, or a malformed tokenizer_config.json, is a
  // dsmoe::Error naming the file.
  // `model`: a model folder or a GGUF file.
  static ChatFormat load(const std::string& model);
  // The DeepSeek default format with DeepSeek's BOS / EOS.
  static ChatFormat deepseek_default();

  // The model's own template text, unparsed, and the file it came from, by the rules of load();
  // both empty when the model has none. What `export` writes into the files it makes.
  struct Source {
    std::string text, origin;
  };
  static Source model_template(const std::string& model);

  // The prompt text of `messages`; add_generation_prompt appends the cue for the assistant's turn.
  // `extra` holds further template variables (a JSON object, e.g. {"tools": [...]}); the
  // template's own raise_exception (say, on roles that do not alternate) is a dsmoe::Error.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  // True when the template came from the model folder, false for the DeepSeek default.
  bool from_model() const { return from_model_; }
  // Where the format came from: "chat_template from DIR/tokenizer_config.json", "chat_template
  // from FILE.gguf (tokenizer.chat_template)" or "DeepSeek default format".
  std::string describe() const;
  // The special token strings passed to the template (empty when the config has none).
  std::string bos_token() const;
  std::string eos_token() const;

 private:
  ChatTemplate template_;
  nlohmann::ordered_json special_tokens_ = nlohmann::ordered_json::object();
  std::string source_;  // the file the template came from; empty for the default
  bool from_model_ = false;
};

}  // namespace dsmoe
