// A tokenizer as Hugging Face keeps it: tokenizer.json and, beside it, tokenizer_config.json
// (BOS/EOS, add_bos_token, the chat template). Copying one copies both: prepare, train and export
// each carry the tokenizer into the folder they write.
#pragma once
#include <string>

namespace dsmoe {

// Writes DIR/tokenizer.json from `tokenizer_json` and DIR/tokenizer_config.json from the file beside
// it when there is one (atomically each). Returns whether a tokenizer_config.json was copied.
bool copy_tokenizer_files(const std::string& tokenizer_json, const std::string& dir);

}  // namespace dsmoe
