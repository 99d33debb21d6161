// dsmoe: train, analyse and run DeepSeekMoE models. Subcommands register from cli/cmd_*.cpp.
#include <cstdio>
#include <cstdlib>

#include "cli/commands.h"
#include "core/blas_env.h"
#include "core/error.h"

int main(int argc, char** argv) {
  dsmoe::ensure_blas_kernels(argv);
  CLI::App app{"dsmoe: train, analyse and run DeepSeekMoE language models"};
  app.require_subcommand(1);
  dsmoe::cli::add_model_commands(app);
  dsmoe::cli::add_tokenizer_commands(app);
  dsmoe::cli::add_infer_commands(app);
  dsmoe::cli::add_plot_commands(app);
  dsmoe::cli::add_experiment_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dsmoe::Error& e) {
    std::fprintf(stderr, "dsmoe: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsmoe: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
