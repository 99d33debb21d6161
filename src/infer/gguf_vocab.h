// The tokenizer of a GGUF file (tokenizer.ggml.*) <-> a Hugging Face byte-level BPE tokenizer.json.
//
// Export maps dsmoe's tokenizer.json (`dsmoe prepare --tokenizer bpe`: no normalizer, a Split regex
// (Isolated) then ByteLevel without its own regex, or ByteLevel with the GPT-2 regex; a BPE model
// without subword prefixes or byte fallback) to tokenizer.ggml.model "gpt2" with tokens,
// token_type (NORMAL; added tokens CONTROL when special, else USER_DEFINED; ids without a token
// "[PADi]" UNUSED), merges ("a b"), bos/eos ids, add_bos_token / add_eos_token and the
// tokenizer.ggml.pre whose regex in llama.cpp (src/llama-vocab.cpp) is the tokenizer's:
//   "llama-bpe": Llama 3's regex (dsmoe's default); llama.cpp then also ignores merges for words
//                that are whole tokens ("ignore_merges"), which the import sets too
//   "gpt-2":     GPT-2's regex
// Any other regex or component is refused, naming it. A byte-level model (vocab 256, no tokenizer)
// is written as the degenerate BPE it is: the 256 byte tokens in byte order and no merges, so every
// byte is its own id in llama.cpp as in dsmoe; no BOS/EOS.
//
// Import rebuilds a tokenizer.json that encodes as llama.cpp does for those pre types (model "gpt2"
// only; others are refused naming them).
#pragma once
#include <cstdint>
#include <string>

#include "io/gguf.h"

namespace dsmoe {

struct ModelConfig;

struct GgufTokenizerSource {
  std::string json;            // tokenizer.json text; "" = byte-level ids
  std::string origin;          // names it in errors
  int32_t bos = -1, eos = -1;  // -1: none
  bool add_bos = false, add_eos = false;  // what encoding with special tokens adds
  std::string chat_template;              // tokenizer.chat_template ("" = none)
};
void write_gguf_vocab(GgufWriter& w, const GgufTokenizerSource& src, const ModelConfig& m);

struct GgufTokenizer {
  std::string json;  // tokenizer.json text
  int32_t bos = -1, eos = -1;
};
// Throws naming the file and key if the file has no tokenizer or one dsmoe cannot rebuild.
GgufTokenizer gguf_tokenizer_json(const GgufFile& f);

}  // namespace dsmoe
