#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <cctype>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace dsmoe::tok {

namespace {
// Oniguruma's classes in its Unicode mode, written out as PCRE2 class items.
// \s: the White_Space property (PCRE2's UCP \s also takes U+180E, which is not White_Space).
constexpr const char* kSpaceItems = "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}"
                                    "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
// \h: a hexadecimal digit in Oniguruma (horizontal space in PCRE2).
constexpr const char* kHexItems = "0-9a-fA-F";

// Characters that Unicode 14.0 (PCRE2 10.42) leaves unassigned but the reference's Oniguruma knows.
struct DeltaRange {
  char32_t first, last;
  const char* gc;
};
constexpr DeltaRange kDelta[] = {
#include "tokenizer/unicode_delta.inc"
};

// Class items for the delta characters of general category `gc` ("L", "Lu", ...); "" for a name that
// is not a general category (scripts etc. are left to PCRE2).
std::string delta_items(const std::string& gc) {
  static const char* kCats[] = {"L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
                                "P", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So", "Z",
                                "Zs", "Zl", "Zp"};
  bool known = false;
  for (const char* c : kCats) known |= gc == c;
  if (!known) return "";
  std::string out;
  for (const DeltaRange& r : kDelta) {
    bool hit = gc.size() == 1 ? r.gc[0] == gc[0] : gc == r.gc;
    if (!hit) continue;
    out += fmt::format("\\x{{{:X}}}", (uint32_t)r.first);
    if (r.last != r.first) out += fmt::format("-\\x{{{:X}}}", (uint32_t)r.last);
  }
  return out;
}
// \w: Oniguruma's Unicode word class is UTS #18's: Alphabetic, marks, decimal digits, connector
// punctuation and Join_Control (U+200C/D). So letter numbers (U+2160 ROMAN NUMERAL ONE) and
// circled letters (U+24B6, So but Alphabetic) are word characters and other numbers (U+00B2) are not;
// PCRE2's UCP \w is \p{L}, all of \p{N} and '_'. Each item carries the characters newer than PCRE2's
// tables (a Unicode 16 letter such as U+134E1; found by a random corpus seed).
const std::string& word_items() {
  static const std::string items = [] {
    std::string s = "\\p{Alphabetic}\\p{Join_Control}";
    for (const char* gc : {"L", "Nl", "M", "Nd", "Pc"}) s += delta_items(gc);
    return s + "\\p{M}\\p{Nd}\\p{Pc}";
  }();
  return items;
}
}  // namespace

std::string onig_to_pcre2(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 16);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char e = p[i + 1];
      const char* items = nullptr;
      bool negated = false;
      switch (e) {
        case 's': items = kSpaceItems; break;
        case 'S': items = kSpaceItems, negated = true; break;
        case 'w': items = word_items().c_str(); break;
        case 'W': items = word_items().c_str(), negated = true; break;
        case 'h': items = kHexItems; break;
        case 'H': items = kHexItems, negated = true; break;
        default: break;
      }
      if (items) {
        if (!in_class) {
          out += negated ? "[^" : "[";
          out += items;
          out += "]";
        } else if (!negated) {
          out += items;
        } else {
          out.append(p, i, 2);  // a negated class inside a class: PCRE2's own meaning
        }
        ++i;
        continue;
      }
      if ((e == 'p' || e == 'P') && i + 2 < p.size() && p[i + 2] == '{') {
        // \p{Gc}: PCRE2's class plus the characters newer than its Unicode tables.
        size_t close = p.find('}', i + 3);
        if (close != std::string::npos) {
          std::string name = p.substr(i + 3, close - i - 3);
          bool neg = e == 'P';
          if (!name.empty() && name[0] == '^') neg = !neg, name.erase(0, 1);
          std::string extra = delta_items(name);
          std::string self = fmt::format("\\p{{{}}}", name);
          if (extra.empty()) {
            out += neg ? fmt::format("\\P{{{}}}", name) : self;
          } else if (!in_class) {
            out += (neg ? "[^" : "[") + self + extra + "]";
          } else if (!neg) {
            out += self + extra;
          } else {
            out += fmt::format("\\P{{{}}}", name);  // negated inside a class: PCRE2's own tables
          }
          i = close;
          continue;
        }
      }
      if (e == 'u') {
        // \uHHHH (Ruby syntax) -> \x{HHHH}
        bool hex = i + 6 <= p.size();
        for (size_t k = i + 2; hex && k < i + 6; ++k) hex = std::isxdigit((unsigned char)p[k]);
        if (hex) {
          out += "\\x{";
          out.append(p, i + 2, 4);
          out += "}";
          i += 5;
          continue;
        }
      }
      out.append(p, i, 2);
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX class [:alpha:]
      size_t end = p.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(p, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pattern, const std::string& where) : pattern_(pattern) {
  std::string translated = onig_to_pcre2(pattern);
  int err = 0;
  PCRE2_SIZE off = 0;
  pcre2_code* code = pcre2_compile((PCRE2_SPTR)translated.data(), translated.size(), PCRE2_UTF | PCRE2_UCP, &err,
                                   &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("{}: regex {:?} does not compile: {} (at offset {} of the PCRE2 form {:?})", where, pattern,
         (const char*)msg, (size_t)off, translated);
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free((pcre2_code*)code_); }

namespace {
// Per-thread match state shared by every Regex (group 0 is all we read).
struct MatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* js = nullptr;
  MatchState() {
    md = pcre2_match_data_create(1, nullptr);
    mc = pcre2_match_context_create(nullptr);
    js = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
    pcre2_jit_stack_assign(mc, nullptr, js);
  }
  ~MatchState() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);
    pcre2_jit_stack_free(js);
  }
};
MatchState& match_state() {
  thread_local MatchState st;
  return st;
}
}  // namespace

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  out.clear();
  MatchState& st = match_state();
  auto* code = (pcre2_code*)code_;
  PCRE2_SPTR subj = (PCRE2_SPTR)s.data();
  size_t len = s.size();
  size_t last_end = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (last_end <= len) {
    int rc = jit_ ? pcre2_jit_match(code, subj, len, last_end, 0, st.md, st.mc)
                  : pcre2_match(code, subj, len, last_end, PCRE2_NO_UTF_CHECK, st.md, st.mc);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail("regex {:?}: matching failed: {}", pattern_, (const char*)msg);
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    size_t ms = ov[0], me = ov[1];
    if (ms == me && have_last && last_match_end == me) {
      // Oniguruma's iterator: no empty match right after the previous match; retry one character on.
      last_end += last_end < len ? utf8_len((unsigned char)s[last_end]) : 1;
      continue;
    }
    last_end = me;
    have_last = true;
    last_match_end = me;
    out.emplace_back(ms, me);
  }
}

}  // namespace dsmoe::tok
