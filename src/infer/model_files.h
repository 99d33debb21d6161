// The files beside a model's weights that make a folder complete, as transformers' save_pretrained
// writes them: tokenizer.json, tokenizer_config.json (BOS/EOS tokens, add_bos_token, the chat
// template) and generation_config.json (the ids generation starts and stops with).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "infer/text_codec.h"

namespace dsmoe {

struct ModelConfig;

// deepseek-moe-16b-chat's chat_template (its tokenizer_config.json): the format `dsmoe chat` uses
// when a model folder has none, and the one `dsmoe prepare` writes for the tokenizers it trains.
//   <BOS>[system\n\n]User: {msg}\n\nAssistant: {reply}<EOS>User: {msg}\n\nAssistant:
inline constexpr const char* kDeepSeekChatTemplate =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

// A tokenizer_config.json for a tokenizer.json that has none: bos_token / eos_token spelled as the
// tokenizer spells ids bos / eos (-1: none), add_bos_token as its post-processor does,
// add_eos_token false, and the given chat template ("" = none).
nlohmann::json make_tokenizer_config(const std::string& tokenizer_json, int32_t bos, int32_t eos,
                                     const std::string& chat_template);

// Writes DIR/tokenizer.json (a copy of `codec`'s file), DIR/tokenizer_config.json (the one beside it,
// or a made one) and DIR/generation_config.json. A byte-level codec writes generation_config.json
// only (byte ids need no tokenizer file).
void write_model_text_files(const std::string& dir, const TextCodec& codec, const ModelConfig& m);

}  // namespace dsmoe
