// tierkv-cache-manager: one node's cache manager as its own process.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "cache_manager/server.h"
#include "core/units.h"

namespace {

// Parses a flag like "30s" or "500ms" into `out`; prints a usable error otherwise.
bool ParseDurationFlag(const std::string& name, const std::string& text, absl::Duration* out) {
  if (!absl::ParseDuration(text, out) || *out <= absl::ZeroDuration()) {
    std::cerr << "tierkv-cache-manager: --" << name << " '" << text
              << "' is not a positive duration (try 30s, 500ms, 2m)\n";
    return false;
  }
  return true;
}

bool ParseBytesFlag(const std::string& name, const std::string& text, uint64_t* out) {
  auto v = tierkv::ParseBytes(text);
  if (!v.ok()) {
    std::cerr << "tierkv-cache-manager: --" << name << ": " << v.status().message() << "\n";
    return false;
  }
  *out = *v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tierkv cache manager: prefix-keyed KV blocks in a host-memory tier, over gRPC"};
  tierkv::CacheManagerOptions options;
  std::string capacity = "1GiB", page = "64KiB", write_ttl = "30s", read_ttl = "30s",
              max_ttl = "10m", port_file;
  app.add_option("--listen", options.listen_address, "host:port to serve on (port 0: any free)")
      ->capture_default_str();
  app.add_option("--host-capacity", capacity, "host tier size, e.g. 1GiB")->capture_default_str();
  app.add_option("--page-size", page, "host tier allocation unit (power of two >= 4KiB)")
      ->capture_default_str();
  app.add_option("--write-lease-ttl", write_ttl, "default write lease")->capture_default_str();
  app.add_option("--read-lease-ttl", read_ttl, "default read lease")->capture_default_str();
  app.add_option("--max-lease-ttl", max_ttl, "longest lease a request may ask for")
      ->capture_default_str();
  app.add_option("--event-buffer", options.event_buffer, "events kept for WatchEvents")
      ->capture_default_str();
  app.add_option("--node-name", options.node_name, "name advertised to clients (default: address)");
  app.add_option("--port-file", port_file, "write the bound port to this file once serving");
  CLI11_PARSE(app, argc, argv);

  if (!ParseBytesFlag("host-capacity", capacity, &options.host_capacity_bytes) ||
      !ParseBytesFlag("page-size", page, &options.page_bytes) ||
      !ParseDurationFlag("write-lease-ttl", write_ttl, &options.write_lease_ttl) ||
      !ParseDurationFlag("read-lease-ttl", read_ttl, &options.read_lease_ttl) ||
      !ParseDurationFlag("max-lease-ttl", max_ttl, &options.max_lease_ttl)) {
    return 2;
  }

  // Signals are taken synchronously by the main thread; every thread started later inherits
  // the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = tierkv::CacheManagerServer::Start(options);
  if (!server.ok()) {
    std::cerr << "tierkv-cache-manager: " << server.status().message() << "\n";
    return 1;
  }
  std::cout << "tierkv-cache-manager listening on " << (*server)->address() << " (host tier "
            << tierkv::FormatBytes(options.host_capacity_bytes) << ", pid " << getpid() << ")"
            << std::endl;
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << (*server)->port() << "\n";
    }
    if (std::rename(tmp.c_str(), port_file.c_str()) != 0) {
      std::cerr << "tierkv-cache-manager: cannot write --port-file " << port_file << "\n";
      (*server)->Shutdown();
      return 1;
    }
  }
  int sig = 0;
  sigwait(&signals, &sig);
  std::cout << "tierkv-cache-manager: signal " << sig << ", shutting down" << std::endl;
  (*server)->Shutdown();
  return 0;
}
