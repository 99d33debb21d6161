// Lexer and parser of the chat-template Jinja subset. The lexer reproduces Jinja2's whitespace
// handling under transformers' settings (trim_blocks, lstrip_blocks, keep_trailing_newline=False);
// the parser follows Jinja2's grammar, including its precedences where they differ from Python's
// (`~` binds tighter than `+`, `**` is left-associative, filters bind tighter than unary minus
// applies to a call).
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "infer/chat_template_syntax.h"
#include "tokenizer/unicode.h"

namespace dsmoe::jinja {
namespace {

struct Token {
  enum class Type { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Op, Eof };
  Type type;
  std::string value;  // Data text, Name, String (unescaped), Op
  int64_t integer = 0;
  double real = 0;
  int line = 1, column = 1;
};

std::string describe(const Token& t) {
  switch (t.type) {
    case Token::Type::Data: return "template text";
    case Token::Type::VarBegin: return "'{{'";
    case Token::Type::VarEnd: return "end of print statement '}}'";
    case Token::Type::BlockBegin: return "'{%'";
    case Token::Type::BlockEnd: return "end of statement '%}'";
    case Token::Type::Name: return "'" + t.value + "'";
    case Token::Type::String: return "string literal";
    case Token::Type::Integer:
    case Token::Type::Float: return "number";
    case Token::Type::Op: return "'" + t.value + "'";
    case Token::Type::Eof: return "end of template";
  }
  return "?";
}

bool all_py_space(std::string_view s) {
  for (size_t i = 0; i < s.size();)
    if (!is_py_space(tok::utf8_next(s, i))) return false;
  return true;
}

// Python's str.rstrip(): drops trailing whitespace code points.
void rstrip_py(std::string& s) {
  size_t end = s.size();
  while (end > 0) {
    size_t i = end;
    char32_t c = tok::utf8_prev(s, i);
    if (!is_py_space(c)) break;
    end = i;
  }
  s.resize(end);
}

// Skips whitespace code points from `pos`.
size_t skip_py_space(const std::string& s, size_t pos) {
  while (pos < s.size()) {
    size_t i = pos;
    if (!is_py_space(tok::utf8_next(s, i))) break;
    pos = i;
  }
  return pos;
}

class Lexer {
 public:
  Lexer(const std::string& source, const std::string& origin) : origin_(origin) {
    // Jinja normalises \r\n and \r to \n and, without keep_trailing_newline, drops one final newline.
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;  // the previous match ended with a newline (or this is the start)
    while (pos < src_.size()) {
      size_t start = find_tag(pos);
      if (start == std::string::npos) {
        emit_data(src_.substr(pos), pos);
        break;
      }
      char kind = src_[start + 1];
      char sign = start + 2 < src_.size() && (src_[start + 2] == '-' || src_[start + 2] == '+') ? src_[start + 2] : 0;
      std::string text = src_.substr(pos, start - pos);
      if (sign == '-') {
        rstrip_py(text);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: whitespace between the line start and a block or comment tag goes.
        size_t line_pos = text.rfind('\n');
        line_pos = line_pos == std::string::npos ? 0 : line_pos + 1;
        if ((line_pos > 0 || line_starting) && line_pos < text.size() && all_py_space(std::string_view(text).substr(line_pos)))
          text.resize(line_pos);
      }
      emit_data(std::move(text), pos);
      size_t p = start + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        size_t end = src_.find("#}", p);
        if (end == std::string::npos) fail_at(start, "unclosed comment '{#' (no '#}' follows)");
        char before = end > p ? src_[end - 1] : 0;
        pos = end + 2;
        pos = after_tag_end(pos, before);
      } else {
        pos = lex_tag(start, p, kind == '%');
      }
      line_starting = pos > 0 && src_[pos - 1] == '\n';
    }
    push(Token::Type::Eof, "", src_.size());
    return std::move(tokens_);
  }

 private:
  std::string src_, origin_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;

  [[noreturn]] void fail_at(size_t offset, const std::string& msg) {
    auto [line, column] = position(offset);
    fail("{} line {} column {}: {}", origin_, line, column, msg);
  }

  // 1-based line and code-point column of a byte offset.
  std::pair<int, int> position(size_t offset) const {
    size_t line = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset) - line_starts_.begin();
    int column = 1;
    for (size_t i = line_starts_[line - 1]; i < offset && i < src_.size(); ++i) column += ((unsigned char)src_[i] & 0xC0) != 0x80;
    return {(int)line, column};
  }

  Token& push(Token::Type type, std::string value, size_t offset) {
    Token t;
    t.type = type;
    t.value = std::move(value);
    std::tie(t.line, t.column) = position(offset);
    tokens_.push_back(std::move(t));
    return tokens_.back();
  }

  void emit_data(std::string text, size_t offset) {
    if (!text.empty()) push(Token::Type::Data, std::move(text), offset);
  }

  size_t find_tag(size_t pos) const {
    for (size_t i = src_.find('{', pos); i != std::string::npos; i = src_.find('{', i + 1))
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    return std::string::npos;
  }

  // After a block or comment end: `-` strips all following whitespace, `+` keeps it, and otherwise
  // trim_blocks drops one newline.
  size_t after_tag_end(size_t pos, char modifier) const {
    if (modifier == '-') return skip_py_space(src_, pos);
    if (modifier != '+' && pos < src_.size() && src_[pos] == '\n') return pos + 1;
    return pos;
  }

  // Tokens of one {{ ... }} or {% ... %} from `p` (after the opening delimiter); returns the offset
  // after its end.
  size_t lex_tag(size_t start, size_t p, bool block) {
    push(block ? Token::Type::BlockBegin : Token::Type::VarBegin, "", start);
    int depth = 0;  // open brackets: an end delimiter inside them is not the end (Jinja's balancing)
    // Left-associative chains (1 + 1 + ...) parse without recursion but evaluate recursively: a
    // bound on the tokens of one tag bounds the depth of its syntax tree.
    const size_t first_token = tokens_.size();
    constexpr size_t kMaxTagTokens = 2000;
    while (true) {
      if (tokens_.size() - first_token > kMaxTagTokens)
        fail_at(start, fmt::format("more than {} tokens in one tag", kMaxTagTokens));
      while (p < src_.size() && is_py_space((unsigned char)src_[p])) ++p;
      if (p >= src_.size()) fail_at(start, block ? "unclosed tag '{%' (no '%}' follows)" : "unclosed '{{' (no '}}' follows)");
      const char* end = block ? "%}" : "}}";
      if (depth == 0) {
        if (src_.compare(p, 2, end) == 0) {
          push(block ? Token::Type::BlockEnd : Token::Type::VarEnd, "", p);
          return block ? after_tag_end(p + 2, 0) : p + 2;
        }
        if ((src_[p] == '-' || (block && src_[p] == '+')) && src_.compare(p + 1, 2, end) == 0) {
          push(block ? Token::Type::BlockEnd : Token::Type::VarEnd, "", p);
          return after_tag_end(p + 3, src_[p]);
        }
      }
      unsigned char c = (unsigned char)src_[p];
      if (std::isdigit(c)) {
        p = lex_number(p);
      } else if (std::isalpha(c) || c == '_') {
        size_t q = p;
        while (q < src_.size() && (std::isalnum((unsigned char)src_[q]) || src_[q] == '_')) ++q;
        push(Token::Type::Name, src_.substr(p, q - p), p);
        p = q;
      } else if (c == '\'' || c == '"') {
        p = lex_string(p);
      } else {
        static const char* kOps[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                     "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"};
        const char* op = nullptr;
        for (const char* o : kOps)
          if (src_.compare(p, std::strlen(o), o) == 0) {
            op = o;
            break;
          }
        if (!op) fail_at(p, fmt::format("unexpected character '{}' in expression", src_.substr(p, tok::utf8_len(c))));
        if (*op == '(' || *op == '[' || *op == '{') ++depth;
        if ((*op == ')' || *op == ']' || *op == '}') && depth > 0) --depth;
        push(Token::Type::Op, op, p);
        p += std::strlen(op);
      }
    }
  }

  size_t scan_digits(size_t p) const {
    // Digits with single underscores between them, as Jinja's (\d+_)*\d+.
    while (p < src_.size()) {
      if (std::isdigit((unsigned char)src_[p])) ++p;
      else if (src_[p] == '_' && p + 1 < src_.size() && std::isdigit((unsigned char)src_[p + 1])) ++p;
      else break;
    }
    return p;
  }

  // 0x / 0o / 0b integers (single underscores allowed after the prefix and between digits).
  size_t lex_prefixed_integer(size_t p) {
    const char kind = (char)std::tolower((unsigned char)src_[p + 1]);
    const int base = kind == 'x' ? 16 : kind == 'o' ? 8 : 2;
    auto is_digit = [&](char c) {
      int d = std::isdigit((unsigned char)c) ? c - '0' : std::isxdigit((unsigned char)c) ? std::tolower(c) - 'a' + 10 : 99;
      return d < base;
    };
    std::string digits;
    size_t q = p + 2;
    while (q < src_.size() && (is_digit(src_[q]) || (src_[q] == '_' && q + 1 < src_.size() && is_digit(src_[q + 1])))) {
      if (src_[q] != '_') digits += src_[q];
      ++q;
    }
    if (digits.empty()) fail_at(p, "invalid integer literal " + src_.substr(p, 2));
    errno = 0;
    Token& t = push(Token::Type::Integer, src_.substr(p, q - p), p);
    t.integer = std::strtoll(digits.c_str(), nullptr, base);
    if (errno == ERANGE) fail_at(p, "integer literal " + t.value + " does not fit in 64 bits");
    return q;
  }

  size_t lex_number(size_t p) {
    if (src_[p] == '0' && p + 2 < src_.size() && std::strchr("xXoObB", src_[p + 1]) && src_[p + 1] != '\0')
      return lex_prefixed_integer(p);
    size_t q = scan_digits(p);
    bool is_float = false;
    bool after_dot = p > 0 && src_[p - 1] == '.';  // Jinja's (?<!\.): `x.0.1` is x[0][1]
    if (!after_dot && q + 1 < src_.size() && src_[q] == '.' && std::isdigit((unsigned char)src_[q + 1])) {
      q = scan_digits(q + 1);
      is_float = true;
    }
    if (!after_dot && q < src_.size() && (src_[q] == 'e' || src_[q] == 'E')) {
      size_t e = q + 1;
      if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
      if (e < src_.size() && std::isdigit((unsigned char)src_[e])) {
        q = scan_digits(e);
        is_float = true;
      }
    }
    std::string digits;
    for (size_t i = p; i < q; ++i)
      if (src_[i] != '_') digits += src_[i];
    Token& t = push(is_float ? Token::Type::Float : Token::Type::Integer, digits, p);
    if (is_float) {
      t.real = std::strtod(digits.c_str(), nullptr);
    } else {
      // Python (and so Jinja) refuses leading zeros in a decimal integer: 007 is not 7.
      if (digits.size() > 1 && digits[0] == '0' && digits.find_first_not_of('0') != std::string::npos)
        fail_at(p, "leading zeros in an integer literal (" + digits + ") are not allowed");
      errno = 0;
      t.integer = std::strtoll(digits.c_str(), nullptr, 10);
      if (errno == ERANGE) fail_at(p, "integer literal " + digits + " does not fit in 64 bits");
    }
    return q;
  }

  // A quoted string with Python's escapes (Jinja decodes literals with "unicode-escape").
  size_t lex_string(size_t p) {
    char quote = src_[p];
    std::string out;
    size_t i = p + 1;
    auto hex = [&](size_t at, int n) -> char32_t {
      if (at + n > src_.size()) fail_at(at, "truncated escape in string literal");
      char32_t v = 0;
      for (int k = 0; k < n; ++k) {
        char h = src_[at + k];
        if (!std::isxdigit((unsigned char)h)) fail_at(at, "truncated escape in string literal");
        v = v * 16 + (char32_t)(std::isdigit((unsigned char)h) ? h - '0' : (std::tolower(h) - 'a' + 10));
      }
      return v;
    };
    while (true) {
      if (i >= src_.size()) fail_at(p, "unterminated string literal");
      char c = src_[i];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        ++i;
        continue;
      }
      if (i + 1 >= src_.size()) fail_at(p, "unterminated string literal");
      char e = src_[i + 1];
      i += 2;
      switch (e) {
        case '\n': break;  // line continuation
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'v': out += '\v'; break;
        case 'x': tok::utf8_append(out, hex(i, 2)); i += 2; break;
        case 'u': tok::utf8_append(out, hex(i, 4)); i += 4; break;
        case 'U': {
          char32_t cp = hex(i, 8);
          if (cp > 0x10FFFF) fail_at(i, "escape \\U beyond U+10FFFF in string literal");
          tok::utf8_append(out, cp);
          i += 8;
          break;
        }
        case 'N': fail_at(i - 2, "named escapes (\\N{...}) in string literals are not supported");
        default:
          if (e >= '0' && e <= '7') {
            char32_t v = (char32_t)(e - '0');
            for (int k = 0; k < 2 && i < src_.size() && src_[i] >= '0' && src_[i] <= '7'; ++k) v = v * 8 + (char32_t)(src_[i++] - '0');
            tok::utf8_append(out, v);
          } else if ((unsigned char)e >= 0x80) {
            // Jinja backslash-escapes non-ASCII before decoding, so "\é" reads as the text \xe9.
            size_t at = i - 1;
            char32_t cp = tok::utf8_next(src_, at);
            char buf[16];
            std::snprintf(buf, sizeof buf, cp < 0x100 ? "\\x%02x" : cp < 0x10000 ? "\\u%04x" : "\\U%08x", (unsigned)cp);
            out += buf;
            i = at;
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    push(Token::Type::String, std::move(out), p);
    return i + 1;
  }
};

bool is_end_tag(const std::string& name) {
  return name == "elif" || name == "else" || name.rfind("end", 0) == 0;
}

class Parser {
 public:
  Parser(std::vector<Token> tokens, std::string origin) : toks_(std::move(tokens)), origin_(std::move(origin)) {}

  Body parse_all() {
    std::string matched;
    return parse_body({}, nullptr, nullptr, matched);
  }

 private:
  std::vector<Token> toks_;
  size_t pos_ = 0;
  std::string origin_;
  int loop_depth_ = 0;
  int nesting_ = 0;

  const Token& cur() const { return toks_[pos_]; }
  const Token& peek(size_t k = 1) const { return toks_[std::min(pos_ + k, toks_.size() - 1)]; }
  void advance() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  static bool is_name(const Token& t, const char* n) { return t.type == Token::Type::Name && t.value == n; }
  static bool is_op(const Token& t, const char* o) { return t.type == Token::Type::Op && t.value == o; }

  [[noreturn]] void error_at(int line, int column, const std::string& msg) const {
    fail("{} line {} column {}: {}", origin_, line, column, msg);
  }
  [[noreturn]] void error(const Token& t, const std::string& msg) const { error_at(t.line, t.column, msg); }
  void expect_op(const char* o) {
    if (!is_op(cur(), o)) error(cur(), fmt::format("expected '{}', got {}", o, describe(cur())));
    advance();
  }
  std::string expect_name(const char* what) {
    if (cur().type != Token::Type::Name) error(cur(), fmt::format("expected {}, got {}", what, describe(cur())));
    std::string n = cur().value;
    advance();
    return n;
  }
  void expect_block_end(const char* statement) {
    if (cur().type != Token::Type::BlockEnd)
      error(cur(), fmt::format("expected end of '{}' statement '%}}', got {}", statement, describe(cur())));
    advance();
  }

  // A new expression or statement node of `kind` positioned at `at`.
  template <typename T>
  static std::unique_ptr<T> make_at(typename T::Kind kind, const Token& at) {
    auto n = std::make_unique<T>();
    n->kind = kind;
    n->line = at.line;
    n->column = at.column;
    return n;
  }
  static ExprPtr make(Expr::Kind kind, const Token& at) { return make_at<Expr>(kind, at); }
  static NodePtr make_node(Node::Kind kind, const Token& at) { return make_at<Node>(kind, at); }

  // Statements until one of `ends` ({% end... %} or {% else %} ...); its name goes to `matched`
  // with the tokens up to the tag name consumed.
  Body parse_body(const std::vector<std::string>& ends, const char* opener, const Token* open_tok, std::string& matched) {
    Body body;
    auto expected = [&] {
      std::string s;
      for (const auto& e : ends) s += (s.empty() ? "'" : " or '") + e + "'";
      return s;
    };
    while (true) {
      const Token& t = cur();
      switch (t.type) {
        case Token::Type::Eof:
          if (ends.empty()) return body;
          error(*open_tok, fmt::format("unclosed '{}' block: expected {} before the end of the template", opener, expected()));
        case Token::Type::Data: {
          auto n = make_node(Node::Kind::Text, t);
          n->text = t.value;
          body.push_back(std::move(n));
          advance();
          break;
        }
        case Token::Type::VarBegin: {
          auto n = make_node(Node::Kind::Print, t);
          advance();
          n->expr = parse_expression(true);
          if (is_op(cur(), ",")) error(cur(), "printing a tuple ({{ a, b }}) is not supported");
          if (cur().type != Token::Type::VarEnd) error(cur(), fmt::format("expected '}}}}', got {}", describe(cur())));
          advance();
          body.push_back(std::move(n));
          break;
        }
        case Token::Type::BlockBegin: {
          const Token& name = peek();
          if (name.type != Token::Type::Name) error(name, fmt::format("expected a tag name after '{{%', got {}", describe(name)));
          if (std::find(ends.begin(), ends.end(), name.value) != ends.end()) {
            matched = name.value;
            advance();
            advance();
            return body;
          }
          if (is_end_tag(name.value)) {
            if (opener)
              error(name, fmt::format("unexpected '{}' inside the '{}' block opened at line {} column {} (expected {})",
                                      name.value, opener, open_tok->line, open_tok->column, expected()));
            error(name, fmt::format("unexpected '{}' with no open block", name.value));
          }
          body.push_back(parse_statement());
          break;
        }
        default: error(t, fmt::format("unexpected {}", describe(t)));
      }
    }
  }

  NodePtr parse_statement() {
    NestingGuard guard(*this, cur());
    advance();  // {%
    const Token tag = cur();
    advance();
    const std::string& name = tag.value;
    if (name == "if") return parse_if(tag);
    if (name == "for") return parse_for(tag);
    if (name == "set") return parse_set(tag);
    if (name == "macro") return parse_macro(tag);
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) error(tag, fmt::format("'{}' outside of a for loop", name));
      expect_block_end(name.c_str());
      return make_node(name == "break" ? Node::Kind::Break : Node::Kind::Continue, tag);
    }
    if (name == "generation") {
      auto n = make_node(Node::Kind::Generation, tag);
      expect_block_end("generation");
      std::string matched;
      n->body = parse_body({"endgeneration"}, "generation", &tag, matched);
      expect_block_end("endgeneration");
      return n;
    }
    error(tag, fmt::format("unsupported tag '{}' (supported: if, for, set, macro, break, continue, generation)", name));
  }

  // After a body that ended at `matched`: the {% else %} body if that is what came, then the
  // closing {% end<opener> %}.
  void parse_else_then_end(Node& n, const char* opener, const Token& tag, std::string& matched) {
    const std::string end = std::string("end") + opener;
    if (matched == "else") {
      expect_block_end("else");
      n.else_body = parse_body({end}, opener, &tag, matched);
    }
    expect_block_end(end.c_str());
  }

  NodePtr parse_if(const Token& tag) {
    auto n = make_node(Node::Kind::If, tag);
    std::string matched = "if";
    while (true) {
      ExprPtr cond = parse_expression(false);
      expect_block_end(matched.c_str());
      Body body = parse_body({"elif", "else", "endif"}, "if", &tag, matched);
      n->branches.emplace_back(std::move(cond), std::move(body));
      if (matched != "elif") break;
    }
    parse_else_then_end(*n, "if", tag, matched);
    return n;
  }

  NodePtr parse_for(const Token& tag) {
    auto n = make_node(Node::Kind::For, tag);
    bool parens = is_op(cur(), "(");
    if (parens) advance();
    do {
      n->targets.push_back(expect_name("a loop variable name"));
    } while (is_op(cur(), ",") && (advance(), cur().type == Token::Type::Name));
    if (parens) expect_op(")");
    if (!is_name(cur(), "in")) error(cur(), fmt::format("expected 'in' in the for loop, got {}", describe(cur())));
    advance();
    n->expr = parse_expression(false);
    if (is_name(cur(), "if")) {
      advance();
      n->filter = parse_expression(true);
    }
    if (is_name(cur(), "recursive")) error(cur(), "recursive for loops are not supported");
    expect_block_end("for");
    std::string matched;
    ++loop_depth_;
    n->body = parse_body({"endfor", "else"}, "for", &tag, matched);
    --loop_depth_;
    parse_else_then_end(*n, "for", tag, matched);
    return n;
  }

  NodePtr parse_set(const Token& tag) {
    auto n = make_node(Node::Kind::Set, tag);
    n->text = expect_name("a variable name");
    if (is_op(cur(), ".")) {
      advance();
      n->attribute = expect_name("an attribute name");
    }
    if (is_op(cur(), ",")) error(cur(), "tuple assignment (set a, b = ...) is not supported");
    if (is_op(cur(), "=")) {
      advance();
      n->expr = parse_expression(true);
      if (is_op(cur(), ",")) error(cur(), "assigning a tuple (set x = a, b) is not supported");
      expect_block_end("set");
      return n;
    }
    if (cur().type == Token::Type::BlockEnd && n->attribute.empty()) {
      advance();
      n->kind = Node::Kind::SetBlock;
      std::string matched;
      n->body = parse_body({"endset"}, "set", &tag, matched);
      expect_block_end("endset");
      return n;
    }
    error(cur(), fmt::format("expected '=' in the set statement, got {}", describe(cur())));
  }

  NodePtr parse_macro(const Token& tag) {
    auto n = make_node(Node::Kind::Macro, tag);
    n->text = expect_name("a macro name");
    expect_op("(");
    while (!is_op(cur(), ")")) {
      n->params.push_back(expect_name("a macro parameter name"));
      if (is_op(cur(), "=")) {
        advance();
        n->defaults.push_back(parse_expression(true));
      } else {
        if (!n->defaults.empty() && n->defaults.back()) error(cur(), "a macro parameter without default follows one with a default");
        n->defaults.push_back(nullptr);
      }
      if (!is_op(cur(), ",")) break;
      advance();
    }
    expect_op(")");
    expect_block_end("macro");
    int saved_depth = loop_depth_;
    loop_depth_ = 0;
    std::string matched;
    n->body = parse_body({"endmacro"}, "macro", &tag, matched);
    loop_depth_ = saved_depth;
    expect_block_end("endmacro");
    return n;
  }

  // ---- expressions (Jinja2's parser.py precedence ladder) ----

  // Nesting is bounded so that a hostile template cannot exhaust the stack of the recursive descent
  // (or of the evaluator, which recurses the same way).
  static constexpr int kMaxNesting = 200;
  struct NestingGuard {
    Parser& p;
    NestingGuard(Parser& parser, const Token& at) : p(parser) {
      if (++p.nesting_ > kMaxNesting) p.error(at, fmt::format("nesting deeper than {} levels", kMaxNesting));
    }
    ~NestingGuard() { --p.nesting_; }
  };

  // Every child joins its parent here, which keeps the tree's depth (the evaluator's recursion and
  // the tree's destructor follow it) within kMaxNesting: `a ~ b ~ c ...` and `x.a.a.a ...` are loops
  // in the parser but chains in the tree.
  void deepen(Expr& parent, const Expr* child) const {
    if (!child) return;
    parent.depth = std::max(parent.depth, child->depth + 1);
    if (parent.depth > kMaxNesting)
      error_at(parent.line, parent.column, fmt::format("expression nested deeper than {} levels", kMaxNesting));
  }
  void attach(Expr& parent, ExprPtr child) {
    deepen(parent, child.get());
    parent.args.push_back(std::move(child));
  }
  void attach_kwarg(Expr& parent, std::string key, ExprPtr value) {
    deepen(parent, value.get());
    parent.kwargs.emplace_back(std::move(key), std::move(value));
  }

  ExprPtr parse_expression(bool with_condexpr) {
    NestingGuard guard(*this, cur());
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    ExprPtr e = parse_or();
    while (is_name(cur(), "if")) {
      auto c = make(Expr::Kind::CondExpr, cur());
      advance();
      attach(*c, std::move(e));
      attach(*c, parse_or());
      if (is_name(cur(), "else")) {
        NestingGuard guard(*this, cur());  // `a if b else c if d else ...` recurses here
        advance();
        attach(*c, parse_condexpr());
      } else {
        attach(*c, nullptr);
      }
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(Expr::Kind kind, const Token& at, std::string op, ExprPtr l, ExprPtr r) {
    auto e = make(kind, at);
    e->name = std::move(op);
    attach(*e, std::move(l));
    attach(*e, std::move(r));
    return e;
  }

  // `a or b` / `a and b`: left-associative chains of one keyword over the next level.
  ExprPtr parse_logical(const char* keyword, Expr::Kind kind, ExprPtr (Parser::*next)()) {
    ExprPtr e = (this->*next)();
    while (is_name(cur(), keyword)) {
      Token at = cur();
      advance();
      e = binary(kind, at, keyword, std::move(e), (this->*next)());
    }
    return e;
  }
  ExprPtr parse_or() { return parse_logical("or", Expr::Kind::Or, &Parser::parse_and); }
  ExprPtr parse_and() { return parse_logical("and", Expr::Kind::And, &Parser::parse_not); }

  ExprPtr parse_not() {
    if (is_name(cur(), "not")) {
      auto e = make(Expr::Kind::Unary, cur());
      e->name = "not";
      NestingGuard guard(*this, cur());  // `not not not ...` recurses here
      advance();
      attach(*e, parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    Token at = cur();
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      const Token& t = cur();
      if (t.type == Token::Type::Op &&
          (t.value == "==" || t.value == "!=" || t.value == "<" || t.value == "<=" || t.value == ">" || t.value == ">=")) {
        op = t.value;
        advance();
      } else if (is_name(t, "in")) {
        op = "in";
        advance();
      } else if (is_name(t, "not") && is_name(peek(), "in")) {
        op = "notin";
        advance();
        advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::Compare, at);
        attach(*cmp, std::move(first));
      }
      cmp->ops.push_back(op);
      attach(*cmp, parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  template <typename Next>
  ExprPtr parse_binary_level(std::initializer_list<const char*> ops, Next next) {
    ExprPtr e = (this->*next)();
    while (cur().type == Token::Type::Op &&
           std::any_of(ops.begin(), ops.end(), [&](const char* o) { return cur().value == o; })) {
      Token at = cur();
      advance();
      e = binary(Expr::Kind::Binary, at, at.value, std::move(e), (this->*next)());
    }
    return e;
  }
  ExprPtr parse_math1() { return parse_binary_level({"+", "-"}, &Parser::parse_concat); }
  ExprPtr parse_concat() { return parse_binary_level({"~"}, &Parser::parse_math2); }
  ExprPtr parse_math2() { return parse_binary_level({"*", "/", "//", "%"}, &Parser::parse_pow); }
  ExprPtr parse_pow() { return parse_binary_level({"**"}, &Parser::parse_unary_filtered); }
  ExprPtr parse_unary_filtered() { return parse_unary(true); }

  ExprPtr parse_unary(bool with_filter) {
    ExprPtr node;
    if (is_op(cur(), "-") || is_op(cur(), "+")) {
      node = make(Expr::Kind::Unary, cur());
      node->name = cur().value;
      NestingGuard guard(*this, cur());  // `- - + ...` recurses here
      advance();
      attach(*node, parse_unary(false));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token t = cur();
    switch (t.type) {
      case Token::Type::Name: {
        auto e = make(Expr::Kind::Literal, t);
        if (t.value == "true" || t.value == "True") e->literal = Value::from_bool(true);
        else if (t.value == "false" || t.value == "False") e->literal = Value::from_bool(false);
        else if (t.value == "none" || t.value == "None") e->literal = Value::none();
        else {
          e->kind = Expr::Kind::Name;
          e->name = t.value;
        }
        advance();
        return e;
      }
      case Token::Type::String: {
        // Adjacent string literals concatenate, as in Python.
        std::string s;
        while (cur().type == Token::Type::String) {
          s += cur().value;
          advance();
        }
        auto e = make(Expr::Kind::Literal, t);
        e->literal = Value::from_string(std::move(s));
        return e;
      }
      case Token::Type::Integer:
      case Token::Type::Float: {
        auto e = make(Expr::Kind::Literal, t);
        e->literal = t.type == Token::Type::Integer ? Value::from_int(t.integer) : Value::from_float(t.real);
        advance();
        return e;
      }
      case Token::Type::Op:
        if (t.value == "(") {
          advance();
          // A parenthesised expression, or a tuple.
          if (is_op(cur(), ")")) {
            advance();
            auto empty = make(Expr::Kind::List, t);
            empty->name = "tuple";
            return empty;
          }
          ExprPtr e = parse_expression(true);
          if (is_op(cur(), ",")) {
            auto tuple = make(Expr::Kind::List, t);
            tuple->name = "tuple";
            attach(*tuple, std::move(e));
            while (is_op(cur(), ",")) {
              advance();
              if (is_op(cur(), ")")) break;
              attach(*tuple, parse_expression(true));
            }
            e = std::move(tuple);
          }
          expect_op(")");
          return e;
        }
        if (t.value == "[") return parse_display(Expr::Kind::List, "]");
        if (t.value == "{") return parse_display(Expr::Kind::Dict, "}");
        break;
      default: break;
    }
    error(t, fmt::format("unexpected {} in expression", describe(t)));
  }

  // A list `[a, b]` or dict `{k: v}` literal from its opening bracket (a trailing comma allowed).
  ExprPtr parse_display(Expr::Kind kind, const char* close) {
    auto e = make(kind, cur());
    advance();
    while (!is_op(cur(), close)) {
      attach(*e, parse_expression(true));
      if (kind == Expr::Kind::Dict) {
        expect_op(":");
        attach(*e, parse_expression(true));
      }
      if (!is_op(cur(), ",")) break;
      advance();
    }
    expect_op(close);
    return e;
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(cur(), ".")) {
        Token at = cur();
        advance();
        if (cur().type == Token::Type::Name) {
          auto e = make(Expr::Kind::Attr, at);
          e->name = cur().value;
          attach(*e, std::move(node));
          node = std::move(e);
        } else if (cur().type == Token::Type::Integer) {
          auto e = make(Expr::Kind::Item, at);
          auto index = make(Expr::Kind::Literal, cur());
          index->literal = Value::from_int(cur().integer);
          attach(*e, std::move(node));
          attach(*e, std::move(index));
          node = std::move(e);
        } else {
          error(cur(), fmt::format("expected an attribute name after '.', got {}", describe(cur())));
        }
        advance();
      } else if (is_op(cur(), "[")) {
        node = parse_subscript(std::move(node));
      } else if (is_op(cur(), "(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op(cur(), "|")) node = parse_filter(std::move(node));
      else if (is_name(cur(), "is")) node = parse_test(std::move(node));
      else if (is_op(cur(), "(")) node = parse_call(std::move(node));
      else return node;
    }
  }

  ExprPtr parse_subscript(ExprPtr node) {
    Token at = cur();
    advance();  // [
    ExprPtr first;
    if (!is_op(cur(), ":")) first = parse_expression(true);
    if (!is_op(cur(), ":")) {
      if (is_op(cur(), ",")) error(cur(), "tuple subscripts (x[a, b]) are not supported");
      expect_op("]");
      auto e = make(Expr::Kind::Item, at);
      attach(*e, std::move(node));
      attach(*e, std::move(first));
      return e;
    }
    auto e = make(Expr::Kind::Slice, at);
    attach(*e, std::move(node));
    attach(*e, std::move(first));
    advance();  // :
    attach(*e, is_op(cur(), "]") || is_op(cur(), ":") ? nullptr : parse_expression(true));
    if (is_op(cur(), ":")) {
      advance();
      attach(*e, is_op(cur(), "]") ? nullptr : parse_expression(true));
    } else {
      attach(*e, nullptr);
    }
    expect_op("]");
    return e;
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(cur(), ")")) {
      if (is_op(cur(), "*") || is_op(cur(), "**")) error(cur(), "*args / **kwargs in calls are not supported");
      if (cur().type == Token::Type::Name && is_op(peek(), "=")) {
        std::string key = cur().value;
        advance();
        advance();
        attach_kwarg(e, std::move(key), parse_expression(true));
      } else {
        if (!e.kwargs.empty()) error(cur(), "a positional argument follows a keyword argument");
        attach(e, parse_expression(true));
      }
      if (!is_op(cur(), ",")) break;
      advance();
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr node) {
    auto e = make(Expr::Kind::Call, cur());
    attach(*e, std::move(node));
    parse_call_args(*e);
    return e;
  }

  std::string dotted_name(const char* what) {
    std::string name = expect_name(what);
    while (is_op(cur(), ".")) {
      advance();
      name += "." + expect_name(what);
    }
    return name;
  }

  ExprPtr parse_filter(ExprPtr node) {
    auto e = make(Expr::Kind::Filter, cur());
    advance();  // |
    e->name = dotted_name("a filter name");
    attach(*e, std::move(node));
    if (is_op(cur(), "(")) parse_call_args(*e);
    return e;
  }

  ExprPtr parse_test(ExprPtr node) {
    auto e = make(Expr::Kind::Test, cur());
    advance();  // is
    if (is_name(cur(), "not")) {
      e->negated = true;
      advance();
    }
    e->name = dotted_name("a test name");
    attach(*e, std::move(node));
    const Token& t = cur();
    if (is_op(t, "(")) {
      parse_call_args(*e);
    } else if ((t.type == Token::Type::Name && !is_name(t, "else") && !is_name(t, "or") && !is_name(t, "and")) ||
               t.type == Token::Type::String || t.type == Token::Type::Integer || t.type == Token::Type::Float ||
               is_op(t, "[") || is_op(t, "{")) {
      // `x is divisibleby 3`: one argument without parentheses.
      if (is_name(t, "is")) error(t, "tests cannot be chained with 'is'");
      attach(*e, parse_postfix(parse_primary()));
    }
    return e;
  }
};

}  // namespace

std::shared_ptr<const Template> parse_template(const std::string& source, const std::string& origin) {
  auto t = std::make_shared<Template>();
  t->origin = origin;
  t->body = Parser(Lexer(source, origin).run(), origin).parse_all();
  return t;
}

}  // namespace dsmoe::jinja
