// tierkv-pattern-search: picks each attention head's sparse pattern for a model from a long
// sample prompt and writes the pattern file the prefill worker loads (--sparse-patterns).
// Every head gets, per pattern, the largest budget whose index stays within --cost of the
// causal work, and the pattern that recovers the most attention mass (over the prompt's last
// --sample-rows queries) wins; heads where none reaches --min-recovery run dense. Runs the
// CPU model (the fp32 reference); progress goes to stderr, one line per layer.
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "model/model.h"
#include "prefill_worker/pattern_search.h"
#include "prefill_worker/sparse_patterns.h"

int main(int argc, char** argv) {
  CLI::App app{"tierkv-pattern-search: choose each head's sparse attention pattern"};
  std::string model_name = "builtin:tiny", prompt_file, out;
  int64_t random_tokens = 0;
  uint32_t seed = 1;
  int threads = 0;
  tierkv::ModelSearchOptions options;
  app.add_option("--model", model_name, "builtin:tiny or a Hugging Face model directory")
      ->capture_default_str();
  app.add_option("--threads", threads, "CPU threads (0: one per core)")->capture_default_str();
  auto* from_file = app.add_option("--prompt-file", prompt_file,
                                   "sample prompt: token ids separated by white space");
  app.add_option("--random-tokens", random_tokens, "sample prompt of this many random tokens")
      ->excludes(from_file);
  app.add_option("--seed", seed, "seed of --random-tokens")->capture_default_str();
  app.add_option("--cost", options.head.cost,
                 "share of the causal work each candidate index may use, in (0, 1]")
      ->capture_default_str();
  app.add_option("--min-recovery", options.head.min_recovery,
                 "heads whose best pattern recovers less attention mass run dense")
      ->capture_default_str();
  app.add_option("--sample-rows", options.head.sample_rows,
                 "queries whose attention mass is measured (ending before the last 64)")
      ->capture_default_str();
  app.add_option("--min-tokens", options.min_tokens, "written into the file: dense below it")
      ->capture_default_str();
  app.add_option("--max-coverage", options.max_coverage,
                 "written into the file: heads whose index covers more run dense")
      ->capture_default_str();
  app.add_option("--out", out, "pattern file to write")->required();
  CLI11_PARSE(app, argc, argv);

  // The vocabulary bounds the prompt's tokens: read the config first.
  auto config = tierkv::ModelConfigOf(model_name);
  if (!config.ok()) {
    std::cerr << "tierkv-pattern-search: " << config.status() << "\n";
    return 1;
  }
  const int64_t vocab = config->vocab_size;
  std::vector<uint32_t> prompt;
  if (!prompt_file.empty()) {
    std::ifstream in(prompt_file);
    if (!in) {
      std::cerr << "tierkv-pattern-search: cannot read " << prompt_file << "\n";
      return 1;
    }
    for (int64_t t; in >> t;) {
      if (t < 0 || t >= vocab) {
        std::cerr << "tierkv-pattern-search: " << prompt_file << ": token " << t
                  << " outside the vocabulary of " << vocab << "\n";
        return 2;
      }
      prompt.push_back(static_cast<uint32_t>(t));
    }
  } else if (random_tokens > 0) {
    std::mt19937 rng(seed);
    for (int64_t i = 0; i < random_tokens; ++i) prompt.push_back(rng() % vocab);
  }
  if (prompt.size() < 128) {
    std::cerr << "tierkv-pattern-search: give a sample prompt of at least 128 tokens "
                 "(--prompt-file or --random-tokens)\n";
    return 2;
  }
  // One forward chunk for the whole prompt: the search looks at its last chunk.
  tierkv::ModelOptions mo;
  mo.num_threads = threads;
  mo.prefill_chunk_tokens = static_cast<int64_t>(prompt.size());
  auto model = tierkv::Model::Load(model_name, mo);
  if (!model.ok()) {
    std::cerr << "tierkv-pattern-search: " << model.status() << "\n";
    return 1;
  }
  const int layers = static_cast<int>((*model)->config().num_layers);
  std::vector<std::vector<tierkv::HeadChoice>> choices;
  auto plan = tierkv::SearchModelPatterns(
      **model, prompt, options, &choices,
      [&](int layer) { std::cerr << "layer " << layer + 1 << "/" << layers << " searched\n"; });
  if (!plan.ok()) {
    std::cerr << "tierkv-pattern-search: " << plan.status() << "\n";
    return 1;
  }
  const int heads = static_cast<int>((*model)->config().num_heads);
  std::ofstream file(out);
  file << tierkv::SparsePatternsToJson(*plan, layers, heads);
  if (!file.good()) {
    std::cerr << "tierkv-pattern-search: cannot write " << out << "\n";
    return 1;
  }
  // Summary: heads per chosen pattern and their mean recovered mass.
  std::map<std::string, std::pair<int, double>> by_pattern;
  for (const auto& layer : choices) {
    for (const tierkv::HeadChoice& c : layer) {
      auto& [count, sum] = by_pattern[std::string(tierkv::kernels::SparsePatternName(c.pattern.pattern))];
      ++count;
      sum += c.recovered;
    }
  }
  std::cout << absl::StrFormat("%d layers x %d heads, %zu-token prompt, cost %.3f; wrote %s\n",
                               layers, heads, prompt.size(), options.head.cost, out);
  for (const auto& [name, v] : by_pattern) {
    std::cout << absl::StrFormat("  %-15s %4d heads, mean attention mass recovered %.4f\n", name,
                                 v.first, v.second / v.first);
  }
  return 0;
}
