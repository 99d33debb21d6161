// The syntax tree of a chat template and the parser that builds it (Jinja2's lexer with
// trim_blocks and lstrip_blocks, and its expression grammar). Internal to infer/chat_template*.cpp.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "infer/chat_template_value.h"

namespace dsmoe::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,   // literal
    Name,      // name
    List,      // args: the items; name "tuple" for a tuple literal
    Dict,      // args: key0, value0, key1, value1, ...
    Attr,      // args[0].name
    Item,      // args[0][args[1]]
    Slice,     // args[0][args[1]:args[2]:args[3]] (any of 1..3 may be null)
    Call,      // args[0](args[1..], kwargs)
    Filter,    // args[0] | name(args[1..], kwargs)
    Test,      // args[0] is [not] name(args[1..], kwargs)
    Unary,     // name ("-", "+", "not") args[0]
    Binary,    // args[0] name args[1]: + - * / // % ** ~
    Compare,   // args[0] ops[0] args[1] ops[1] args[2] ...: == != < <= > >= in notin
    And,       // args[0] and args[1]
    Or,        // args[0] or args[1]
    CondExpr,  // args[0] if args[1] else args[2] (args[2] null when there is no else)
  };
  Kind kind;
  int line = 0, column = 0;
  Value literal;
  std::string name;
  bool negated = false;
  int depth = 1;  // levels from here to the deepest leaf (the parser bounds it)
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
  enum class Kind { Text, Print, If, For, Set, SetBlock, Macro, Break, Continue, Generation };
  Kind kind;
  int line = 0, column = 0;
  std::string text;                  // Text: the text; Set / SetBlock / Macro: the name
  std::string attribute;             // Set: `ns.attribute = ...` when not empty
  ExprPtr expr;                      // Print, Set: the value; For: the iterable
  ExprPtr filter;                    // For: the `if` filter, or null
  std::vector<std::string> targets;  // For: the loop variables (several: tuple unpacking)
  std::vector<std::pair<ExprPtr, Body>> branches;  // If: (condition, body) of if and each elif
  Body body;                         // For / SetBlock / Macro / Generation
  Body else_body;                    // If, For
  std::vector<std::string> params;   // Macro
  std::vector<ExprPtr> defaults;     // Macro: one per param, null where none
};

struct Template {
  std::string origin;
  Body body;
};

// Parses Jinja source; errors name `origin`, the line and column, and the construct.
std::shared_ptr<const Template> parse_template(const std::string& source, const std::string& origin);

}  // namespace dsmoe::jinja
