// Command-line flags of a cache manager, shared by tierkv-cache-manager and `tierkv up`.
#ifndef TIERKV_CACHE_MANAGER_FLAGS_H_
#define TIERKV_CACHE_MANAGER_FLAGS_H_

#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "cache_manager/server.h"
#include "core/process.h"

namespace tierkv {

// Flag values as typed; Resolve() turns them into options.
struct CacheManagerFlags {
  std::string listen = "127.0.0.1:7471";
  std::string host_capacity = "1GiB";
  std::string page_size = "64KiB";
  std::string write_lease_ttl = "30s";
  std::string read_lease_ttl = "30s";
  std::string max_lease_ttl = "10m";
  uint32_t event_buffer = 65536;
  std::string node_name;
  std::string port_file;
  bool no_data_plane = false;
  std::string transports;
  std::string data_dir;
  std::string ssd_capacity = "16GiB";
  std::string ssd_slab_size = "1GiB";
  bool ssd_write_through = false;
  bool ssd_flush_on_shutdown = false;
  uint32_t ssd_admit_min_hits = 1;
  bool no_direct_io = false;
  std::string admission = "auto";

  // Registers the flags on `app`; `this` must outlive parsing.
  void Register(CLI::App& app);
  // INVALID_ARGUMENT naming the flag for a bad size or duration.
  absl::Status Resolve(CacheManagerOptions* options) const;
};

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_FLAGS_H_
