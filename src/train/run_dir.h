// The run folder of `dsmoe train --out DIR`: what may be started, continued or replaced there.
//   - DIR missing or empty: a new run.
//   - DIR a run folder (its .dsmoe-output marker says "train", or an older run's config.json with
//     checkpoint.safetensors or metrics.jsonl) and --resume: continue from its checkpoint (an error
//     when there is none); --force: start over, removing only the files training writes.
//   - anything else: refused. --resume with --force, or DIR overlapping the data folder, too.
#pragma once
#include <string>

namespace dsmoe {

enum class RunStart { Fresh, Resume };

// Checks the request and prepares DIR (creates it and its marker; with force, removes the previous
// run's files). UsageError for every refusal, naming DIR and what to do instead.
RunStart open_run_dir(const std::string& dir, const std::string& data_dir, bool resume, bool force);

// True when DIR looks like a training run folder (see above).
bool is_run_dir(const std::string& dir);

}  // namespace dsmoe
