// Each group of subcommands lives in its own cmd_*.cpp and registers itself here.
#pragma once
#include <CLI/CLI.hpp>

namespace dsmoe::cli {

void add_model_commands(CLI::App& app);      // cmd_model.cpp: train, eval, info, prepare
void add_tokenizer_commands(CLI::App& app);  // cmd_tokenizer.cpp: tokenize, detokenize, tokenizer train
void add_infer_commands(CLI::App& app);      // cmd_infer.cpp: generate, chat, score, export, quantize
void add_plot_commands(CLI::App& app);       // cmd_plot.cpp: plot
void add_experiment_commands(CLI::App& app); // cmd_experiment.cpp: experiment
void add_serve_commands(CLI::App& app);      // cmd_serve.cpp: serve
void add_scaling_commands(CLI::App& app);    // cmd_scaling.cpp: scaling

}  // namespace dsmoe::cli
