// tierkv-cache-manager: one node's cache manager as its own process.
#include <unistd.h>

#include <iostream>

#include "CLI/CLI.hpp"
#include "cache_manager/flags.h"
#include "cache_manager/server.h"
#include "absl/strings/str_replace.h"
#include "core/process.h"

int main(int argc, char** argv) {
  tierkv::DisableMutexDeadlockDetection();
  CLI::App app{"tierkv cache manager: prefix-keyed KV blocks in host memory and SSD tiers, "
               "over gRPC"};
  tierkv::CacheManagerFlags flags;
  flags.Register(app);
  CLI11_PARSE(app, argc, argv);

  tierkv::CacheManagerOptions options;
  if (absl::Status s = flags.Resolve(&options); !s.ok()) {
    std::cerr << "tierkv-cache-manager: " << s.message() << "\n";
    return 2;
  }
  tierkv::BlockShutdownSignals();
  auto server = tierkv::CacheManagerServer::Start(options);
  if (!server.ok()) {
    std::cerr << "tierkv-cache-manager: " << server.status().message() << "\n";
    return 1;
  }
  std::cout << "tierkv-cache-manager listening on " << (*server)->address() << " (pid "
            << getpid() << ")\n  " << absl::StrReplaceAll((*server)->TierSummary(), {{"\n", "\n  "}})
            << std::endl;
  if (absl::Status s = tierkv::WritePortFile(flags.port_file, (*server)->port()); !s.ok()) {
    std::cerr << "tierkv-cache-manager: --port-file: " << s.message() << "\n";
    (*server)->Shutdown();
    return 1;
  }
  int sig = tierkv::WaitForShutdownSignal();
  std::cout << "tierkv-cache-manager: signal " << sig << ", shutting down" << std::endl;
  (*server)->Shutdown();
  return 0;
}
