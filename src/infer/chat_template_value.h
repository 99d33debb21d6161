// The values a chat template computes with, and the Python semantics Jinja2 gives them: str() and
// repr(), truthiness, ==, ordering, `in`, and json.dumps (the tojson filter). Internal to
// infer/chat_template*.cpp.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dsmoe::jinja {

struct Value;
struct CallArgs;
using ValueList = std::vector<Value>;
using NativeFn = std::function<Value(const CallArgs&)>;

// Python dicts keep insertion order; the JSON data model has string keys only.
struct ValueDict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value v);
};

struct Callable {
  std::string name;
  NativeFn fn;
};

struct Value {
  // Undefined is Jinja's default Undefined: `text` holds why (the hint its error message gives).
  // Namespace is namespace(...): the only mutable value, shared by reference as in Python.
  enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Callable };
  Kind kind = Kind::Undefined;
  bool tuple = false;   // a List that is a Python tuple: it prints as (a, b) and never equals a list
  bool markup = false;  // a String that is markupsafe.Markup (from |safe, |escape): see html_escape
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  std::string text;
  std::shared_ptr<const ValueList> list;
  std::shared_ptr<ValueDict> dict;  // Dict (never mutated once built) and Namespace
  std::shared_ptr<const Callable> callable;

  static Value undefined(std::string hint);
  static Value none();
  static Value from_bool(bool b);
  static Value from_int(int64_t i);
  static Value from_float(double d);
  static Value from_string(std::string s);
  static Value from_markup(std::string s);
  static Value from_list(ValueList items);
  static Value from_tuple(ValueList items);
  static Value from_dict(ValueDict d);
  static Value from_namespace(ValueDict d);
  static Value function(std::string name, NativeFn fn);
  static Value from_json(const nlohmann::ordered_json& j);

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_string() const { return kind == Kind::String; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float || kind == Kind::Bool; }
  bool is_integral() const { return kind == Kind::Int || kind == Kind::Bool; }
  int64_t as_int() const { return kind == Kind::Bool ? (int64_t)boolean : integer; }
  double as_double() const { return kind == Kind::Float ? real : (double)as_int(); }
};

// Where an operation is in the template, for error messages: "ORIGIN line L column C".
struct Where {
  const std::string* origin = nullptr;
  int line = 0, column = 0;
  std::string str() const;
};
[[noreturn]] void fail_at(const Where& where, const std::string& msg);

// Arguments of a call: f(1, x=2).
struct CallArgs {
  Where where;
  ValueList positional;
  std::vector<std::pair<std::string, Value>> keyword;
  // The argument at `index` or named `name`, or nullptr.
  const Value* get(size_t index, std::string_view name) const;
};

// Python's type name, for error messages ("str", "list", "dict", "NoneType", ...).
std::string type_name(const Value& v);
bool truthy(const Value& v);
// str(v) and repr(v).
std::string to_str(const Value& v);
std::string repr(const Value& v);
// repr(float): the shortest text that reads back as d.
std::string float_repr(double d);
bool equal(const Value& a, const Value& b);
// a < b as Python orders numbers, strings and lists; a dsmoe::Error (carrying `where`) otherwise.
bool less(const Value& a, const Value& b, const Where& where);
// `item in container`.
bool contains(const Value& container, const Value& item, const Where& where);
// Python's iteration: list items, string code points, dict keys; an Undefined iterates as empty.
ValueList iterate(const Value& v, const Where& where);
// Number of items (code points of a string).
int64_t length(const Value& v, const Where& where);

struct JsonOptions {
  bool ensure_ascii = false;
  bool has_indent = false;
  std::string indent;  // one level of indentation when has_indent
  std::string item_separator = ", ", key_separator = ": ";
  bool sort_keys = false;
};
// json.dumps(v, ...) with Python's formatting.
std::string to_json(const Value& v, const JsonOptions& o, const Where& where);

// markupsafe's escaping of & < > ' ". Autoescape is off, so only `+` meets it: Markup + str (or
// str + Markup) escapes the plain string, as markupsafe's operators do.
std::string html_escape(const std::string& s);

// Python's str.isspace() for one code point.
bool is_py_space(char32_t c);
std::vector<char32_t> code_points(std::string_view s);
std::string from_code_points(const char32_t* begin, const char32_t* end);

}  // namespace dsmoe::jinja
