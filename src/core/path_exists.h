// Whether a path names something, for paths that come from input (a shard named by an index, a
// config's `extends`, a manifest's files). std::filesystem::exists throws filesystem_error when the
// OS cannot tell (a name longer than the file system allows, a folder on the way that cannot be
// searched); that escaped the loaders as an exception that was not an input error
// (fuzz_hf_folder). Here it is a dsmoe::Error naming the path and the reason.
#pragma once
#include <string>

namespace dsmoe {

// `what` says where the path came from ("index.json: shard of tensor 'x'"), for the error.
bool path_exists(const std::string& path, const std::string& what);
// The same, and whether it is a regular file (false for a folder or a missing path).
bool regular_file_exists(const std::string& path, const std::string& what);

}  // namespace dsmoe
