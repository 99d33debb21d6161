// The report of a suite (from run_suite's results.json): OUT/report.md with the Table-1-like table,
// the ablations, the expert-specialization analyses and a verdict on each of the paper's claims, plus
// the SVG images it embeds. A verdict is derived from the numbers with a stated rule (paired seeds,
// one-sided t-test at 95%); a claim the numbers do not settle is reported as unresolved, never as held.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace dsmoe::experiment {

// Writes OUT/report.md and OUT/*.svg (atomically); returns the report's path.
std::string write_report(const nlohmann::json& results, const std::string& out_dir);

}  // namespace dsmoe::experiment
