// The files beside a model's weights that make a folder complete, as transformers' save_pretrained
// writes them: tokenizer.json, tokenizer_config.json (BOS/EOS tokens, add_bos_token, the chat
// template) and generation_config.json (the ids generation starts and stops with).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "infer/text_codec.h"

namespace dsmoe {

struct ModelConfig;

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
