// What a chat template can call without defining it: Jinja2's filters and tests, the Python methods
// of str / dict / list that templates use, attribute and item lookup as the sandbox does it, and
// the globals transformers provides. Internal to infer/chat_template*.cpp.
#pragma once
#include <string>

#include "infer/chat_template.h"
#include "infer/chat_template_value.h"

namespace dsmoe::jinja {

// Work done by one render, checked against its limits.
struct RenderBudget {
  const ChatTemplateLimits* limits;
  size_t work_bytes = 0;
  int64_t iterations = 0;
  int call_depth = 0;
  // Accounts for building a string of `bytes`; refuses strings over max_output_bytes and total
  // work over max_work_bytes.
  void charge(size_t bytes, const Where& where);
  void charge_iteration(const Where& where);
};

bool has_filter(const std::string& name);
bool has_test(const std::string& name);

// `subject | name(args)`.
Value apply_filter(const std::string& name, const Value& subject, const CallArgs& args, RenderBudget& budget);
// `subject is name(args)`.
bool apply_test(const std::string& name, const Value& subject, const CallArgs& args);

// `obj.name`: Jinja's sandboxed getattr (methods of str / dict / list bound to obj, then the item).
Value get_attribute(const Value& obj, const std::string& name, const Where& where, RenderBudget& budget);
// `obj[key]`: Jinja's sandboxed getitem (the item, then the attribute); a miss is an Undefined.
Value get_item(const Value& obj, const Value& key, const Where& where, RenderBudget& budget);
// `obj[start:stop:step]` with Python's clamping; null bounds are Values of kind None or Undefined.
Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step, const Where& where);

// The globals every template sees: range, dict, namespace, raise_exception, strftime_now.
ValueDict make_globals();

}  // namespace dsmoe::jinja
