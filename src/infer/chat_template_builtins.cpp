#include "infer/chat_template_builtins.h"

#include <unicode/uchar.h>
#include <unicode/ucasemap.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace dsmoe::jinja {

void RenderBudget::charge(size_t bytes, const Where& where) {
  if (bytes > limits->max_output_bytes)
    fail_at(where, fmt::format("refusing to build a string of {} bytes (limit max_output_bytes = {})", bytes,
                               limits->max_output_bytes));
  work_bytes += bytes;
  if (work_bytes > limits->max_work_bytes)
    fail_at(where, fmt::format("refusing to build more than {} bytes of text in one render (limit max_work_bytes)",
                               limits->max_work_bytes));
}

void RenderBudget::charge_iteration(const Where& where) {
  if (++iterations > limits->max_loop_iterations)
    fail_at(where, fmt::format("refusing to run more than {} loop iterations in one render (limit max_loop_iterations)",
                               limits->max_loop_iterations));
}

namespace {

// ---- text helpers (Python str semantics on UTF-8) ----

std::string case_map(std::string_view s, bool upper) {
  bool ascii = std::all_of(s.begin(), s.end(), [](char c) { return (unsigned char)c < 0x80; });
  if (ascii) {
    std::string out(s);
    for (char& c : out) c = upper ? (char)std::toupper((unsigned char)c) : (char)std::tolower((unsigned char)c);
    return out;
  }
  // ICU's root-locale full case mapping is Python's (ß -> SS, final sigma, İ -> i̇). One map per
  // thread: a UCaseMap is not safe to share.
  UErrorCode status = U_ZERO_ERROR;
  thread_local std::unique_ptr<UCaseMap, void (*)(UCaseMap*)> map(ucasemap_open("", 0, &status), ucasemap_close);
  if (!map) fail("chat template: ICU case mapping unavailable ({})", u_errorName(status));
  std::string out(s.size() * 3 + 4, '\0');
  for (int attempt = 0; attempt < 2; ++attempt) {
    status = U_ZERO_ERROR;
    int32_t n = upper ? ucasemap_utf8ToUpper(map.get(), out.data(), (int32_t)out.size(), s.data(), (int32_t)s.size(), &status)
                      : ucasemap_utf8ToLower(map.get(), out.data(), (int32_t)out.size(), s.data(), (int32_t)s.size(), &status);
    if (status == U_BUFFER_OVERFLOW_ERROR) {
      out.assign((size_t)n, '\0');
      continue;
    }
    if (U_FAILURE(status)) fail("chat template: ICU case mapping failed ({})", u_errorName(status));
    out.resize((size_t)n);
    return out;
  }
  return out;
}

std::string title_char(char32_t c) {
  std::string out;
  tok::utf8_append(out, (char32_t)u_totitle((UChar32)c));
  return out;
}

std::string char_str(char32_t c) {
  std::string out;
  tok::utf8_append(out, c);
  return out;
}

// str.capitalize(): the first character title-cased, the rest lower-cased.
std::string py_capitalize(const std::string& s) {
  if (s.empty()) return s;
  size_t i = 0;
  char32_t first = tok::utf8_next(s, i);
  return title_char(first) + case_map(std::string_view(s).substr(i), false);
}

// str.title(): title-case each character that follows an uncased one, lower-case the others.
std::string py_title(const std::string& s) {
  std::string out;
  bool previous_cased = false;
  for (char32_t c : code_points(s)) {
    out += previous_cased ? case_map(char_str(c), false) : title_char(c);
    previous_cased = u_hasBinaryProperty((UChar32)c, UCHAR_CASED);
  }
  return out;
}

// Jinja's title filter: words begin after runs of [-\s({\[<]; each word's first character is
// upper-cased and the rest lower-cased.
std::string jinja_title(const std::string& s) {
  auto is_separator = [](char32_t c) { return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_py_space(c); };
  std::vector<char32_t> cps = code_points(s);
  std::string out;
  size_t i = 0;
  while (i < cps.size()) {
    size_t j = i;
    bool sep = is_separator(cps[i]);
    while (j < cps.size() && is_separator(cps[j]) == sep) ++j;
    if (sep) {
      out += from_code_points(&cps[i], &cps[0] + j);
    } else {
      out += case_map(char_str(cps[i]), true);
      out += case_map(from_code_points(&cps[i] + 1, &cps[0] + j), false);
    }
    i = j;
  }
  return out;
}

// str.strip / lstrip / rstrip with Python's argument: None strips whitespace, a string strips any
// of its characters.
std::string py_strip(const std::string& s, const Value* chars, bool left, bool right) {
  std::vector<char32_t> set;
  bool whitespace = !chars || chars->kind == Value::Kind::None;
  if (!whitespace) set = code_points(chars->text);
  auto strip = [&](char32_t c) { return whitespace ? is_py_space(c) : std::find(set.begin(), set.end(), c) != set.end(); };
  size_t begin = 0, end = s.size();
  if (left)
    while (begin < end) {
      size_t i = begin;
      if (!strip(tok::utf8_next(s, i))) break;
      begin = i;
    }
  if (right)
    while (end > begin) {
      size_t i = end;
      if (!strip(tok::utf8_prev(s, i))) break;
      end = i;
    }
  return s.substr(begin, end - begin);
}

ValueList py_split(const std::string& s, const Value* sep, int64_t maxsplit, const Where& where) {
  ValueList out;
  if (!sep || sep->kind == Value::Kind::None) {
    // Runs of whitespace separate; leading and trailing whitespace yield nothing.
    size_t i = 0;
    auto skip_space = [&] {
      while (i < s.size()) {
        size_t j = i;
        if (!is_py_space(tok::utf8_next(s, j))) break;
        i = j;
      }
    };
    skip_space();
    while (i < s.size()) {
      if (maxsplit >= 0 && (int64_t)out.size() == maxsplit) {
        out.push_back(Value::from_string(s.substr(i)));
        return out;
      }
      size_t start = i;
      while (i < s.size()) {
        size_t j = i;
        if (is_py_space(tok::utf8_next(s, j))) break;
        i = j;
      }
      out.push_back(Value::from_string(s.substr(start, i - start)));
      skip_space();
    }
    return out;
  }
  if (!sep->is_string()) fail_at(where, fmt::format("split: must be str or None, not {}", type_name(*sep)));
  if (sep->text.empty()) fail_at(where, "split: empty separator");
  size_t start = 0;
  while (true) {
    size_t at = s.find(sep->text, start);
    if (at == std::string::npos || (maxsplit >= 0 && (int64_t)out.size() == maxsplit)) break;
    out.push_back(Value::from_string(s.substr(start, at - start)));
    start = at + sep->text.size();
  }
  out.push_back(Value::from_string(s.substr(start)));
  return out;
}

ValueList py_rsplit(const std::string& s, const Value* sep, int64_t maxsplit, const Where& where) {
  if (maxsplit < 0) return py_split(s, sep, maxsplit, where);
  // Splitting from the right = splitting the reversed pieces; done on code points.
  ValueList out;
  if (!sep || sep->kind == Value::Kind::None) {
    std::vector<char32_t> cps = code_points(s);
    size_t end = cps.size();
    while (end > 0 && is_py_space(cps[end - 1])) --end;
    while (end > 0) {
      if ((int64_t)out.size() == maxsplit) {
        out.push_back(Value::from_string(from_code_points(cps.data(), cps.data() + end)));
        break;
      }
      size_t begin = end;
      while (begin > 0 && !is_py_space(cps[begin - 1])) --begin;
      out.push_back(Value::from_string(from_code_points(cps.data() + begin, cps.data() + end)));
      end = begin;
      while (end > 0 && is_py_space(cps[end - 1])) --end;
    }
  } else {
    if (!sep->is_string()) fail_at(where, fmt::format("rsplit: must be str or None, not {}", type_name(*sep)));
    if (sep->text.empty()) fail_at(where, "rsplit: empty separator");
    size_t end = s.size();
    while ((int64_t)out.size() < maxsplit) {
      if (end < sep->text.size()) break;
      size_t at = s.rfind(sep->text, end - sep->text.size());
      if (at == std::string::npos) break;
      out.push_back(Value::from_string(s.substr(at + sep->text.size(), end - at - sep->text.size())));
      end = at;
    }
    out.push_back(Value::from_string(s.substr(0, end)));
  }
  std::reverse(out.begin(), out.end());
  return out;
}

// str.splitlines(): the line boundaries Python recognises.
ValueList py_splitlines(const std::string& s, bool keepends) {
  ValueList out;
  std::vector<char32_t> cps = code_points(s);
  size_t start = 0;
  for (size_t i = 0; i < cps.size(); ++i) {
    char32_t c = cps[i];
    bool boundary = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E) || c == 0x85 ||
                    c == 0x2028 || c == 0x2029;
    if (!boundary) continue;
    size_t end = i + 1;
    if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') end = i + 2;
    out.push_back(Value::from_string(from_code_points(cps.data() + start, cps.data() + (keepends ? end : i))));
    start = end;
    i = end - 1;
  }
  if (start < cps.size()) out.push_back(Value::from_string(from_code_points(cps.data() + start, cps.data() + cps.size())));
  return out;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& repl, int64_t count) {
  std::string out;
  if (old.empty()) {
    // Python inserts the replacement before every character and at the end.
    int64_t done = 0;
    size_t i = 0;
    while (i <= s.size()) {
      if (count >= 0 && done == count) {
        out += s.substr(i);
        break;
      }
      out += repl;
      ++done;
      if (i == s.size()) break;
      size_t j = i;
      tok::utf8_next(s, j);
      out.append(s, i, j - i);
      i = j;
    }
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t at = s.find(old, start);
    if (at == std::string::npos) break;
    out.append(s, start, at - start);
    out += repl;
    start = at + old.size();
    ++done;
  }
  out.append(s, start, std::string::npos);
  return out;
}

int64_t code_point_index(const std::string& s, size_t byte_offset) {
  int64_t n = 0;
  for (size_t i = 0; i < byte_offset; ++i) n += ((unsigned char)s[i] & 0xC0) != 0x80;
  return n;
}

// ---- argument helpers ----

Value arg_or(const CallArgs& a, size_t index, std::string_view name, const Value& fallback) {
  const Value* v = a.get(index, name);
  return v ? *v : fallback;
}

std::string string_arg(const CallArgs& a, size_t index, std::string_view name, const char* what) {
  const Value* v = a.get(index, name);
  if (!v) fail_at(a.where, fmt::format("{}: missing argument '{}'", what, name));
  return to_str(*v);
}

int64_t int_arg(const CallArgs& a, size_t index, std::string_view name, int64_t fallback, const char* what) {
  const Value* v = a.get(index, name);
  if (!v || v->kind == Value::Kind::None) return fallback;
  if (!v->is_integral()) fail_at(a.where, fmt::format("{}: argument '{}' must be an integer, not {}", what, name, type_name(*v)));
  return v->as_int();
}

bool bool_arg(const CallArgs& a, size_t index, std::string_view name, bool fallback) {
  const Value* v = a.get(index, name);
  return v ? truthy(*v) : fallback;
}

const Value& self_string(const Value& v, const char* method, const Where& where) {
  if (!v.is_string()) fail_at(where, fmt::format("{}: expected a string (or a tuple of strings), got {}", method, type_name(v)));
  return v;
}

// ---- methods ----

using Method = Value (*)(const Value& self, const CallArgs& a, RenderBudget& budget);

const std::unordered_map<std::string, Method>& string_methods() {
  static const std::unordered_map<std::string, Method> m = {
      {"strip", [](const Value& s, const CallArgs& a, RenderBudget&) { return Value::from_string(py_strip(s.text, a.get(0, "chars"), true, true)); }},
      {"lstrip", [](const Value& s, const CallArgs& a, RenderBudget&) { return Value::from_string(py_strip(s.text, a.get(0, "chars"), true, false)); }},
      {"rstrip", [](const Value& s, const CallArgs& a, RenderBudget&) { return Value::from_string(py_strip(s.text, a.get(0, "chars"), false, true)); }},
      {"split", [](const Value& s, const CallArgs& a, RenderBudget&) {
         return Value::from_list(py_split(s.text, a.get(0, "sep"), int_arg(a, 1, "maxsplit", -1, "split"), a.where));
       }},
      {"rsplit", [](const Value& s, const CallArgs& a, RenderBudget&) {
         return Value::from_list(py_rsplit(s.text, a.get(0, "sep"), int_arg(a, 1, "maxsplit", -1, "rsplit"), a.where));
       }},
      {"splitlines", [](const Value& s, const CallArgs& a, RenderBudget&) { return Value::from_list(py_splitlines(s.text, bool_arg(a, 0, "keepends", false))); }},
      {"startswith", [](const Value& s, const CallArgs& a, RenderBudget&) {
         const Value& p = arg_or(a, 0, "prefix", Value());
         if (p.kind == Value::Kind::List && p.tuple) {
           for (const Value& e : *p.list)
             if (s.text.rfind(self_string(e, "startswith", a.where).text, 0) == 0) return Value::from_bool(true);
           return Value::from_bool(false);
         }
         return Value::from_bool(s.text.rfind(self_string(p, "startswith", a.where).text, 0) == 0);
       }},
      {"endswith", [](const Value& s, const CallArgs& a, RenderBudget&) {
         auto ends = [&](const std::string& x) { return x.size() <= s.text.size() && s.text.compare(s.text.size() - x.size(), x.size(), x) == 0; };
         const Value& p = arg_or(a, 0, "suffix", Value());
         if (p.kind == Value::Kind::List && p.tuple) {
           for (const Value& e : *p.list)
             if (ends(self_string(e, "endswith", a.where).text)) return Value::from_bool(true);
           return Value::from_bool(false);
         }
         return Value::from_bool(ends(self_string(p, "endswith", a.where).text));
       }},
      {"upper", [](const Value& s, const CallArgs&, RenderBudget&) { return Value::from_string(case_map(s.text, true)); }},
      {"lower", [](const Value& s, const CallArgs&, RenderBudget&) { return Value::from_string(case_map(s.text, false)); }},
      {"title", [](const Value& s, const CallArgs&, RenderBudget&) { return Value::from_string(py_title(s.text)); }},
      {"capitalize", [](const Value& s, const CallArgs&, RenderBudget&) { return Value::from_string(py_capitalize(s.text)); }},
      {"replace", [](const Value& s, const CallArgs& a, RenderBudget& b) {
         std::string out = py_replace(s.text, self_string(arg_or(a, 0, "old", Value()), "replace", a.where).text,
                                      self_string(arg_or(a, 1, "new", Value()), "replace", a.where).text,
                                      int_arg(a, 2, "count", -1, "replace"));
         b.charge(out.size(), a.where);
         return Value::from_string(std::move(out));
       }},
      {"find", [](const Value& s, const CallArgs& a, RenderBudget&) {
         size_t at = s.text.find(self_string(arg_or(a, 0, "sub", Value()), "find", a.where).text);
         return Value::from_int(at == std::string::npos ? -1 : code_point_index(s.text, at));
       }},
      {"rfind", [](const Value& s, const CallArgs& a, RenderBudget&) {
         size_t at = s.text.rfind(self_string(arg_or(a, 0, "sub", Value()), "rfind", a.where).text);
         return Value::from_int(at == std::string::npos ? -1 : code_point_index(s.text, at));
       }},
      {"count", [](const Value& s, const CallArgs& a, RenderBudget&) {
         std::string sub = self_string(arg_or(a, 0, "sub", Value()), "count", a.where).text;
         if (sub.empty()) return Value::from_int(length(s, a.where) + 1);
         int64_t n = 0;
         for (size_t at = s.text.find(sub); at != std::string::npos; at = s.text.find(sub, at + sub.size())) ++n;
         return Value::from_int(n);
       }},
      {"join", [](const Value& s, const CallArgs& a, RenderBudget& b) {
         std::string out;
         ValueList items = iterate(arg_or(a, 0, "iterable", Value()), a.where);
         for (size_t i = 0; i < items.size(); ++i) {
           if (i) out += s.text;
           out += self_string(items[i], "join", a.where).text;
         }
         b.charge(out.size(), a.where);
         return Value::from_string(std::move(out));
       }},
      {"isspace", [](const Value& s, const CallArgs&, RenderBudget&) {
         std::vector<char32_t> c = code_points(s.text);
         return Value::from_bool(!c.empty() && std::all_of(c.begin(), c.end(), is_py_space));
       }},
      {"isdigit", [](const Value& s, const CallArgs&, RenderBudget&) {
         std::vector<char32_t> c = code_points(s.text);
         return Value::from_bool(!c.empty() && std::all_of(c.begin(), c.end(), [](char32_t x) { return u_isdigit((UChar32)x) != 0; }));
       }},
      {"isalpha", [](const Value& s, const CallArgs&, RenderBudget&) {
         std::vector<char32_t> c = code_points(s.text);
         return Value::from_bool(!c.empty() && std::all_of(c.begin(), c.end(), [](char32_t x) { return (U_GET_GC_MASK((UChar32)x) & U_GC_L_MASK) != 0; }));
       }},
      {"islower", [](const Value& s, const CallArgs&, RenderBudget&) {
         return Value::from_bool(case_map(s.text, false) == s.text && case_map(s.text, true) != s.text);
       }},
      {"isupper", [](const Value& s, const CallArgs&, RenderBudget&) {
         return Value::from_bool(case_map(s.text, true) == s.text && case_map(s.text, false) != s.text);
       }},
  };
  return m;
}

ValueList dict_pairs(const ValueDict& d) {
  ValueList out;
  for (const auto& [k, v] : d.items) out.push_back(Value::from_tuple({Value::from_string(k), v}));
  return out;
}

const std::unordered_map<std::string, Method>& dict_methods() {
  static const std::unordered_map<std::string, Method> m = {
      {"items", [](const Value& d, const CallArgs&, RenderBudget&) { return Value::from_list(dict_pairs(*d.dict)); }},
      {"keys", [](const Value& d, const CallArgs& a, RenderBudget&) { return Value::from_list(iterate(d, a.where)); }},
      {"values", [](const Value& d, const CallArgs&, RenderBudget&) {
         ValueList out;
         for (const auto& kv : d.dict->items) out.push_back(kv.second);
         return Value::from_list(std::move(out));
       }},
      {"get", [](const Value& d, const CallArgs& a, RenderBudget&) {
         const Value& key = arg_or(a, 0, "key", Value());
         const Value* v = key.is_string() ? d.dict->find(key.text) : nullptr;
         return v ? *v : arg_or(a, 1, "default", Value::none());
       }},
  };
  return m;
}

Value bind(const Value& self, const std::string& name, Method method, RenderBudget& budget) {
  RenderBudget* b = &budget;
  return Value::function(name, [self, method, b](const CallArgs& a) { return method(self, a, *b); });
}

Value unsafe_attribute(const Value& obj, const std::string& name) {
  return Value::undefined(fmt::format("access to attribute '{}' of '{}' object is unsafe (the sandbox forbids changing values)", name, type_name(obj)));
}

Value no_attribute(const Value& obj, const std::string& name) {
  return Value::undefined(fmt::format("'{} object' has no attribute '{}'", type_name(obj), name));
}

// ---- filters ----

using Filter = Value (*)(const Value& v, const CallArgs& a, RenderBudget& budget);

// The value at a dotted attribute path ("a.b", "0"), as Jinja's make_attrgetter reads it.
Value attribute_path(const Value& v, const std::string& path, const Where& where, RenderBudget& budget) {
  Value cur = v;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit((unsigned char)c); });
    cur = get_item(cur, numeric ? Value::from_int(std::stoll(part)) : Value::from_string(part), where, budget);
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

// Sort key of Jinja's sort / min / max / unique / dictsort: strings lower-cased unless case_sensitive.
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::from_string(case_map(v.text, false));
  return v;
}

Value keyed(const Value& item, const Value* attribute, const Where& where, RenderBudget& budget) {
  if (!attribute || attribute->kind == Value::Kind::None) return item;
  return attribute_path(item, to_str(*attribute), where, budget);
}

Value min_max(const Value& v, const CallArgs& a, RenderBudget& budget, bool want_max) {
  ValueList items = iterate(v, a.where);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  bool cs = bool_arg(a, 0, "case_sensitive", false);
  const Value* attribute = a.get(1, "attribute");
  size_t best = 0;
  Value best_key = sort_key(keyed(items[0], attribute, a.where, budget), cs);
  for (size_t i = 1; i < items.size(); ++i) {
    Value k = sort_key(keyed(items[i], attribute, a.where, budget), cs);
    if (want_max ? less(best_key, k, a.where) : less(k, best_key, a.where)) {
      best = i;
      best_key = k;
    }
  }
  return items[best];
}

// Python's float(s) for a stripped string: decimal digits (single underscores between them), a
// point, an exponent, or inf / infinity / nan in any case; strtod alone would also take hex.
bool parse_py_float(const std::string& s, double& out) {
  std::string body = s.substr(!s.empty() && (s[0] == '+' || s[0] == '-') ? 1 : 0), lower;
  for (char c : body) lower += (char)std::tolower((unsigned char)c);
  bool special = lower == "inf" || lower == "infinity" || lower == "nan";
  std::string digits;
  for (size_t i = 0; i < s.size() && !special; ++i) {
    char c = s[i];
    if (c == '_' && i > 0 && i + 1 < s.size() && std::isdigit((unsigned char)s[i - 1]) && std::isdigit((unsigned char)s[i + 1])) continue;
    if (!std::isdigit((unsigned char)c) && c != '.' && c != 'e' && c != 'E' && c != '+' && c != '-') return false;
    digits += c;
  }
  if (special) digits = s;
  if (digits.empty()) return false;
  char* end = nullptr;
  out = std::strtod(digits.c_str(), &end);
  return end == digits.c_str() + digits.size();
}

Value do_int(const Value& v, const CallArgs& a, RenderBudget&) {
  Value fallback = arg_or(a, 0, "default", Value::from_int(0));
  switch (v.kind) {
    case Value::Kind::Int:
    case Value::Kind::Bool: return Value::from_int(v.as_int());
    case Value::Kind::Float:
      if (!std::isfinite(v.real)) fail_at(a.where, "int: cannot convert a non-finite float to an integer");
      return Value::from_int((int64_t)std::trunc(v.real));
    case Value::Kind::String: {
      std::string s = py_strip(v.text, nullptr, true, true);
      std::string digits;
      size_t i = 0;
      if (i < s.size() && (s[i] == '+' || s[i] == '-')) digits += s[i++];
      bool ok = i < s.size();
      for (; i < s.size(); ++i) {
        if (std::isdigit((unsigned char)s[i])) digits += s[i];
        else if (!(s[i] == '_' && i > 0 && i + 1 < s.size() && std::isdigit((unsigned char)s[i - 1]) && std::isdigit((unsigned char)s[i + 1]))) ok = false;
      }
      if (ok) {
        errno = 0;
        int64_t n = std::strtoll(digits.c_str(), nullptr, 10);
        if (errno == ERANGE) fail_at(a.where, "int: '" + v.text + "' does not fit in 64 bits");
        return Value::from_int(n);
      }
      // "42.23"|int is 42: Jinja falls back to int(float(value)).
      double d;
      if (parse_py_float(s, d) && std::isfinite(d)) return Value::from_int((int64_t)std::trunc(d));
      return fallback;
    }
    case Value::Kind::Undefined: fail_at(a.where, v.text);
    default: return fallback;
  }
}

Value do_float(const Value& v, const CallArgs& a, RenderBudget&) {
  Value fallback = arg_or(a, 0, "default", Value::from_float(0.0));
  switch (v.kind) {
    case Value::Kind::Int:
    case Value::Kind::Bool:
    case Value::Kind::Float: return Value::from_float(v.as_double());
    case Value::Kind::String: {
      double d;
      return parse_py_float(py_strip(v.text, nullptr, true, true), d) ? Value::from_float(d) : fallback;
    }
    case Value::Kind::Undefined: fail_at(a.where, v.text);
    default: return fallback;
  }
}

Value do_round(const Value& v, const CallArgs& a, RenderBudget&) {
  int64_t precision = int_arg(a, 0, "precision", 0, "round");
  std::string method = a.get(1, "method") ? to_str(*a.get(1, "method")) : "common";
  if (!v.is_number()) fail_at(a.where, fmt::format("round: expected a number, got {}", type_name(v)));
  if (precision < 0 || precision > 30) fail_at(a.where, "round: precision outside 0..30 is not supported");
  double scale = std::pow(10.0, (double)precision);
  if (method == "floor") return Value::from_float(std::floor(v.as_double() * scale) / scale);
  if (method == "ceil") return Value::from_float(std::ceil(v.as_double() * scale) / scale);
  if (method != "common") fail_at(a.where, "round: method must be 'common', 'ceil' or 'floor'");
  if (v.is_integral()) return Value::from_int(v.as_int());  // Python's round(int, n) stays an int
  // printf rounds the exact binary value half-to-even, as Python's round does.
  char buf[400];
  std::snprintf(buf, sizeof buf, "%.*f", (int)precision, v.real);
  return Value::from_float(std::strtod(buf, nullptr));
}

Value do_indent(const Value& v, const CallArgs& a, RenderBudget& budget) {
  const Value& width = arg_or(a, 0, "width", Value::from_int(4));
  std::string indention;
  if (width.is_string()) indention = width.text;
  else if (width.is_integral()) {
    if (width.as_int() < 0 || width.as_int() > 1000) fail_at(a.where, "indent: width outside 0..1000");
    indention.assign((size_t)width.as_int(), ' ');
  } else fail_at(a.where, "indent: width must be an integer or a string");
  bool first = bool_arg(a, 1, "first", false), blank = bool_arg(a, 2, "blank", false);
  ValueList lines = py_splitlines(to_str(v) + "\n", false);
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i].text;
    if (i == 0) out += line;
    else out += "\n" + ((blank || !line.empty()) ? indention : "") + line;
  }
  if (first) out = indention + out;
  budget.charge(out.size(), a.where);
  return Value::from_string(std::move(out));
}

Value do_tojson(const Value& v, const CallArgs& a, RenderBudget& budget) {
  // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
  JsonOptions o;
  o.ensure_ascii = bool_arg(a, 0, "ensure_ascii", false);
  const Value& indent = arg_or(a, 1, "indent", Value::none());
  if (indent.is_string()) {
    o.has_indent = true;
    o.indent = indent.text;
  } else if (indent.is_integral()) {
    o.has_indent = true;
    o.indent.assign((size_t)std::clamp<int64_t>(indent.as_int(), 0, 1000), ' ');
  } else if (indent.kind != Value::Kind::None) {
    fail_at(a.where, fmt::format("tojson: indent must be an integer, a string or none, not {}", type_name(indent)));
  }
  if (o.has_indent) o.item_separator = ",";
  const Value& separators = arg_or(a, 2, "separators", Value::none());
  if (separators.kind == Value::Kind::List && separators.list->size() == 2) {
    o.item_separator = to_str((*separators.list)[0]);
    o.key_separator = to_str((*separators.list)[1]);
  } else if (separators.kind != Value::Kind::None) {
    fail_at(a.where, "tojson: separators must be a pair (item_separator, key_separator)");
  }
  o.sort_keys = bool_arg(a, 3, "sort_keys", false);
  std::string out = to_json(v, o, a.where);
  budget.charge(out.size(), a.where);
  return Value::from_string(std::move(out));
}

Value do_join(const Value& v, const CallArgs& a, RenderBudget& budget) {
  std::string sep = a.get(0, "d") ? to_str(*a.get(0, "d")) : "";
  const Value* attribute = a.get(1, "attribute");
  std::string out;
  ValueList items = iterate(v, a.where);
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += to_str(keyed(items[i], attribute, a.where, budget));
    if (out.size() > budget.limits->max_output_bytes) budget.charge(out.size(), a.where);
  }
  budget.charge(out.size(), a.where);
  return Value::from_string(std::move(out));
}

Value do_sort(const Value& v, const CallArgs& a, RenderBudget& budget) {
  bool reverse = bool_arg(a, 0, "reverse", false), cs = bool_arg(a, 1, "case_sensitive", false);
  const Value* attribute = a.get(2, "attribute");
  ValueList items = iterate(v, a.where);
  std::vector<std::pair<Value, size_t>> keys;
  for (size_t i = 0; i < items.size(); ++i) keys.emplace_back(sort_key(keyed(items[i], attribute, a.where, budget), cs), i);
  std::stable_sort(keys.begin(), keys.end(), [&](const auto& x, const auto& y) {
    return reverse ? less(y.first, x.first, a.where) : less(x.first, y.first, a.where);
  });
  ValueList out;
  for (const auto& k : keys) out.push_back(items[k.second]);
  return Value::from_list(std::move(out));
}

Value do_unique(const Value& v, const CallArgs& a, RenderBudget& budget) {
  bool cs = bool_arg(a, 0, "case_sensitive", false);
  const Value* attribute = a.get(1, "attribute");
  ValueList out, seen;
  for (const Value& item : iterate(v, a.where)) {
    Value k = sort_key(keyed(item, attribute, a.where, budget), cs);
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equal(s, k); })) {
      seen.push_back(k);
      out.push_back(item);
    }
  }
  return Value::from_list(std::move(out));
}

Value do_dictsort(const Value& v, const CallArgs& a, RenderBudget&) {
  if (v.kind != Value::Kind::Dict) fail_at(a.where, fmt::format("dictsort: expected a mapping, got {}", type_name(v)));
  bool cs = bool_arg(a, 0, "case_sensitive", false), reverse = bool_arg(a, 2, "reverse", false);
  std::string by = a.get(1, "by") ? to_str(*a.get(1, "by")) : "key";
  if (by != "key" && by != "value") fail_at(a.where, "dictsort: 'by' must be 'key' or 'value'");
  ValueList pairs = dict_pairs(*v.dict);
  size_t pos = by == "key" ? 0 : 1;
  std::stable_sort(pairs.begin(), pairs.end(), [&](const Value& x, const Value& y) {
    Value kx = sort_key((*x.list)[pos], cs), ky = sort_key((*y.list)[pos], cs);
    return reverse ? less(ky, kx, a.where) : less(kx, ky, a.where);
  });
  return Value::from_list(std::move(pairs));
}

Value do_sum(const Value& v, const CallArgs& a, RenderBudget& budget) {
  const Value* attribute = a.get(0, "attribute");
  Value total = arg_or(a, 1, "start", Value::from_int(0));
  for (const Value& item : iterate(v, a.where)) {
    Value x = keyed(item, attribute, a.where, budget);
    if (!x.is_number() || !total.is_number()) fail_at(a.where, fmt::format("sum: cannot add {} to {}", type_name(x), type_name(total)));
    if (x.is_integral() && total.is_integral()) {
      int64_t r;
      if (__builtin_add_overflow(total.as_int(), x.as_int(), &r)) fail_at(a.where, "sum: integer overflow");
      total = Value::from_int(r);
    } else {
      total = Value::from_float(total.as_double() + x.as_double());
    }
  }
  return total;
}

// select / reject / selectattr / rejectattr: keep items whose test (or truthiness) is `want`.
Value select_items(const Value& v, const CallArgs& a, RenderBudget& budget, bool want, bool by_attribute) {
  size_t next = 0;
  std::string attribute;
  if (by_attribute) {
    if (a.positional.empty()) fail_at(a.where, "selectattr / rejectattr: missing the attribute name");
    attribute = to_str(a.positional[next++]);
  }
  std::string test;
  if (next < a.positional.size()) test = to_str(a.positional[next++]);
  if (!test.empty() && !has_test(test)) fail_at(a.where, fmt::format("no test named '{}'", test));
  CallArgs test_args;
  test_args.where = a.where;
  test_args.positional.assign(a.positional.begin() + (long)next, a.positional.end());
  ValueList out;
  for (const Value& item : iterate(v, a.where)) {
    Value x = by_attribute ? attribute_path(item, attribute, a.where, budget) : item;
    bool ok = test.empty() ? truthy(x) : apply_test(test, x, test_args);
    if (ok == want) out.push_back(item);
  }
  return Value::from_list(std::move(out));
}

Value do_map(const Value& v, const CallArgs& a, RenderBudget& budget) {
  ValueList out;
  if (const Value* attribute = a.get(SIZE_MAX, "attribute")) {
    const Value* fallback = a.get(SIZE_MAX, "default");
    for (const Value& item : iterate(v, a.where)) {
      Value x = attribute_path(item, to_str(*attribute), a.where, budget);
      out.push_back(x.is_undefined() && fallback ? *fallback : x);
    }
    return Value::from_list(std::move(out));
  }
  if (a.positional.empty()) fail_at(a.where, "map: expected a filter name or attribute=");
  std::string filter = to_str(a.positional[0]);
  if (!has_filter(filter)) fail_at(a.where, fmt::format("no filter named '{}'", filter));
  CallArgs rest;
  rest.where = a.where;
  rest.positional.assign(a.positional.begin() + 1, a.positional.end());
  rest.keyword = a.keyword;
  for (const Value& item : iterate(v, a.where)) out.push_back(apply_filter(filter, item, rest, budget));
  return Value::from_list(std::move(out));
}

Value do_reverse(const Value& v, const CallArgs& a, RenderBudget&) {
  if (v.is_string()) {
    std::vector<char32_t> c = code_points(v.text);
    std::reverse(c.begin(), c.end());
    return Value::from_string(from_code_points(c.data(), c.data() + c.size()));
  }
  ValueList items = iterate(v, a.where);
  std::reverse(items.begin(), items.end());
  return Value::from_list(std::move(items));
}

Value do_default(const Value& v, const CallArgs& a, RenderBudget&) {
  bool boolean = bool_arg(a, 1, "boolean", false);
  if (v.is_undefined() || (boolean && !truthy(v))) return arg_or(a, 0, "default_value", Value::from_string(""));
  return v;
}

Value do_first(const Value& v, const CallArgs& a, RenderBudget&) {
  ValueList items = iterate(v, a.where);
  return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
}

Value do_last(const Value& v, const CallArgs& a, RenderBudget&) {
  ValueList items = iterate(v, a.where);
  return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
}

Value do_length(const Value& v, const CallArgs& a, RenderBudget&) { return Value::from_int(length(v, a.where)); }

Value do_wordcount(const Value& v, const CallArgs&, RenderBudget&) {
  int64_t n = 0;
  bool in_word = false;
  for (char32_t c : code_points(to_str(v))) {
    bool w = tok::is_word_char(c);
    if (w && !in_word) ++n;
    in_word = w;
  }
  return Value::from_int(n);
}

Value do_items(const Value& v, const CallArgs& a, RenderBudget&) {
  if (v.is_undefined()) return Value::from_list({});
  if (v.kind != Value::Kind::Dict) fail_at(a.where, "items: can only get item pairs from a mapping");
  return Value::from_list(dict_pairs(*v.dict));
}

Value do_abs(const Value& v, const CallArgs& a, RenderBudget&) {
  if (v.kind == Value::Kind::Float) return Value::from_float(std::fabs(v.real));
  if (v.is_integral()) {
    if (v.as_int() == INT64_MIN) fail_at(a.where, "abs: integer overflow");
    return Value::from_int(std::llabs(v.as_int()));
  }
  fail_at(a.where, fmt::format("abs: bad operand type '{}'", type_name(v)));
}

Value do_replace(const Value& v, const CallArgs& a, RenderBudget& budget) {
  std::string out = py_replace(to_str(v), string_arg(a, 0, "old", "replace"), string_arg(a, 1, "new", "replace"),
                               int_arg(a, 2, "count", -1, "replace"));
  budget.charge(out.size(), a.where);
  return Value::from_string(std::move(out));
}

// markupsafe.escape: Markup stays as it is, anything else becomes escaped Markup.
Value do_escape(const Value& v, const CallArgs&, RenderBudget&) {
  return v.is_string() && v.markup ? v : Value::from_markup(html_escape(to_str(v)));
}

const std::unordered_map<std::string, Filter>& filters() {
  static const std::unordered_map<std::string, Filter> m = {
      {"abs", do_abs},
      {"attr", [](const Value& v, const CallArgs& a, RenderBudget& b) {
         // Python's getattr only: unlike obj.name, the attr filter never falls back to the item.
         std::string name = string_arg(a, 0, "name", "attr");
         if (v.kind == Value::Kind::Dict && !dict_methods().count(name)) return no_attribute(v, name);
         return get_attribute(v, name, a.where, b);
       }},
      {"capitalize", [](const Value& v, const CallArgs&, RenderBudget&) { return Value::from_string(py_capitalize(to_str(v))); }},
      {"count", do_length},
      {"d", do_default},
      {"default", do_default},
      {"dictsort", do_dictsort},
      {"e", do_escape},
      {"escape", do_escape},
      {"first", do_first},
      {"float", do_float},
      {"indent", do_indent},
      {"int", do_int},
      {"items", do_items},
      {"join", do_join},
      {"last", do_last},
      {"length", do_length},
      {"list", [](const Value& v, const CallArgs& a, RenderBudget&) { return Value::from_list(iterate(v, a.where)); }},
      {"lower", [](const Value& v, const CallArgs&, RenderBudget&) { return Value::from_string(case_map(to_str(v), false)); }},
      {"map", do_map},
      {"max", [](const Value& v, const CallArgs& a, RenderBudget& b) { return min_max(v, a, b, true); }},
      {"min", [](const Value& v, const CallArgs& a, RenderBudget& b) { return min_max(v, a, b, false); }},
      {"reject", [](const Value& v, const CallArgs& a, RenderBudget& b) { return select_items(v, a, b, false, false); }},
      {"rejectattr", [](const Value& v, const CallArgs& a, RenderBudget& b) { return select_items(v, a, b, false, true); }},
      {"replace", do_replace},
      {"reverse", do_reverse},
      {"round", do_round},
      {"safe", [](const Value& v, const CallArgs&, RenderBudget&) { return Value::from_markup(to_str(v)); }},
      {"select", [](const Value& v, const CallArgs& a, RenderBudget& b) { return select_items(v, a, b, true, false); }},
      {"selectattr", [](const Value& v, const CallArgs& a, RenderBudget& b) { return select_items(v, a, b, true, true); }},
      {"sort", do_sort},
      {"string", [](const Value& v, const CallArgs&, RenderBudget&) { return Value::from_string(to_str(v)); }},
      {"sum", do_sum},
      {"title", [](const Value& v, const CallArgs&, RenderBudget&) { return Value::from_string(jinja_title(to_str(v))); }},
      {"tojson", do_tojson},
      {"trim", [](const Value& v, const CallArgs& a, RenderBudget&) { return Value::from_string(py_strip(to_str(v), a.get(0, "chars"), true, true)); }},
      {"unique", do_unique},
      {"upper", [](const Value& v, const CallArgs&, RenderBudget&) { return Value::from_string(case_map(to_str(v), true)); }},
      {"wordcount", do_wordcount},
  };
  return m;
}

// ---- tests ----

using Test = bool (*)(const Value& v, const CallArgs& a);

const Value& test_operand(const CallArgs& a, const char* test) {
  if (a.positional.empty()) fail_at(a.where, fmt::format("test '{}' needs an argument", test));
  return a.positional[0];
}

const std::unordered_map<std::string, Test>& tests() {
  using K = Value::Kind;
  static const std::unordered_map<std::string, Test> m = {
      {"defined", [](const Value& v, const CallArgs&) { return !v.is_undefined(); }},
      {"undefined", [](const Value& v, const CallArgs&) { return v.is_undefined(); }},
      {"none", [](const Value& v, const CallArgs&) { return v.kind == K::None; }},
      {"boolean", [](const Value& v, const CallArgs&) { return v.kind == K::Bool; }},
      {"true", [](const Value& v, const CallArgs&) { return v.kind == K::Bool && v.boolean; }},
      {"false", [](const Value& v, const CallArgs&) { return v.kind == K::Bool && !v.boolean; }},
      {"integer", [](const Value& v, const CallArgs&) { return v.kind == K::Int; }},
      {"float", [](const Value& v, const CallArgs&) { return v.kind == K::Float; }},
      {"number", [](const Value& v, const CallArgs&) { return v.is_number(); }},
      {"string", [](const Value& v, const CallArgs&) { return v.is_string(); }},
      {"mapping", [](const Value& v, const CallArgs&) { return v.kind == K::Dict; }},
      {"iterable", [](const Value& v, const CallArgs&) {
         return v.kind == K::Undefined || v.kind == K::String || v.kind == K::List || v.kind == K::Dict;
       }},
      {"sequence", [](const Value& v, const CallArgs&) {
         return v.kind == K::Undefined || v.kind == K::String || v.kind == K::List || v.kind == K::Dict;
       }},
      {"callable", [](const Value& v, const CallArgs&) { return v.kind == K::Callable; }},
      {"sameas", [](const Value& v, const CallArgs& a) {
         const Value& o = test_operand(a, "sameas");
         if (v.kind != o.kind) return false;
         if (v.kind == K::None || v.kind == K::Undefined) return v.kind == K::None;
         if (v.kind == K::Bool) return v.boolean == o.boolean;
         return equal(v, o) && (v.kind == K::Int || v.list == o.list) && v.dict == o.dict;
       }},
      {"eq", [](const Value& v, const CallArgs& a) { return equal(v, test_operand(a, "eq")); }},
      {"ne", [](const Value& v, const CallArgs& a) { return !equal(v, test_operand(a, "ne")); }},
      {"lt", [](const Value& v, const CallArgs& a) { return less(v, test_operand(a, "lt"), a.where); }},
      {"le", [](const Value& v, const CallArgs& a) { return !less(test_operand(a, "le"), v, a.where); }},
      {"gt", [](const Value& v, const CallArgs& a) { return less(test_operand(a, "gt"), v, a.where); }},
      {"ge", [](const Value& v, const CallArgs& a) { return !less(v, test_operand(a, "ge"), a.where); }},
      {"in", [](const Value& v, const CallArgs& a) { return contains(test_operand(a, "in"), v, a.where); }},
      {"odd", [](const Value& v, const CallArgs& a) {
         if (!v.is_integral()) fail_at(a.where, fmt::format("test 'odd': expected an integer, got {}", type_name(v)));
         return v.as_int() % 2 != 0;
       }},
      {"even", [](const Value& v, const CallArgs& a) {
         if (!v.is_integral()) fail_at(a.where, fmt::format("test 'even': expected an integer, got {}", type_name(v)));
         return v.as_int() % 2 == 0;
       }},
      {"divisibleby", [](const Value& v, const CallArgs& a) {
         const Value& d = test_operand(a, "divisibleby");
         if (!v.is_integral() || !d.is_integral()) fail_at(a.where, "test 'divisibleby': expected integers");
         if (d.as_int() == 0) fail_at(a.where, "test 'divisibleby': integer modulo by zero");
         return v.as_int() % d.as_int() == 0;
       }},
      {"lower", [](const Value& v, const CallArgs&) {
         std::string s = to_str(v);
         return case_map(s, false) == s && case_map(s, true) != s;
       }},
      {"upper", [](const Value& v, const CallArgs&) {
         std::string s = to_str(v);
         return case_map(s, true) == s && case_map(s, false) != s;
       }},
  };
  return m;
}

const std::unordered_map<std::string, std::string>& test_aliases() {
  static const std::unordered_map<std::string, std::string> m = {
      {"==", "eq"}, {"equalto", "eq"}, {"!=", "ne"}, {"<", "lt"}, {"lessthan", "lt"}, {"<=", "le"},
      {">", "gt"}, {"greaterthan", "gt"}, {">=", "ge"}};
  return m;
}

const std::string& canonical_test(const std::string& name) {
  auto it = test_aliases().find(name);
  return it == test_aliases().end() ? name : it->second;
}

}  // namespace

bool has_filter(const std::string& name) { return filters().count(name) != 0; }
bool has_test(const std::string& name) { return tests().count(canonical_test(name)) != 0; }

Value apply_filter(const std::string& name, const Value& subject, const CallArgs& args, RenderBudget& budget) {
  auto it = filters().find(name);
  if (it == filters().end()) fail_at(args.where, fmt::format("no filter named '{}'", name));
  return it->second(subject, args, budget);
}

bool apply_test(const std::string& name, const Value& subject, const CallArgs& args) {
  auto it = tests().find(canonical_test(name));
  if (it == tests().end()) fail_at(args.where, fmt::format("no test named '{}'", name));
  return it->second(subject, args);
}

Value get_attribute(const Value& obj, const std::string& name, const Where& where, RenderBudget& budget) {
  switch (obj.kind) {
    case Value::Kind::Undefined: fail_at(where, obj.text);
    case Value::Kind::String: {
      auto it = string_methods().find(name);
      return it != string_methods().end() ? bind(obj, name, it->second, budget) : no_attribute(obj, name);
    }
    case Value::Kind::Dict: {
      auto it = dict_methods().find(name);
      if (it != dict_methods().end()) return bind(obj, name, it->second, budget);
      if (name == "pop" || name == "popitem" || name == "setdefault" || name == "update" || name == "clear")
        return unsafe_attribute(obj, name);
      const Value* v = obj.dict->find(name);
      return v ? *v : no_attribute(obj, name);
    }
    case Value::Kind::Namespace: {
      const Value* v = obj.dict->find(name);
      return v ? *v : no_attribute(obj, name);
    }
    case Value::Kind::List:
      if (name == "append" || name == "extend" || name == "insert" || name == "pop" || name == "remove" ||
          name == "reverse" || name == "sort" || name == "clear")
        return unsafe_attribute(obj, name);
      return no_attribute(obj, name);
    default: return no_attribute(obj, name);
  }
}

Value get_item(const Value& obj, const Value& key, const Where& where, RenderBudget& budget) {
  if (obj.is_undefined()) fail_at(where, obj.text);
  if (obj.kind == Value::Kind::Dict && key.is_string()) {
    if (const Value* v = obj.dict->find(key.text)) return *v;
  }
  if ((obj.kind == Value::Kind::List || obj.kind == Value::Kind::String) && key.is_integral()) {
    int64_t n = length(obj, where), i = key.as_int();
    if (i < 0) i += n;
    if (i < 0 || i >= n) return Value::undefined(fmt::format("{} object has no element {}", type_name(obj), key.as_int()));
    if (obj.kind == Value::Kind::List) return (*obj.list)[(size_t)i];
    std::vector<char32_t> cps = code_points(obj.text);
    return Value::from_string(from_code_points(&cps[(size_t)i], &cps[(size_t)i] + 1));
  }
  // The sandbox falls back to the attribute for a string key (d['items'] is the method).
  if (key.is_string()) return get_attribute(obj, key.text, where, budget);
  return Value::undefined(fmt::format("{} object has no element {}", type_name(obj), repr(key)));
}

Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step, const Where& where) {
  if (obj.is_undefined()) fail_at(where, obj.text);
  if (obj.kind != Value::Kind::List && obj.kind != Value::Kind::String)
    return Value::undefined(fmt::format("{} object cannot be sliced", type_name(obj)));
  auto bound = [&](const Value& v, bool& given) -> int64_t {
    given = v.kind != Value::Kind::None;
    if (!given) return 0;
    if (!v.is_integral()) fail_at(where, "slice indices must be integers or None");
    return v.as_int();
  };
  bool has_start, has_stop, has_step;
  int64_t n = length(obj, where);
  int64_t lo = bound(start, has_start), hi = bound(stop, has_stop), st = bound(step, has_step);
  if (!has_step) st = 1;
  if (st == 0) fail_at(where, "slice step cannot be zero");
  // Python's slice.indices().
  auto clamp = [&](int64_t v, bool given, int64_t fallback) {
    if (!given) return fallback;
    if (v < 0) v += n;
    if (st > 0) return std::clamp<int64_t>(v, 0, n);
    return std::clamp<int64_t>(v, -1, n - 1);
  };
  lo = clamp(lo, has_start, st > 0 ? 0 : n - 1);
  hi = clamp(hi, has_stop, st > 0 ? n : -1);
  std::vector<int64_t> picks;
  for (int64_t i = lo; st > 0 ? i < hi : i > hi; i += st) picks.push_back(i);
  if (obj.kind == Value::Kind::List) {
    ValueList out;
    for (int64_t i : picks) out.push_back((*obj.list)[(size_t)i]);
    return obj.tuple ? Value::from_tuple(std::move(out)) : Value::from_list(std::move(out));
  }
  std::vector<char32_t> cps = code_points(obj.text), out;
  for (int64_t i : picks) out.push_back(cps[(size_t)i]);
  return Value::from_string(from_code_points(out.data(), out.data() + out.size()));
}

ValueDict make_globals() {
  ValueDict g;
  g.set("range", Value::function("range", [](const CallArgs& a) {
          if (!a.keyword.empty()) fail_at(a.where, "range() takes no keyword arguments");
          for (const Value& v : a.positional)
            if (!v.is_integral()) fail_at(a.where, fmt::format("range(): '{}' object cannot be interpreted as an integer", type_name(v)));
          int64_t start = 0, stop = 0, step = 1;
          if (a.positional.size() == 1) stop = a.positional[0].as_int();
          else if (a.positional.size() == 2 || a.positional.size() == 3) {
            start = a.positional[0].as_int();
            stop = a.positional[1].as_int();
            if (a.positional.size() == 3) step = a.positional[2].as_int();
          } else fail_at(a.where, "range() expects 1 to 3 arguments");
          if (step == 0) fail_at(a.where, "range() arg 3 must not be zero");
          // The sandbox refuses ranges over 100000 items (MAX_RANGE).
          double count = std::ceil(((double)stop - (double)start) / (double)step);
          if (count > 100000) fail_at(a.where, "range too big: the sandbox allows at most 100000 items");
          ValueList out;
          for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.push_back(Value::from_int(i));
          return Value::from_list(std::move(out));
        }));
  auto keyword_dict = [](const CallArgs& a, const char* what) {
    ValueDict d;
    if (a.positional.size() > 1) fail_at(a.where, fmt::format("{}() takes at most one positional argument", what));
    if (!a.positional.empty()) {
      const Value& init = a.positional[0];
      if (init.kind != Value::Kind::Dict) fail_at(a.where, fmt::format("{}(): the positional argument must be a mapping", what));
      d = *init.dict;
    }
    for (const auto& [k, v] : a.keyword) d.set(k, v);
    return d;
  };
  g.set("dict", Value::function("dict", [keyword_dict](const CallArgs& a) { return Value::from_dict(keyword_dict(a, "dict")); }));
  g.set("namespace", Value::function("namespace", [keyword_dict](const CallArgs& a) {
          return Value::from_namespace(keyword_dict(a, "namespace"));
        }));
  g.set("raise_exception", Value::function("raise_exception", [](const CallArgs& a) -> Value {
          std::string msg = a.positional.empty() ? "" : to_str(a.positional[0]);
          fail_at(a.where, "the template raised an error: " + msg);
        }));
  g.set("strftime_now", Value::function("strftime_now", [](const CallArgs& a) {
          std::string format = string_arg(a, 0, "format", "strftime_now");
          std::time_t now = std::time(nullptr);
          std::tm local{};
          localtime_r(&now, &local);
          char buf[512];
          size_t n = format.empty() ? 0 : std::strftime(buf, sizeof buf, format.c_str(), &local);
          if (n == 0 && !format.empty()) fail_at(a.where, "strftime_now: the formatted time is empty or too long");
          return Value::from_string(std::string(buf, n));
        }));
  return g;
}

}  // namespace dsmoe::jinja
