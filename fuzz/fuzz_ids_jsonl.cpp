// Surface: token ids as users and files give them (io/token_ids.h): an ids JSONL file (`score
// --ids-jsonl`, `detokenize`) and an id list (`generate --prompt-ids`), against a small vocabulary
// and against all of int32. Whatever is accepted must be in range, and must read back the same
// after append_ids_jsonl writes it (`tokenize` writes the files `detokenize` reads).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "fuzz_support.h"
#include "io/token_ids.h"

using namespace dsmoe;

namespace {

void check_in_range(const std::vector<int32_t>& ids, int64_t limit) {
  for (int32_t id : ids)
    if (id < 0 || id >= limit) std::abort();  // accepted an id the caller's range excludes
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text((const char*)data, size);
  for (const int64_t limit : {int64_t(256), kAnyTokenId}) {
    fuzz::refuse_ok([&] {
      const auto seqs = parse_ids_jsonl(text, "fuzz.jsonl", limit);
      std::string again;
      for (const auto& ids : seqs) {
        check_in_range(ids, limit);
        append_ids_jsonl(again, ids);
      }
      std::vector<std::vector<int32_t>> back;
      try {
        back = parse_ids_jsonl(again, "again.jsonl", limit);
      } catch (const Error&) {
        std::abort();  // dsmoe refuses what it wrote itself
      }
      if (back != seqs) std::abort();
    });
    fuzz::refuse_ok([&] { check_in_range(parse_id_list(text, "--prompt-ids", limit), limit); });
  }
  return 0;
}
