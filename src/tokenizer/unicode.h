// Unicode helpers for the tokenizer: UTF-8 walking and validation, the lossy UTF-8 decoding that
// Hugging Face's decoders use (Rust's String::from_utf8_lossy), normalisation forms and case mapping
// (ICU), character properties, and the GPT-2 byte <-> character table of byte-level BPE.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace dsmoe::tok {

// Length in bytes of the UTF-8 sequence that starts with lead byte `b` (1 for invalid leads, so a
// walk over arbitrary bytes always advances).
inline int utf8_len(unsigned char b) {
  if (b < 0x80) return 1;
  if (b >= 0xF0) return 4;
  if (b >= 0xE0) return 3;
  if (b >= 0xC0) return 2;
  return 1;
}

// Decodes the code point at s[i] (valid UTF-8 assumed) and advances i.
inline char32_t utf8_next(std::string_view s, size_t& i) {
  unsigned char b = (unsigned char)s[i];
  if (b < 0x80) {
    ++i;
    return b;
  }
  int n = utf8_len(b);
  char32_t c = b & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
  for (int k = 1; k < n && i + k < s.size(); ++k) c = (c << 6) | ((unsigned char)s[i + k] & 0x3F);
  i += n;
  return c;
}

// Decodes the code point that ends at s[i) (valid UTF-8 assumed) and moves i back to its start.
inline char32_t utf8_prev(std::string_view s, size_t& i) {
  size_t j = i - 1;
  while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) --j;
  size_t k = j;
  char32_t c = utf8_next(s, k);
  i = j;
  return c;
}

void utf8_append(std::string& out, char32_t c);

// Byte offset of the first invalid UTF-8 sequence in s, or npos when s is valid UTF-8.
size_t utf8_invalid_at(std::string_view s);

// Rust's String::from_utf8_lossy: each maximal ill-formed subsequence becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Unicode normalisation forms (ICU). Returns false (out untouched) when s is already normalised.
enum class NormForm { NFC, NFD, NFKC, NFKD };
bool normalize_form(NormForm form, std::string_view s, std::string& out);

// Rust's str::to_lowercase applied character by character (char::to_lowercase: full, context-free
// lower-case mapping). Returns false when nothing changed.
bool lowercase(std::string_view s, std::string& out);

// Drops combining marks (general category M): HF's StripAccents. Returns false when nothing changed.
bool strip_marks(std::string_view s, std::string& out);

// Unicode White_Space (Rust's char::is_whitespace, regex \s).
bool is_whitespace(char32_t c);
// The character class HF's Punctuation pre-tokenizer splits on, as a PCRE2 class "[...]": ASCII
// punctuation plus general category P* as of Unicode 8.0 (the data of the Rust crate HF uses, probed
// against HF over every P and S character; PCRE2 would also split e.g. U+2E5B, added in Unicode 14).
const std::string& hf_punctuation_class();
// Rust regex \w: Alphabetic, M, Nd, Pc, Join_Control.
bool is_word_char(char32_t c);

// GPT-2 byte-level alphabet: every byte maps to one printable character.
char32_t byte_to_char(unsigned char b);
// The inverse; -1 when c is not in the byte-level alphabet.
int char_to_byte(char32_t c);
// UTF-8 of byte_to_char(b) for every byte, precomputed.
const std::string& byte_char_utf8(unsigned char b);
// Appends the byte-level mapping of the raw bytes s.
void byte_level_map(std::string_view s, std::string& out);

}  // namespace dsmoe::tok
