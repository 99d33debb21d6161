// Token ids as text, the forms users type and files hold:
//   ids JSONL   one JSON array of integer ids per line, blank lines skipped (`tokenize` writes it;
//               `detokenize` and `score --ids-jsonl` read it)
//   id list     "1,2,3", "[1, 2, 3]" or "1 2 3" (`generate --prompt-ids`)
// Every id is checked against the range the caller gives (a model's or tokenizer's vocabulary, or
// all of int32 where unknown ids have a meaning of their own): an id outside it is an error naming
// the source, the line and the value, never a wrapped or truncated id.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsmoe {

// One sequence per non-blank line of `text`. Errors: "SOURCE:LINE: ..." (invalid JSON, not an
// array, an element that is not an integer id in [0, id_limit)).
std::vector<std::vector<int32_t>> parse_ids_jsonl(std::string_view text, const std::string& source, int64_t id_limit);

// The ids of one id list; `what` names it in errors (e.g. "--prompt-ids").
std::vector<int32_t> parse_id_list(std::string_view text, const std::string& what, int64_t id_limit);

// Appends `ids` as one ids-JSONL line ("[1,2,3]\n").
void append_ids_jsonl(std::string& out, const std::vector<int32_t>& ids);

// The id_limit for ids that only have to be valid int32 ids (decode skips unknown ones, as HF does).
inline constexpr int64_t kAnyTokenId = int64_t(INT32_MAX) + 1;

}  // namespace dsmoe
