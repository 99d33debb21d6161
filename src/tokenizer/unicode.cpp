#include "tokenizer/unicode.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uniset.h>
#include <unicode/uchar.h>

#include <algorithm>
#include <array>
#include <iterator>
#include <memory>

#ifndef DSMOE_TOK_NORM_AGE
#define DSMOE_TOK_NORM_AGE "9.0"
#endif

#include "core/error.h"

namespace dsmoe::tok {

void utf8_append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += (char)c;
  } else if (c < 0x800) {
    out += (char)(0xC0 | (c >> 6));
    out += (char)(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += (char)(0xE0 | (c >> 12));
    out += (char)(0x80 | ((c >> 6) & 0x3F));
    out += (char)(0x80 | (c & 0x3F));
  } else {
    out += (char)(0xF0 | (c >> 18));
    out += (char)(0x80 | ((c >> 12) & 0x3F));
    out += (char)(0x80 | ((c >> 6) & 0x3F));
    out += (char)(0x80 | (c & 0x3F));
  }
}

// Length of the well-formed UTF-8 sequence at s[i], or -(bytes of the maximal ill-formed prefix)
// (at least 1) when it is not well formed (Unicode 3.9, "maximal subpart").
static int utf8_check(std::string_view s, size_t i) {
  unsigned char b = (unsigned char)s[i];
  if (b < 0x80) return 1;
  int n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) n = 2;
  else if (b == 0xE0) n = 3, lo = 0xA0;
  else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) n = 3;
  else if (b == 0xED) n = 3, hi = 0x9F;
  else if (b == 0xF0) n = 4, lo = 0x90;
  else if (b >= 0xF1 && b <= 0xF3) n = 4;
  else if (b == 0xF4) n = 4, hi = 0x8F;
  else return -1;
  for (int k = 1; k < n; ++k) {
    if (i + k >= s.size()) return -k;
    unsigned char c = (unsigned char)s[i + k];
    unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (c < l || c > h) return -k;
  }
  return n;
}

size_t utf8_invalid_at(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= s.size()) {
      uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ULL) break;
      i += 8;
    }
    if (i >= s.size()) break;
    int n = utf8_check(s, i);
    if (n < 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    int n = utf8_check(s, i);
    if (n > 0) {
      out.append(s.data() + i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += -n;
    }
  }
  return out;
}

namespace {
// Hugging Face normalises (NFC, NFD, NFKC, NFKD) with the tables of the
// unicode-normalization-alignments crate, Unicode 9.0: characters assigned later pass through
// untouched. ICU reproduces that with its normalisers filtered to the characters of that age (checked
// code point by code point against the reference by the parity tests).
constexpr const char* kNormAge = "[:age=" DSMOE_TOK_NORM_AGE ":]";

struct Normalizers {
  icu::UnicodeSet filter;
  std::unique_ptr<icu::FilteredNormalizer2> nfc, nfd, nfkc, nfkd;
  Normalizers() {
    UErrorCode err = U_ZERO_ERROR;
    filter.applyPattern(icu::UnicodeString(kNormAge), err);
    if (U_FAILURE(err)) fail("ICU: cannot build the set {}: {}", kNormAge, u_errorName(err));
    filter.freeze();
    nfc = std::make_unique<icu::FilteredNormalizer2>(*icu::Normalizer2::getNFCInstance(err), filter);
    nfd = std::make_unique<icu::FilteredNormalizer2>(*icu::Normalizer2::getNFDInstance(err), filter);
    nfkc = std::make_unique<icu::FilteredNormalizer2>(*icu::Normalizer2::getNFKCInstance(err), filter);
    nfkd = std::make_unique<icu::FilteredNormalizer2>(*icu::Normalizer2::getNFKDInstance(err), filter);
    if (U_FAILURE(err)) fail("ICU: cannot load Unicode normalisation data: {}", u_errorName(err));
  }
};
const Normalizers& normalizers() {
  static const Normalizers n;
  return n;
}
}  // namespace

bool normalize_form(NormForm form, std::string_view s, std::string& out) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  const Normalizers& all = normalizers();
  switch (form) {
    case NormForm::NFC: n = all.nfc.get(); break;
    case NormForm::NFD: n = all.nfd.get(); break;
    case NormForm::NFKC: n = all.nfkc.get(); break;
    case NormForm::NFKD: n = all.nfkd.get(); break;
  }
  icu::StringPiece sp(s.data(), (int32_t)s.size());
  if (n->isNormalizedUTF8(sp, err) && U_SUCCESS(err)) return false;
  err = U_ZERO_ERROR;
  out.clear();
  icu::StringByteSink<std::string> sink(&out, (int32_t)s.size());
  n->normalizeUTF8(0, sp, sink, nullptr, err);
  if (U_FAILURE(err)) fail("ICU: Unicode normalisation failed: {}", u_errorName(err));
  return true;
}

namespace {
// HF's Lowercase is Rust's char::to_lowercase, whose Unicode tables are newer than ICU 72's: the
// mapping is taken from the reference itself (tests/tokenizer/gen_unicode_tables.js).
struct LowerMap {
  char32_t from;
  char32_t to[3];
};
constexpr LowerMap kLower[] = {
#include "tokenizer/lowercase.inc"
};
}  // namespace

bool lowercase(std::string_view s, std::string& out) {
  size_t i = 0;
  bool changed = false;
  out.clear();
  while (i < s.size()) {
    size_t start = i;
    unsigned char b = (unsigned char)s[i];
    if (b < 0x80) {
      ++i;
      if (b >= 'A' && b <= 'Z') {
        out += (char)(b + 32);
        changed = true;
      } else {
        out += (char)b;
      }
      continue;
    }
    char32_t c = utf8_next(s, i);
    const LowerMap* e = std::lower_bound(std::begin(kLower), std::end(kLower), c,
                                         [](const LowerMap& m, char32_t x) { return m.from < x; });
    if (e != std::end(kLower) && e->from == c) {
      for (char32_t t : e->to)
        if (t) utf8_append(out, t);
      changed = true;
    } else {
      out.append(s.data() + start, i - start);
    }
  }
  return changed;
}

namespace {
// The characters HF's StripAccents removes: the marks of its Unicode 9.0 tables, taken from the
// reference (tests/tokenizer/gen_unicode_tables.js).
struct MarkRange {
  char32_t first, last;
};
constexpr MarkRange kMarks[] = {
#include "tokenizer/strip_accents.inc"
};
bool is_stripped_mark(char32_t c) {
  const MarkRange* r = std::upper_bound(std::begin(kMarks), std::end(kMarks), c,
                                        [](char32_t x, const MarkRange& m) { return x < m.first; });
  return r != std::begin(kMarks) && c <= (r - 1)->last;
}
}  // namespace

bool strip_marks(std::string_view s, std::string& out) {
  size_t i = 0;
  bool changed = false;
  out.clear();
  while (i < s.size()) {
    size_t start = i;
    char32_t c = utf8_next(s, i);
    if (c >= 0x300 && is_stripped_mark(c)) {
      changed = true;
      continue;
    }
    out.append(s.data() + start, i - start);
  }
  return changed;
}

bool is_whitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return u_isUWhiteSpace((UChar32)c);
}

bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  UChar32 u = (UChar32)c;
  if (u_hasBinaryProperty(u, UCHAR_ALPHABETIC) || u_hasBinaryProperty(u, UCHAR_JOIN_CONTROL)) return true;
  return (U_GET_GC_MASK(u) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0;
}

namespace {
struct ByteTables {
  std::array<char32_t, 256> to_char{};
  std::array<std::string, 256> utf8;
  std::array<int16_t, 256 + 68> from_char;
  ByteTables() {
    from_char.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[b] = printable ? (char32_t)b : (char32_t)(256 + extra++);
      utf8_append(utf8[b], to_char[b]);
      from_char[to_char[b]] = (int16_t)b;
    }
  }
};
const ByteTables& byte_tables() {
  static const ByteTables t;
  return t;
}
}  // namespace

char32_t byte_to_char(unsigned char b) { return byte_tables().to_char[b]; }

int char_to_byte(char32_t c) { return c < 256 + 68 ? byte_tables().from_char[c] : -1; }

const std::string& byte_char_utf8(unsigned char b) { return byte_tables().utf8[b]; }

void byte_level_map(std::string_view s, std::string& out) {
  const auto& t = byte_tables().utf8;
  for (unsigned char b : s) out += t[b];
}

const std::string& hf_punctuation_class() {
  static const std::string cls = [] {
    UErrorCode err = U_ZERO_ERROR;
    icu::UnicodeSet set(icu::UnicodeString("[[:P:]&[:age=8.0:]]"), err);
    if (U_FAILURE(err)) fail("ICU: cannot build the punctuation set: {}", u_errorName(err));
    set.add(0x21, 0x2f).add(0x3a, 0x40).add(0x5b, 0x60).add(0x7b, 0x7e);  // ASCII punctuation (Rust's is_ascii_punctuation)
    std::string out = "[";
    for (int32_t i = 0; i < set.getRangeCount(); ++i)
      out += fmt::format("\\x{{{:x}}}-\\x{{{:x}}}", (uint32_t)set.getRangeStart(i), (uint32_t)set.getRangeEnd(i));
    return out + "]";
  }();
  return cls;
}

}  // namespace dsmoe::tok
