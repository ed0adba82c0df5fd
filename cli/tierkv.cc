// tierkv: the all-in-one binary. `tierkv up` runs every role in one process on 127.0.0.1
// with the embedded default: the cache manager with its host tier and an SSD tier under
// ./tierkv-data, and a prefill and a decode worker serving the built-in model.
#include <unistd.h>

#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_replace.h"
#include "cache_manager/flags.h"
#include "cli/all_in_one.h"
#include "cli/demo.h"
#include "core/process.h"
#include "core/units.h"

int main(int argc, char** argv) {
  tierkv::DisableMutexDeadlockDetection();
  CLI::App app{"tierkv: disaggregated KV cache for long-context LLM inference"};
  app.require_subcommand(1);
  CLI::App* up = app.add_subcommand("up", "run every role in one process on 127.0.0.1");
  tierkv::CacheManagerFlags flags;
  // The embedded default keeps an SSD tier under the working directory; --data-dir ''
  // runs with host memory only.
  flags.data_dir = "tierkv-data";
  flags.ssd_capacity = "4GiB";
  flags.Register(*up);
  tierkv::AllInOneOptions options;
  up->add_option("--model", options.model, "builtin:tiny, or a Hugging Face model directory")
      ->capture_default_str();
  up->add_option("--model-id", options.runtime.model_id, "model_id of the model's spec");
  up->add_option("--threads", options.runtime.num_threads,
                 "CPU compute threads (0: one per core)")
      ->capture_default_str();
  up->add_option("--device", options.runtime.device,
                 "where the model runs: auto (the GPU when one is usable), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  up->add_option("--sparse-patterns", options.sparse_patterns,
                 "sparse attention pattern file for long prefills (docs/sparse-patterns.md)");
  std::string gpu_capacity = "4GiB";
  up->add_option("--gpu-capacity", gpu_capacity,
                 "GPU tier of the cache on the model's GPU (0: none; unused on the CPU)")
      ->capture_default_str();
  bool demo = false, exit_after_demo = false;
  up->add_flag("--demo", demo, "send a demo request once serving, then keep serving");
  up->add_flag("--exit-after-demo", exit_after_demo, "with --demo: stop after the demo");
  CLI11_PARSE(app, argc, argv);

  if (absl::Status s = flags.Resolve(&options.cache); !s.ok()) {
    std::cerr << "tierkv up: " << s.message() << "\n";
    return 2;
  }
  if (auto bytes = tierkv::ParseBytes(gpu_capacity); bytes.ok()) {
    options.gpu_capacity_bytes = *bytes;
  } else {
    std::cerr << "tierkv up: --gpu-capacity: " << bytes.status().message() << "\n";
    return 2;
  }
  tierkv::BlockShutdownSignals();
  std::cout << "tierkv up: loading model " << options.model << std::endl;
  auto all = tierkv::AllInOne::Start(options);
  if (!all.ok()) {
    std::cerr << "tierkv up: " << all.status() << "\n";
    return 1;
  }
  const tierkv::ModelSpec& model = (*all)->model().spec();
  std::cout << "tierkv up: serving on " << (*all)->address() << " (pid " << getpid() << ")\n"
            << "  cache manager: "
            << absl::StrReplaceAll((*all)->cache_manager().TierSummary(), {{"\n", "\n                 "}})
            << "\n"
            << "  prefill and decode workers: " << model.model_id << " on "
            << tierkv::kernels::DeviceName((*all)->model().device()) << " (" << model.num_layers
            << " layers, " << model.num_kv_heads << " kv heads, head_dim " << model.head_dim
            << ", KV in " << model.kv_dtype << ", " << model.block_tokens
            << "-token blocks of " << tierkv::FormatBytes(model.RawBlockBytes()) << ")\n"
            << "  inspect it: kvctl --server " << (*all)->address() << " stats | ls | inspect"
            << std::endl;
  if (demo) {
    absl::Status s = tierkv::RunDemo((*all)->address(),
                                     static_cast<uint32_t>((*all)->model().vocab_size()),
                                     std::cout);
    if (!s.ok()) {
      std::cerr << "tierkv up: demo failed: " << s << "\n";
      (*all)->Shutdown();
      return 1;
    }
    if (exit_after_demo) {
      (*all)->Shutdown();
      return 0;
    }
  }
  if (absl::Status s = tierkv::WritePortFile(flags.port_file, (*all)->port()); !s.ok()) {
    std::cerr << "tierkv up: --port-file: " << s.message() << "\n";
    (*all)->Shutdown();
    return 1;
  }
  std::cout << "tierkv up: press Ctrl-C to stop" << std::endl;
  int sig = tierkv::WaitForShutdownSignal();
  std::cout << "tierkv up: signal " << sig << ", shutting down" << std::endl;
  (*all)->Shutdown();
  return 0;
}
