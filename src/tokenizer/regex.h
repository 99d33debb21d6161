// Regular expressions for tokenizer.json patterns, run by PCRE2 (JIT) with the semantics of the
// Oniguruma engine that Hugging Face's tokenizers library uses: the pattern is translated where the
// two dialects differ (\s, \w, \h, \uHHHH), and find_all() skips empty matches the way Oniguruma's
// iterator does.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dsmoe::tok {

class Regex {
 public:
  // Throws dsmoe::Error naming `where` (e.g. "tokenizer.json: pre_tokenizer.pattern.Regex") when the
  // pattern does not compile.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Every match in s, left to right, as [start, end) byte offsets. The subject is exactly s:
  // look-ahead and look-behind do not see past its ends. s must be valid UTF-8.
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

// The Oniguruma pattern translated to PCRE2 syntax (exposed for tests).
std::string onig_to_pcre2(const std::string& pattern);

}  // namespace dsmoe::tok
