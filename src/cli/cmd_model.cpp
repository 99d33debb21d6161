#include "cli/commands.h"

namespace dsmoe::cli {
void add_model_commands(CLI::App&) {}
}  // namespace dsmoe::cli
