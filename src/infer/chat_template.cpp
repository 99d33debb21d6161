// Rendering: statements and expressions of the syntax tree evaluated with Jinja2's semantics.
//
// Scoping follows Jinja2's compiled code: the template's top level is one scope (the caller's
// variables and every top-level `set`); each for-loop iteration and each macro call runs in a fresh
// child scope, so a `set` there is gone afterwards (templates carry state out of loops in a
// namespace, which is shared by reference); `if` opens no scope.
#include "infer/chat_template.h"

#include <cmath>
#include <unordered_map>

#include "core/error.h"
#include "infer/chat_template_builtins.h"
#include "infer/chat_template_syntax.h"

namespace dsmoe {
namespace jinja {
namespace {

struct Scope {
  std::shared_ptr<Scope> parent;
  std::unordered_map<std::string, Value> vars;

  const Value* find(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent.get()) {
      auto it = s->vars.find(name);
      if (it != s->vars.end()) return &it->second;
    }
    return nullptr;
  }
};
using ScopePtr = std::shared_ptr<Scope>;

ScopePtr child_of(const ScopePtr& parent) {
  auto s = std::make_shared<Scope>();
  s->parent = parent;
  return s;
}

enum class Flow { Normal, Break, Continue };

[[noreturn]] void integer_overflow(const Where& where) {
  fail_at(where, "integer overflow (this engine's integers are 64-bit)");
}

class Renderer {
 public:
  Renderer(const Template& t, const ChatTemplateLimits& limits) : tpl_(t) { budget_.limits = &limits; }

  std::string run(const nlohmann::ordered_json& variables) {
    if (!variables.is_object()) fail("{}: the render variables must be a JSON object", tpl_.origin);
    auto globals = std::make_shared<Scope>();
    for (auto& [k, v] : make_globals().items) globals->vars[k] = std::move(v);
    ScopePtr top = child_of(globals);
    for (auto it = variables.begin(); it != variables.end(); ++it) top->vars[it.key()] = Value::from_json(it.value());
    std::string out;
    exec(tpl_.body, top, out);
    return out;
  }

 private:
  const Template& tpl_;
  RenderBudget budget_;

  Where where(int line, int column) const { return Where{&tpl_.origin, line, column}; }
  Where where(const Expr& e) const { return where(e.line, e.column); }
  Where where(const Node& n) const { return where(n.line, n.column); }

  void emit(std::string& out, const std::string& text, const Where& at) {
    if (out.size() + text.size() > budget_.limits->max_output_bytes)
      fail_at(at, fmt::format("refusing to render more than {} bytes (limit max_output_bytes)", budget_.limits->max_output_bytes));
    budget_.charge(text.size(), at);
    out += text;
  }

  // ---- statements ----

  Flow exec(const Body& body, const ScopePtr& scope, std::string& out) {
    for (const NodePtr& n : body) {
      Flow f = exec_node(*n, scope, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow exec_node(const Node& n, const ScopePtr& scope, std::string& out) {
    switch (n.kind) {
      case Node::Kind::Text: emit(out, n.text, where(n)); return Flow::Normal;
      case Node::Kind::Print: emit(out, to_str(eval(*n.expr, scope)), where(n)); return Flow::Normal;
      case Node::Kind::If:
        for (const auto& [cond, body] : n.branches)
          if (truthy(eval(*cond, scope))) return exec(body, scope, out);
        return exec(n.else_body, scope, out);
      case Node::Kind::For: exec_for(n, scope, out); return Flow::Normal;
      case Node::Kind::Set: {
        Value v = eval(*n.expr, scope);
        if (n.attribute.empty()) {
          scope->vars[n.text] = std::move(v);
          return Flow::Normal;
        }
        const Value* ns = scope->find(n.text);
        if (!ns || ns->kind != Value::Kind::Namespace)
          fail_at(where(n), fmt::format("cannot assign attribute '{}' on '{}': it is not a namespace()", n.attribute, n.text));
        ns->dict->set(n.attribute, std::move(v));
        return Flow::Normal;
      }
      case Node::Kind::SetBlock: {
        std::string captured;
        exec(n.body, child_of(scope), captured);
        scope->vars[n.text] = Value::from_string(std::move(captured));
        return Flow::Normal;
      }
      case Node::Kind::Macro: scope->vars[n.text] = make_macro(n, scope); return Flow::Normal;
      case Node::Kind::Break: return Flow::Break;
      case Node::Kind::Continue: return Flow::Continue;
      // transformers renders {% generation %} as a call block: its body runs in a scope of its own.
      case Node::Kind::Generation: return exec(n.body, child_of(scope), out);
    }
    return Flow::Normal;
  }

  void bind_targets(const Node& n, Scope& s, const Value& item) {
    if (n.targets.size() == 1) {
      s.vars[n.targets[0]] = item;
      return;
    }
    ValueList parts = iterate(item, where(n));
    if (parts.size() != n.targets.size())
      fail_at(where(n), fmt::format("cannot unpack {} values into {} loop variables", parts.size(), n.targets.size()));
    for (size_t i = 0; i < parts.size(); ++i) s.vars[n.targets[i]] = parts[i];
  }

  void exec_for(const Node& n, const ScopePtr& scope, std::string& out) {
    ValueList items = iterate(eval(*n.expr, scope), where(*n.expr));
    if (n.filter) {
      // The `if` filter runs before the loop, so loop.length and loop.index count kept items only.
      ValueList kept;
      for (const Value& item : items) {
        budget_.charge_iteration(where(n));
        ScopePtr s = child_of(scope);
        bind_targets(n, *s, item);
        if (truthy(eval(*n.filter, s))) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const int64_t count = (int64_t)items.size();
    for (int64_t i = 0; i < count; ++i) {
      budget_.charge_iteration(where(n));
      ScopePtr s = child_of(scope);
      bind_targets(n, *s, items[(size_t)i]);
      ValueDict loop;
      loop.set("index", Value::from_int(i + 1));
      loop.set("index0", Value::from_int(i));
      loop.set("revindex", Value::from_int(count - i));
      loop.set("revindex0", Value::from_int(count - i - 1));
      loop.set("first", Value::from_bool(i == 0));
      loop.set("last", Value::from_bool(i == count - 1));
      loop.set("length", Value::from_int(count));
      loop.set("depth", Value::from_int(1));
      loop.set("depth0", Value::from_int(0));
      if (i > 0) loop.set("previtem", items[(size_t)i - 1]);
      if (i + 1 < count) loop.set("nextitem", items[(size_t)i + 1]);
      loop.set("cycle", Value::function("loop.cycle", [i](const CallArgs& a) {
                 if (a.positional.empty()) fail_at(a.where, "loop.cycle() needs at least one argument");
                 return a.positional[(size_t)(i % (int64_t)a.positional.size())];
               }));
      s->vars["loop"] = Value::from_dict(std::move(loop));
      if (exec(n.body, s, out) == Flow::Break) break;
    }
    if (count == 0) exec(n.else_body, child_of(scope), out);
  }

  Value make_macro(const Node& n, const ScopePtr& scope) {
    // The macro sees its defining scope as it is when called (a weak link: no scope <-> macro cycle).
    std::weak_ptr<Scope> defining = scope;
    const Node* node = &n;
    return Value::function(n.text, [this, node, defining](const CallArgs& a) {
      ScopePtr parent = defining.lock();
      if (!parent) fail_at(a.where, fmt::format("macro '{}' called after the scope that defined it ended", node->text));
      if (a.positional.size() > node->params.size())
        fail_at(a.where, fmt::format("macro '{}' takes not more than {} argument(s)", node->text, node->params.size()));
      if (++budget_.call_depth > budget_.limits->max_call_depth)
        fail_at(a.where, fmt::format("refusing to nest macro calls deeper than {} (limit max_call_depth)", budget_.limits->max_call_depth));
      ScopePtr s = child_of(parent);
      for (const auto& [k, v] : a.keyword)
        if (std::find(node->params.begin(), node->params.end(), k) == node->params.end())
          fail_at(a.where, fmt::format("macro '{}' takes no keyword argument '{}'", node->text, k));
      for (size_t i = 0; i < node->params.size(); ++i) {
        const std::string& p = node->params[i];
        if (const Value* v = a.get(i, p)) s->vars[p] = *v;
        else if (node->defaults[i]) s->vars[p] = eval(*node->defaults[i], s);
        else s->vars[p] = Value::undefined(fmt::format("parameter '{}' was not provided", p));
      }
      std::string out;
      exec(node->body, s, out);
      --budget_.call_depth;
      return Value::from_string(std::move(out));
    });
  }

  // ---- expressions ----

  CallArgs call_args(const Expr& e, size_t first_positional, const ScopePtr& scope) {
    CallArgs a;
    a.where = where(e);
    for (size_t i = first_positional; i < e.args.size(); ++i) a.positional.push_back(eval(*e.args[i], scope));
    for (const auto& [k, v] : e.kwargs) a.keyword.emplace_back(k, eval(*v, scope));
    return a;
  }

  Value eval(const Expr& e, const ScopePtr& scope) {
    switch (e.kind) {
      case Expr::Kind::Literal: return e.literal;
      case Expr::Kind::Name: {
        const Value* v = scope->find(e.name);
        return v ? *v : Value::undefined(fmt::format("'{}' is undefined", e.name));
      }
      case Expr::Kind::List: {
        ValueList items;
        for (const ExprPtr& a : e.args) items.push_back(eval(*a, scope));
        return e.name == "tuple" ? Value::from_tuple(std::move(items)) : Value::from_list(std::move(items));
      }
      case Expr::Kind::Dict: {
        ValueDict d;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value k = eval(*e.args[i], scope);
          if (!k.is_string()) fail_at(where(*e.args[i]), fmt::format("dict keys must be strings here, got {}", type_name(k)));
          d.set(k.text, eval(*e.args[i + 1], scope));
        }
        return Value::from_dict(std::move(d));
      }
      case Expr::Kind::Attr: return get_attribute(eval(*e.args[0], scope), e.name, where(e), budget_);
      case Expr::Kind::Item: return get_item(eval(*e.args[0], scope), eval(*e.args[1], scope), where(e), budget_);
      case Expr::Kind::Slice: {
        auto bound = [&](const ExprPtr& b) { return b ? eval(*b, scope) : Value::none(); };
        Value obj = eval(*e.args[0], scope);
        return get_slice(obj, bound(e.args[1]), bound(e.args[2]), bound(e.args[3]), where(e));
      }
      case Expr::Kind::Call: {
        Value callee = eval(*e.args[0], scope);
        CallArgs a = call_args(e, 1, scope);
        if (callee.kind == Value::Kind::Callable) return callee.callable->fn(a);
        if (callee.is_undefined()) fail_at(where(e), callee.text);
        fail_at(where(e), fmt::format("'{}' object is not callable", type_name(callee)));
      }
      case Expr::Kind::Filter: {
        Value subject = eval(*e.args[0], scope);
        return apply_filter(e.name, subject, call_args(e, 1, scope), budget_);
      }
      case Expr::Kind::Test: {
        Value subject = eval(*e.args[0], scope);
        return Value::from_bool(apply_test(e.name, subject, call_args(e, 1, scope)) != e.negated);
      }
      case Expr::Kind::Unary: {
        Value v = eval(*e.args[0], scope);
        if (e.name == "not") return Value::from_bool(!truthy(v));
        if (v.is_undefined()) fail_at(where(e), v.text);
        if (!v.is_number()) fail_at(where(e), fmt::format("bad operand type for unary {}: '{}'", e.name, type_name(v)));
        if (e.name == "+") return v.is_integral() ? Value::from_int(v.as_int()) : v;
        if (v.kind == Value::Kind::Float) return Value::from_float(-v.real);
        if (v.as_int() == INT64_MIN) integer_overflow(where(e));
        return Value::from_int(-v.as_int());
      }
      case Expr::Kind::Binary: return binary(e, eval(*e.args[0], scope), eval(*e.args[1], scope));
      case Expr::Kind::Compare: {
        Value left = eval(*e.args[0], scope);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1], scope);
          if (!compare(e.ops[i], left, right, where(e))) return Value::from_bool(false);
          left = std::move(right);
        }
        return Value::from_bool(true);
      }
      case Expr::Kind::And: {
        Value l = eval(*e.args[0], scope);
        return truthy(l) ? eval(*e.args[1], scope) : l;
      }
      case Expr::Kind::Or: {
        Value l = eval(*e.args[0], scope);
        return truthy(l) ? l : eval(*e.args[1], scope);
      }
      case Expr::Kind::CondExpr:
        if (truthy(eval(*e.args[1], scope))) return eval(*e.args[0], scope);
        if (e.args[2]) return eval(*e.args[2], scope);
        return Value::undefined(fmt::format("the inline if-expression on line {} evaluated to false and no else section was defined", e.line));
    }
    return Value();
  }

  static bool compare(const std::string& op, const Value& l, const Value& r, const Where& at) {
    if (op == "==") return equal(l, r);
    if (op == "!=") return !equal(l, r);
    if (op == "<") return less(l, r, at);
    if (op == ">") return less(r, l, at);
    if (op == "<=") return !less(r, l, at);
    if (op == ">=") return !less(l, r, at);
    if (op == "in") return contains(r, l, at);
    return !contains(r, l, at);  // notin
  }

  Value repeat(const Value& seq, int64_t times, const Where& at) {
    const bool empty = seq.is_string() ? seq.text.empty() : seq.list->empty();
    if (times <= 0 || empty) return seq.is_string() ? Value::from_string("") : Value::from_list({});
    if (seq.is_string()) {
      budget_.charge(seq.text.size() * (size_t)std::min<int64_t>(times, INT32_MAX), at);
      std::string out;
      out.reserve(seq.text.size() * (size_t)times);
      for (int64_t i = 0; i < times; ++i) out += seq.text;
      return Value::from_string(std::move(out));
    }
    budget_.charge(seq.list->size() * (size_t)std::min<int64_t>(times, INT32_MAX), at);
    ValueList out;
    for (int64_t i = 0; i < times; ++i) out.insert(out.end(), seq.list->begin(), seq.list->end());
    return Value::from_list(std::move(out));
  }

  Value binary(const Expr& e, const Value& a, const Value& b) {
    const Where at = where(e);
    const std::string& op = e.name;
    if (op == "~") {
      std::string s = to_str(a) + to_str(b);
      budget_.charge(s.size(), at);
      return Value::from_string(std::move(s));
    }
    if (a.is_undefined()) fail_at(at, a.text);
    if (b.is_undefined()) fail_at(at, b.text);
    auto unsupported = [&]() -> Value {
      fail_at(at, fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b)));
    };
    const bool ints = a.is_integral() && b.is_integral(), nums = a.is_number() && b.is_number();
    int64_t r = 0;
    if (op == "+") {
      if (ints) {
        if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) integer_overflow(at);
        return Value::from_int(r);
      }
      if (nums) return Value::from_float(a.as_double() + b.as_double());
      if (a.is_string() && b.is_string()) {
        if (a.markup != b.markup) {  // markupsafe escapes the plain operand
          std::string s = (a.markup ? a.text : html_escape(a.text)) + (b.markup ? b.text : html_escape(b.text));
          budget_.charge(s.size(), at);
          return Value::from_markup(std::move(s));
        }
        budget_.charge(a.text.size() + b.text.size(), at);
        Value s = Value::from_string(a.text + b.text);
        s.markup = a.markup;
        return s;
      }
      if (a.kind == Value::Kind::List && b.kind == Value::Kind::List) {
        budget_.charge(a.list->size() + b.list->size(), at);  // items count as bytes: a list doubled in a loop stops too
        ValueList out = *a.list;
        out.insert(out.end(), b.list->begin(), b.list->end());
        return Value::from_list(std::move(out));
      }
      return unsupported();
    }
    if (op == "-") {
      if (ints) {
        if (__builtin_sub_overflow(a.as_int(), b.as_int(), &r)) integer_overflow(at);
        return Value::from_int(r);
      }
      if (nums) return Value::from_float(a.as_double() - b.as_double());
      return unsupported();
    }
    if (op == "*") {
      if (ints) {
        if (__builtin_mul_overflow(a.as_int(), b.as_int(), &r)) integer_overflow(at);
        return Value::from_int(r);
      }
      if (nums) return Value::from_float(a.as_double() * b.as_double());
      if ((a.is_string() || a.kind == Value::Kind::List) && b.is_integral()) return repeat(a, b.as_int(), at);
      if ((b.is_string() || b.kind == Value::Kind::List) && a.is_integral()) return repeat(b, a.as_int(), at);
      return unsupported();
    }
    if (!nums) {
      if (op == "%" && a.is_string()) fail_at(at, "string formatting with % is not supported");
      return unsupported();
    }
    if (op == "**") {
      if (ints && b.as_int() >= 0) {
        int64_t result = 1, base = a.as_int();
        for (int64_t k = 0; k < b.as_int(); ++k) {
          if (__builtin_mul_overflow(result, base, &result)) integer_overflow(at);
          if (result == 0 || result == 1) break;
        }
        return Value::from_int(result);
      }
      return Value::from_float(std::pow(a.as_double(), b.as_double()));
    }
    bool zero = b.is_integral() ? b.as_int() == 0 : b.real == 0;
    if (zero) fail_at(at, op == "/" ? "division by zero" : op == "//" ? "integer division or modulo by zero" : "modulo by zero");
    if (op == "/") return Value::from_float(a.as_double() / b.as_double());
    if (ints) {
      int64_t x = a.as_int(), y = b.as_int();
      if (x == INT64_MIN && y == -1) integer_overflow(at);
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {  // Python floors toward negative infinity
        --q;
        m += y;
      }
      return Value::from_int(op == "//" ? q : m);
    }
    double x = a.as_double(), y = b.as_double();
    if (op == "//") return Value::from_float(std::floor(x / y));
    double m = std::fmod(x, y);
    if (m != 0 && ((m < 0) != (y < 0))) m += y;
    return Value::from_float(m);
  }
};

// Jinja resolves filter and test names when it compiles a template: an unknown one fails there.
void check_names(const Expr* e, const std::string& origin) {
  if (!e) return;
  if (e->kind == Expr::Kind::Filter && !has_filter(e->name))
    fail("{} line {} column {}: no filter named '{}'", origin, e->line, e->column, e->name);
  if (e->kind == Expr::Kind::Test && !has_test(e->name))
    fail("{} line {} column {}: no test named '{}'", origin, e->line, e->column, e->name);
  for (const ExprPtr& a : e->args) check_names(a.get(), origin);
  for (const auto& kv : e->kwargs) check_names(kv.second.get(), origin);
}

void check_names(const Body& body, const std::string& origin) {
  for (const NodePtr& n : body) {
    check_names(n->expr.get(), origin);
    check_names(n->filter.get(), origin);
    for (const auto& [cond, b] : n->branches) {
      check_names(cond.get(), origin);
      check_names(b, origin);
    }
    for (const ExprPtr& d : n->defaults) check_names(d.get(), origin);
    check_names(n->body, origin);
    check_names(n->else_body, origin);
  }
}

}  // namespace
}  // namespace jinja

ChatTemplate ChatTemplate::parse(const std::string& source, const std::string& origin) {
  ChatTemplate t;
  auto parsed = jinja::parse_template(source, origin);
  jinja::check_names(parsed->body, origin);
  t.impl_ = std::move(parsed);
  return t;
}

std::string ChatTemplate::render(const nlohmann::ordered_json& variables, const ChatTemplateLimits& limits) const {
  DSMOE_ASSERT(impl_, "render of a ChatTemplate that was never parsed");
  return jinja::Renderer(*impl_, limits).run(variables);
}

const std::string& ChatTemplate::origin() const {
  DSMOE_ASSERT(impl_, "origin of a ChatTemplate that was never parsed");
  return impl_->origin;
}

}  // namespace dsmoe
