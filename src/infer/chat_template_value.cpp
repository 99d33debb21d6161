#include "infer/chat_template_value.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace dsmoe::jinja {

const Value* ValueDict::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void ValueDict::set(const std::string& key, Value v) {
  for (auto& [k, old] : items)
    if (k == key) {
      old = std::move(v);
      return;
    }
  items.emplace_back(key, std::move(v));
}

const Value* CallArgs::get(size_t index, std::string_view name) const {
  if (index < positional.size()) return &positional[index];
  for (const auto& [k, v] : keyword)
    if (k == name) return &v;
  return nullptr;
}

std::string Where::str() const {
  return fmt::format("{} line {} column {}", origin ? *origin : std::string("chat template"), line, column);
}

void fail_at(const Where& where, const std::string& msg) { fail("{}: {}", where.str(), msg); }

// Each constructor sets the kind and the one field that kind uses.
static Value of_kind(Value::Kind kind) {
  Value v;
  v.kind = kind;
  return v;
}
Value Value::undefined(std::string hint) { Value v; v.text = std::move(hint); return v; }
Value Value::none() { return of_kind(Kind::None); }
Value Value::from_bool(bool b) { Value v = of_kind(Kind::Bool); v.boolean = b; return v; }
Value Value::from_int(int64_t i) { Value v = of_kind(Kind::Int); v.integer = i; return v; }
Value Value::from_float(double d) { Value v = of_kind(Kind::Float); v.real = d; return v; }
Value Value::from_string(std::string s) { Value v = of_kind(Kind::String); v.text = std::move(s); return v; }
Value Value::from_markup(std::string s) { Value v = from_string(std::move(s)); v.markup = true; return v; }
Value Value::from_list(ValueList items) {
  Value v = of_kind(Kind::List);
  v.list = std::make_shared<const ValueList>(std::move(items));
  return v;
}
Value Value::from_tuple(ValueList items) { Value v = from_list(std::move(items)); v.tuple = true; return v; }
Value Value::from_dict(ValueDict d) {
  Value v = of_kind(Kind::Dict);
  v.dict = std::make_shared<ValueDict>(std::move(d));
  return v;
}
Value Value::from_namespace(ValueDict d) { Value v = from_dict(std::move(d)); v.kind = Kind::Namespace; return v; }
Value Value::function(std::string name, NativeFn fn) {
  Value v = of_kind(Kind::Callable);
  v.callable = std::make_shared<const Callable>(Callable{std::move(name), std::move(fn)});
  return v;
}

Value Value::from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return none();
    case nlohmann::ordered_json::value_t::boolean: return from_bool(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return from_int(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u > (uint64_t)INT64_MAX) fail("chat template variables: integer {} does not fit in 64 bits", u);
      return from_int((int64_t)u);
    }
    case nlohmann::ordered_json::value_t::number_float: return from_float(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return from_string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      ValueList items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e));
      return from_list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      ValueDict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.items.emplace_back(it.key(), from_json(it.value()));
      return from_dict(std::move(d));
    }
    default: fail("chat template variables: unsupported JSON value {}", j.dump());
  }
}

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return "Undefined";
    case Value::Kind::None: return "NoneType";
    case Value::Kind::Bool: return "bool";
    case Value::Kind::Int: return "int";
    case Value::Kind::Float: return "float";
    case Value::Kind::String: return "str";
    case Value::Kind::List: return v.tuple ? "tuple" : "list";
    case Value::Kind::Dict: return "dict";
    case Value::Kind::Namespace: return "Namespace";
    case Value::Kind::Callable: return "function";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return false;
    case Value::Kind::Bool: return v.boolean;
    case Value::Kind::Int: return v.integer != 0;
    case Value::Kind::Float: return v.real != 0;
    case Value::Kind::String: return !v.text.empty();
    case Value::Kind::List: return !v.list->empty();
    case Value::Kind::Dict: return !v.dict->items.empty();
    case Value::Kind::Namespace:
    case Value::Kind::Callable: return true;
  }
  return false;
}

bool is_py_space(char32_t c) {
  // str.isspace() is White_Space plus the four ASCII information separators 0x1C..0x1F.
  return tok::is_whitespace(c) || (c >= 0x1C && c <= 0x1F);
}

std::vector<char32_t> code_points(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) out.push_back(tok::utf8_next(s, i));
  return out;
}

std::string from_code_points(const char32_t* begin, const char32_t* end) {
  std::string out;
  for (const char32_t* p = begin; p != end; ++p) tok::utf8_append(out, *p);
  return out;
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  // The shortest %e rendering that reads back exactly, then Python's layout: positional notation
  // when the decimal point falls within -4 < decpt <= 16, scientific otherwise.
  char buf[40];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*e", prec - 1, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  bool negative = s[0] == '-';
  if (negative) s.erase(0, 1);
  size_t e = s.find('e');
  int exponent = std::atoi(s.c_str() + e + 1);
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (s[i] != '.') digits += s[i];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  int decpt = exponent + 1;
  std::string out = negative ? "-" : "";
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out.append("0.").append((size_t)-decpt, '0').append(digits);
    } else if ((size_t)decpt >= digits.size()) {
      out.append(digits).append((size_t)decpt - digits.size(), '0').append(".0");
    } else {
      out.append(digits, 0, (size_t)decpt).append(".").append(digits, (size_t)decpt, std::string::npos);
    }
  } else {
    out += digits[0];
    if (digits.size() > 1) out.append(".").append(digits, 1, std::string::npos);
    char ebuf[16];
    std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += ebuf;
  }
  return out;
}

namespace {

// Python's str.isprintable() for one code point: not in Cc, Cf, Cs, Co, Cn, Zl, Zp, and not a Zs
// other than the space.
bool is_printable(char32_t c) {
  if (c == ' ') return true;
  if (c < 0x20 || c == 0x7F) return false;
  if (c < 0x7F) return true;
  int8_t t = u_charType((UChar32)c);
  return !(t == U_CONTROL_CHAR || t == U_FORMAT_CHAR || t == U_SURROGATE || t == U_PRIVATE_USE_CHAR ||
           t == U_UNASSIGNED || t == U_LINE_SEPARATOR || t == U_PARAGRAPH_SEPARATOR || t == U_SPACE_SEPARATOR);
}

std::string string_repr(const std::string& s) {
  char quote = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t c : code_points(s)) {
    char buf[16];
    if (c == (char32_t)quote || c == '\\') {
      out += '\\';
      out += (char)c;
    } else if (c == '\t') out += "\\t";
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (is_printable(c)) tok::utf8_append(out, c);
    else {
      if (c < 0x100) std::snprintf(buf, sizeof buf, "\\x%02x", (unsigned)c);
      else if (c < 0x10000) std::snprintf(buf, sizeof buf, "\\u%04x", (unsigned)c);
      else std::snprintf(buf, sizeof buf, "\\U%08x", (unsigned)c);
      out += buf;
    }
  }
  return out + quote;
}

std::string dict_repr(const ValueDict& d) {
  std::string out = "{";
  for (size_t i = 0; i < d.items.size(); ++i) {
    if (i) out += ", ";
    out += string_repr(d.items[i].first) + ": " + repr(d.items[i].second);
  }
  return out + "}";
}

}  // namespace

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return "";
    case Value::Kind::String: return v.text;
    default: return repr(v);
  }
}

std::string repr(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return "Undefined";
    case Value::Kind::None: return "None";
    case Value::Kind::Bool: return v.boolean ? "True" : "False";
    case Value::Kind::Int: return std::to_string(v.integer);
    case Value::Kind::Float: return float_repr(v.real);
    case Value::Kind::String: return string_repr(v.text);
    case Value::Kind::List: {
      std::string out = v.tuple ? "(" : "[";
      for (size_t i = 0; i < v.list->size(); ++i) out += (i ? ", " : "") + repr((*v.list)[i]);
      if (v.tuple) return out + (v.list->size() == 1 ? ",)" : ")");
      return out + "]";
    }
    case Value::Kind::Dict: return dict_repr(*v.dict);
    case Value::Kind::Namespace: return "<Namespace " + dict_repr(*v.dict) + ">";
    case Value::Kind::Callable: return "<function " + v.callable->name + ">";
  }
  return "";
}

bool equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() == b.as_int();
    return a.as_double() == b.as_double();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return true;
    case Value::Kind::String: return a.text == b.text;
    case Value::Kind::List: {
      if (a.tuple != b.tuple || a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i)
        if (!equal((*a.list)[i], (*b.list)[i])) return false;
      return true;
    }
    case Value::Kind::Dict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* other = b.dict->find(k);
        if (!other || !equal(v, *other)) return false;
      }
      return true;
    }
    default: return a.dict == b.dict && a.callable == b.callable;
  }
}

bool less(const Value& a, const Value& b, const Where& where) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() < b.as_int();
    return a.as_double() < b.as_double();
  }
  // UTF-8 byte order is code point order, which is how Python orders str.
  if (a.is_string() && b.is_string()) return a.text < b.text;
  if (a.kind == Value::Kind::List && b.kind == Value::Kind::List) {
    const ValueList &x = *a.list, &y = *b.list;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i)
      if (!equal(x[i], y[i])) return less(x[i], y[i], where);
    return x.size() < y.size();
  }
  if (a.is_undefined()) fail_at(where, a.text);
  if (b.is_undefined()) fail_at(where, b.text);
  fail_at(where, fmt::format("'<' not supported between instances of '{}' and '{}'", type_name(a), type_name(b)));
}

bool contains(const Value& container, const Value& item, const Where& where) {
  switch (container.kind) {
    case Value::Kind::Undefined: return false;  // Undefined iterates as empty
    case Value::Kind::String:
      if (!item.is_string())
        fail_at(where, fmt::format("'in <string>' requires string as left operand, not {}", type_name(item)));
      return container.text.find(item.text) != std::string::npos;
    case Value::Kind::List:
      for (const Value& e : *container.list)
        if (equal(e, item)) return true;
      return false;
    case Value::Kind::Dict:
      return item.is_string() && container.dict->find(item.text) != nullptr;
    default: fail_at(where, fmt::format("argument of type '{}' is not iterable", type_name(container)));
  }
}

ValueList iterate(const Value& v, const Where& where) {
  switch (v.kind) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: return *v.list;
    case Value::Kind::String: {
      ValueList out;
      for (char32_t c : code_points(v.text)) out.push_back(Value::from_string(from_code_points(&c, &c + 1)));
      return out;
    }
    case Value::Kind::Dict: {
      ValueList out;
      for (const auto& kv : v.dict->items) out.push_back(Value::from_string(kv.first));
      return out;
    }
    default: fail_at(where, fmt::format("'{}' object is not iterable", type_name(v)));
  }
}

int64_t length(const Value& v, const Where& where) {
  switch (v.kind) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::String: {
      int64_t n = 0;
      for (unsigned char c : v.text) n += (c & 0xC0) != 0x80;
      return n;
    }
    case Value::Kind::List: return (int64_t)v.list->size();
    case Value::Kind::Dict: return (int64_t)v.dict->items.size();
    default: fail_at(where, fmt::format("object of type '{}' has no len()", type_name(v)));
  }
}

namespace {

void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    unsigned char b = (unsigned char)s[i];
    char buf[16];
    if (b >= 0x80) {
      size_t start = i;
      char32_t c = tok::utf8_next(s, i);
      if (!ensure_ascii) {
        out.append(s, start, i - start);
      } else if (c < 0x10000) {
        std::snprintf(buf, sizeof buf, "\\u%04x", (unsigned)c);
        out += buf;
      } else {
        char32_t u = c - 0x10000;
        std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", (unsigned)(0xD800 + (u >> 10)), (unsigned)(0xDC00 + (u & 0x3FF)));
        out += buf;
      }
      continue;
    }
    ++i;
    switch (b) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (b < 0x20) {
          std::snprintf(buf, sizeof buf, "\\u%04x", (unsigned)b);
          out += buf;
        } else {
          out += (char)b;
        }
    }
  }
  out += '"';
}

void json_value(std::string& out, const Value& v, const JsonOptions& o, int level, const Where& where) {
  auto newline = [&](int lvl) {
    out += '\n';
    for (int i = 0; i < lvl; ++i) out += o.indent;
  };
  switch (v.kind) {
    case Value::Kind::None: out += "null"; return;
    case Value::Kind::Bool: out += v.boolean ? "true" : "false"; return;
    case Value::Kind::Int: out += std::to_string(v.integer); return;
    case Value::Kind::Float:
      if (std::isnan(v.real)) out += "NaN";
      else if (std::isinf(v.real)) out += v.real < 0 ? "-Infinity" : "Infinity";
      else out += float_repr(v.real);
      return;
    case Value::Kind::String: json_string(out, v.text, o.ensure_ascii); return;
    case Value::Kind::List: {
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i) out += o.item_separator;
        if (o.has_indent) newline(level + 1);
        json_value(out, (*v.list)[i], o, level + 1, where);
      }
      if (o.has_indent) newline(level);
      out += ']';
      return;
    }
    case Value::Kind::Dict: {
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      if (o.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += o.item_separator;
        if (o.has_indent) newline(level + 1);
        json_string(out, items[i]->first, o.ensure_ascii);
        out += o.key_separator;
        json_value(out, items[i]->second, o, level + 1, where);
      }
      if (o.has_indent) newline(level);
      out += '}';
      return;
    }
    default: fail_at(where, fmt::format("tojson: Object of type {} is not JSON serializable", type_name(v)));
  }
}

}  // namespace

std::string to_json(const Value& v, const JsonOptions& o, const Where& where) {
  std::string out;
  json_value(out, v, o, 0, where);
  return out;
}

}  // namespace dsmoe::jinja
