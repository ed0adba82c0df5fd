// tierkv: the all-in-one binary. `tierkv up` runs every role in one process on 127.0.0.1
// with the embedded default; today that is the cache manager with its host tier (the
// workers join it as they land).
#include <unistd.h>

#include <iostream>

#include "CLI/CLI.hpp"
#include "cache_manager/flags.h"
#include "cache_manager/server.h"
#include "cli/demo.h"
#include "core/block_key.h"
#include "core/units.h"

int main(int argc, char** argv) {
  CLI::App app{"tierkv: disaggregated KV cache for long-context LLM inference"};
  app.require_subcommand(1);
  CLI::App* up = app.add_subcommand("up", "run every role in one process on 127.0.0.1");
  tierkv::CacheManagerFlags flags;
  flags.Register(*up);
  bool demo = false, exit_after_demo = false;
  up->add_flag("--demo", demo, "send a demo request once serving, then keep serving");
  up->add_flag("--exit-after-demo", exit_after_demo, "with --demo: stop after the demo");
  CLI11_PARSE(app, argc, argv);

  tierkv::CacheManagerOptions options;
  if (absl::Status s = flags.Resolve(&options); !s.ok()) {
    std::cerr << "tierkv up: " << s.message() << "\n";
    return 2;
  }
  tierkv::BlockShutdownSignals();
  auto server = tierkv::CacheManagerServer::Start(options);
  if (!server.ok()) {
    std::cerr << "tierkv up: " << server.status().message() << "\n";
    return 1;
  }
  const tierkv::ModelSpec model = tierkv::BuiltinTinyModelSpec();
  std::cout << "tierkv up: serving on " << (*server)->address() << " (pid " << getpid() << ")\n"
            << "  cache manager: host tier " << tierkv::FormatBytes(options.host_capacity_bytes)
            << " in " << tierkv::FormatBytes(options.page_bytes) << " pages\n"
            << "  embedded model spec: " << model.model_id << " (" << model.num_layers
            << " layers, " << model.num_kv_heads << " kv heads, head_dim " << model.head_dim
            << ", " << model.kv_dtype << ", " << model.block_tokens << "-token blocks)\n"
            << "  inspect it: kvctl --server " << (*server)->address() << " stats | ls | inspect"
            << std::endl;
  if (demo) {
    absl::Status s = tierkv::RunDemo((*server)->address(), std::cout);
    if (!s.ok()) {
      std::cerr << "tierkv up: demo failed: " << s << "\n";
      (*server)->Shutdown();
      return 1;
    }
    if (exit_after_demo) {
      (*server)->Shutdown();
      return 0;
    }
  }
  if (absl::Status s = tierkv::WritePortFile(flags.port_file, (*server)->port()); !s.ok()) {
    std::cerr << "tierkv up: --port-file: " << s.message() << "\n";
    (*server)->Shutdown();
    return 1;
  }
  std::cout << "tierkv up: press Ctrl-C to stop" << std::endl;
  int sig = tierkv::WaitForShutdownSignal();
  std::cout << "tierkv up: signal " << sig << ", shutting down" << std::endl;
  (*server)->Shutdown();
  return 0;
}
