// Placeholder until the tokenizer subcommands land (issue 3).
#include "cli/commands.h"

namespace dsmoe::cli {
void add_tokenizer_commands(CLI::App&) {}
}  // namespace dsmoe::cli
