// dsmoe: train, analyse and run DeepSeekMoE models. Subcommands register from cli/cmd_*.cpp.
// Exit codes: 0 success, 2 a usage error (bad flag or value, an output folder that would destroy
// something), 1 a runtime error (bad file, diverged training), 128 + N when signal N stopped a
// command after it saved its state.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/blas_env.h"
#include "core/edit_distance.h"
#include "core/error.h"
#include "core/version.h"
#include "dist/mpi_communicator.h"

namespace {

// The candidate closest to `word`, if it is close enough to be a typo.
std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& c : candidates) {
    const size_t d = dsmoe::edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  const size_t limit = std::max<size_t>(2, word.size() / 3);
  return best_d <= limit ? best : "";
}

void print_commands(const CLI::App& app, FILE* f) {
  std::fprintf(f, "%s\n\nUsage: dsmoe COMMAND [OPTIONS]   (dsmoe COMMAND --help for a command's options)\n\nCommands:\n",
               app.get_description().c_str());
  for (const CLI::App* c : app.get_subcommands([](const CLI::App*) { return true; }))
    std::fprintf(f, "  %-12s %s\n", c->get_name().c_str(), c->get_description().c_str());
  std::fprintf(f, "\nOptions:\n  --help       this list\n  --version    print the version\n");
}

// "did you mean" for arguments CLI11 did not expect: a flag is compared with the flags of the
// command being run, a word with the command names.
void suggest(const CLI::App& app, const std::vector<std::string>& extras) {
  const CLI::App* cmd = nullptr;
  for (const CLI::App* c : app.get_subcommands()) cmd = c;  // the parsed one
  std::vector<std::string> names, flags;
  for (const CLI::App* c : app.get_subcommands([](const CLI::App*) { return true; })) names.push_back(c->get_name());
  if (cmd)
    for (const CLI::Option* o : cmd->get_options())
      for (const auto& n : o->get_lnames()) flags.push_back("--" + n);
  for (const auto& e : extras) {
    const bool is_flag = e.rfind("-", 0) == 0;
    const std::string word = is_flag ? e.substr(0, e.find('=')) : e;
    const std::string c = closest(word, is_flag ? flags : (cmd ? std::vector<std::string>{} : names));
    if (!c.empty()) std::fprintf(stderr, "dsmoe: '%s': did you mean '%s'?\n", word.c_str(), c.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  dsmoe::ensure_blas_kernels(argv);
  CLI::App app{"dsmoe: train, analyse and run DeepSeekMoE language models"};
  app.set_version_flag("--version", std::string("dsmoe ") + dsmoe::kVersion);
  dsmoe::cli::add_model_commands(app);
  dsmoe::cli::add_tokenizer_commands(app);
  dsmoe::cli::add_infer_commands(app);
  dsmoe::cli::add_plot_commands(app);
  dsmoe::cli::add_experiment_commands(app);
  dsmoe::cli::add_serve_commands(app);
  dsmoe::cli::add_scaling_commands(app);
  auto* help = app.add_subcommand("help", "list the commands, or show one command's options (dsmoe help train)");
  std::string help_on;
  help->add_option("command", help_on, "a command");
  help->callback([&] {
    if (help_on.empty()) return print_commands(app, stdout);
    for (const CLI::App* c : app.get_subcommands([](const CLI::App*) { return true; }))
      if (c->get_name() == help_on) {
        std::printf("%s", c->help().c_str());
        return;
      }
    dsmoe::usage_error("help: '{}' is not a command (dsmoe help lists them)", help_on);
  });
  if (argc == 1) {  // `dsmoe` alone: what there is to run
    print_commands(app, stdout);
    return 2;
  }
  app.require_subcommand(1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    if (app.get_subcommands().empty()) {  // dsmoe --help: the command list (CLI11's would list only flags)
      print_commands(app, stdout);
      return 0;
    }
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --version
  } catch (const CLI::ParseError& e) {
    // An unknown word or flag explains the other errors (a misspelt --config is also "--config is
    // required"), so it is reported first, with the closest name.
    const std::vector<std::string> extras = app.remaining(true);
    if (app.get_subcommands().empty() && argv[1][0] != '-') {
      std::fprintf(stderr, "dsmoe: error: '%s' is not a command\n", argv[1]);
      suggest(app, {argv[1]});
    } else if (!extras.empty()) {
      std::string list;
      for (const auto& x : extras) list += " " + x;
      std::fprintf(stderr, "dsmoe: error: unexpected argument%s:%s\n", extras.size() > 1 ? "s" : "", list.c_str());
      suggest(app, extras);
    } else {
      std::fprintf(stderr, "dsmoe: error: %s\n", e.what());
    }
    std::fprintf(stderr, "Run `dsmoe help` for the commands, `dsmoe COMMAND --help` for a command's flags.\n");
    return 2;
  } catch (const dsmoe::UsageError& e) {
    std::fprintf(stderr, "dsmoe: error: %s\n", e.what());
    dsmoe::abort_job_if_parallel(2);  // the other ranks may be waiting in a collective: end them too
    return 2;
  } catch (const dsmoe::Interrupted& e) {
    std::fprintf(stderr, "dsmoe: %s\n", e.what());
    return 128 + e.signal();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsmoe: error: %s\n", e.what());
    dsmoe::abort_job_if_parallel(1);
    return 1;
  }
  return 0;
}
