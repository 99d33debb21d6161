// `dsmoe serve` driven by clients no one here wrote (tests/node/*.mjs, run with node):
//   OpenAiNodeSdk  the official OpenAI Node SDK (npm `openai`): completions and chat, streamed and
//                  not, against what `dsmoe generate --temperature 0` answers (computed here and
//                  handed to the script), usage, finish_reason, the SDK's error classes;
//   ChatPage       the page of GET / in headless Chromium (npm playwright-core): typed messages,
//                  streamed answers equal to the server's greedy ones, a screenshot kept in the build
//                  tree (its path is printed).
// Each is skipped (reported as skipped by CTest) when node is not on PATH; without the npm packages
// (scripts/npm) or Chromium (scripts/setup.sh) it fails.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli_runner.h"
#include "infer/chat_format.h"
#include "serve_runner.h"

using namespace dsmoe;
using namespace dsmoe::test::serve;
namespace fs = std::filesystem;
using test::cli::Proc;

namespace {

// node on PATH, or "" when there is none.
std::string find_node() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "");
  for (std::string d; std::getline(dirs, d, ':');) {
    const std::string p = d + "/node";
    if (!d.empty() && access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

const std::string kNpm = std::string(DSMOE_SOURCE_DIR) + "/third_party/npm/node_modules/";

std::string script(const std::string& name) { return std::string(DSMOE_SOURCE_DIR) + "/tests/node/" + name; }

TEST(ServeClients, OpenAiNodeSdk) {
  const std::string node = find_node();
  if (node.empty()) GTEST_SKIP() << "node is not on PATH";
  ASSERT_TRUE(fs::exists(kNpm + "openai/package.json")) << "npm openai is not in " << kNpm << " (scripts/npm installs it)";
  Server s({"--parallel", "4", "--api-key", "test-key", "--model-name", "tiny-moe"});
  ASSERT_GT(s.port, 0);
  json spec = {{"base_url", s.url() + "/v1"}, {"api_key", "test-key"}, {"model", "tiny-moe"}};
  const std::string prompt = "The OpenAI SDK says";
  const json gen = generate(prompt, 20);
  spec["completion"] = {{"prompt", prompt}, {"max_tokens", 20}, {"ids", gen["ids"]}, {"text", gen["text"]},
                        {"prompt_tokens", (int64_t)prompt.size()}};  // bytes, no BOS
  // A stop string from the greedy text (a printable ASCII character past the first few bytes of the
  // random model's output), and where generate --stop ends.
  std::string stop;
  for (size_t i = 3; i < gen["ids"].size() && stop.empty(); ++i)
    if (const int id = gen["ids"][i]; id >= 0x20 && id < 0x7f) stop = std::string(1, (char)id);
  ASSERT_FALSE(stop.empty()) << "no printable ASCII byte in the greedy text to use as a stop string: " << gen.dump();
  const json gen_stop = generate(prompt, 20, {"--stop", stop});
  spec["completion_stop"] = {{"prompt", prompt}, {"max_tokens", 20}, {"stop", stop}, {"text", gen_stop["text"]}};
  const std::vector<ChatMessage> msgs = {{"system", "Answer briefly."}, {"user", "What is a mixture of experts?"}};
  const std::string rendered = ChatFormat::load(model_dir()).render(msgs, true);
  const json gen_chat = generate(rendered, 16, {"--no-special-tokens"});
  json messages = json::array();
  for (const auto& m : msgs) messages.push_back({{"role", m.role}, {"content", m.content}});
  spec["chat"] = {{"messages", messages}, {"max_tokens", 16}, {"ids", gen_chat["ids"]}, {"text", gen_chat["text"]},
                  {"prompt_tokens", (int64_t)rendered.size()}};
  const std::string spec_file = test::cli::scratch("sdk") + "/spec.json";
  std::ofstream(spec_file) << spec.dump(2);
  const Proc p = test::cli::run_program({node, script("serve_openai_sdk.mjs"), spec_file}, 180);
  EXPECT_TRUE(p.ok()) << p.describe() << "\nspec: " << spec_file;
  std::printf("%s", p.out.c_str());
}

TEST(ServeClients, ChatPageInChromium) {
  const std::string node = find_node();
  if (node.empty()) GTEST_SKIP() << "node is not on PATH";
  ASSERT_TRUE(fs::exists(kNpm + "playwright-core/package.json"))
      << "npm playwright-core is not in " << kNpm << " (scripts/npm installs it)";
  ASSERT_EQ(access("/usr/bin/chromium", X_OK), 0) << "/usr/bin/chromium is missing (scripts/setup.sh installs it)";
  Server s({"--parallel", "2", "--api-key", "page-key"});
  ASSERT_GT(s.port, 0);
  // The screenshot stays in the build tree (test_tmp is not cleaned) as the test's artifact.
  const std::string shot = test::cli::scratch("page") + "/chat_page.png";
  const Proc p = test::cli::run_program({node, script("serve_chat_page.mjs"), s.url(), "page-key", shot}, 240);
  EXPECT_TRUE(p.ok()) << p.describe();
  EXPECT_TRUE(fs::exists(shot) && fs::file_size(shot) > 0) << shot;
  std::printf("%sscreenshot: %s\n", p.out.c_str(), shot.c_str());
}

}  // namespace
