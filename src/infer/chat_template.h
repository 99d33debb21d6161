// Hugging Face chat templates: the Jinja2 subset that `chat_template`s use, rendered byte for byte as
// transformers' apply_chat_template renders them (a Jinja2 ImmutableSandboxedEnvironment with
// trim_blocks and lstrip_blocks, the loopcontrols extension, and the globals raise_exception and
// strftime_now; tojson is json.dumps with ensure_ascii=False).
//
//   auto t = dsmoe::ChatTemplate::parse(source, "DIR/tokenizer_config.json");
//   std::string prompt = t.render({{"messages", msgs}, {"add_generation_prompt", true},
//                                  {"bos_token", "<s>"}, {"eos_token", "</s>"}});
//
// Supported (anything else is a dsmoe::Error naming the line, column and construct, raised by parse
// when it is syntax, by render when it is a value the template cannot use):
//   tags         {{ }}, {% %}, {# #}, whitespace control - and +, a single trailing newline dropped
//   statements   if / elif / else, for (tuple targets, `if` filter, else, loop.index / index0 /
//                revindex / revindex0 / first / last / length / previtem / nextitem / cycle),
//                break / continue, set (name, ns.attr, block set), macro (with defaults),
//                generation (rendered as its body)
//   expressions  literals (strings with Python escapes, ints, floats, true/false/none in both
//                cases), lists, dicts, tuples, .attr, [key], slices, calls with keyword arguments,
//                + - * / // % ** ~, comparisons (chained), and / or / not, in / not in,
//                is [not] <test>, filters, inline if / else
//   filters      abs attr capitalize count d default dictsort escape e first float indent int items join
//                last length list lower map max min reject rejectattr replace reverse round safe
//                select selectattr sort string sum title tojson trim unique upper wordcount
//   tests        boolean callable defined divisibleby eq equalto even false float ge greaterthan gt
//                in integer iterable le lessthan lower lt mapping ne none number odd sameas sequence
//                string true undefined upper == != < <= > >=
//   methods      str: capitalize count endswith find isalpha isdigit islower isspace isupper join
//                lower lstrip replace rfind rsplit rstrip split splitlines startswith strip title
//                upper; dict: get items keys values
//   globals      dict namespace range raise_exception strftime_now
// Values follow Python: integers are 64-bit (overflow is an error, not a bignum), strings index by
// code point, undefined names are Jinja's default Undefined (printed as "", falsy; any other use is
// an error). Not supported (each is an error, never different output): call / filter / with /
// raw blocks, include / import / extends, recursive loops, tuple assignment (set a, b = ...),
// string % formatting and str.format, *args / **kwargs, dict keys other than strings, integers
// beyond 64 bits. map / select / reverse return lists where Jinja returns generators (the same
// when joined, listed or looped over; printing one directly differs). Markup escaping is off, as
// in transformers. Error positions are 1-based lines and code-point columns.
//
// Thread safety: a ChatTemplate is immutable after parse; render may run concurrently.
//
// Work is bounded: a render refuses (dsmoe::Error) to build more than max_output_bytes of text in
// any one string or in total across the render, to run more than max_loop_iterations iterations,
// or to nest macro calls deeper than max_call_depth.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace dsmoe {

namespace jinja {
struct Template;
}

struct ChatTemplateLimits {
  size_t max_output_bytes = size_t(4) << 20;     // any one string, and the rendered text
  size_t max_work_bytes = size_t(256) << 20;      // bytes of text built over the whole render
  int64_t max_loop_iterations = 1'000'000;        // over the whole render
  int max_call_depth = 64;                        // nested macro calls
};

class ChatTemplate {
 public:
  // Parses a template. `origin` names it in every error message (e.g. the file it came from).
  static ChatTemplate parse(const std::string& source, const std::string& origin = "chat_template");

  // Renders with `variables` (a JSON object; key order is kept, as Python dicts keep it).
  std::string render(const nlohmann::ordered_json& variables, const ChatTemplateLimits& limits = {}) const;

  const std::string& origin() const;

 private:
  std::shared_ptr<const jinja::Template> impl_;
};

}  // namespace dsmoe
