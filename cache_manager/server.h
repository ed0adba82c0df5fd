// A running cache manager: CacheService, AdminService, grpc.health.v1.Health and server
// reflection on one gRPC port, plus the housekeeping thread that reclaims expired leases.
//
// Thread-safe.
#ifndef TIERKV_CACHE_MANAGER_SERVER_H_
#define TIERKV_CACHE_MANAGER_SERVER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <grpcpp/impl/service_type.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache_manager/block_index.h"
#include "core/clock.h"
#include "storage/device_tier.h"
#include "storage/ssd_tier.h"

namespace tierkv {

struct CacheManagerOptions {
  // host:port to listen on; port 0 picks a free one (see CacheManagerServer::port()).
  std::string listen_address = "127.0.0.1:7471";
  // Host tier size and its allocation unit.
  uint64_t host_capacity_bytes = 1ull << 30;
  uint64_t page_bytes = 64 * 1024;
  // Default lease lengths when a request asks for 0, and the most a request may ask for.
  absl::Duration write_lease_ttl = absl::Seconds(30);
  absl::Duration read_lease_ttl = absl::Seconds(30);
  absl::Duration max_lease_ttl = absl::Minutes(10);
  // SSD tier: slab files and the RocksDB catalog under data_dir (docs/ssd-catalog.md).
  // Empty: no SSD tier. A restart on the same directory serves what it holds.
  std::string data_dir;
  uint64_t ssd_capacity_bytes = 16ull << 30;
  uint64_t ssd_slab_bytes = 1ull << 30;
  // Write through: Commit returns once blocks are durable on SSD too. Otherwise blocks
  // reach SSD when the host tier demotes them, if admitted.
  bool ssd_write_through = false;
  // On Shutdown, write host blocks that have no SSD copy to SSD first (hottest first, as
  // far as the SSD has room without dropping copies of hotter blocks), so that a restart
  // finds them. Adds the time of writing the host tier out to the shutdown.
  bool ssd_flush_on_shutdown = false;
  // Lookup hits a block needs since its commit to be demoted rather than dropped.
  uint32_t ssd_admit_min_hits = 1;
  bool ssd_direct_io = true;
  // Host admission when the tier is full (docs/cache-policy.md).
  BlockIndexOptions::Admission admission = BlockIndexOptions::Admission::kAuto;
  // The SSD tier's file operations (tests inject faults); null: plain syscalls.
  std::shared_ptr<SsdFileIo> ssd_io;
  // Events kept for WatchEvents; a watcher further behind is told what it missed.
  uint32_t event_buffer = 65536;
  // Evicted keys remembered so that InspectPrefix can say "evicted" rather than "never stored".
  uint32_t eviction_memory = 1 << 20;
  // Name this node advertises in locations and ListNodes; empty uses the listen address.
  std::string node_name;
  // Serve block memory over UCX (DataPlane, one-sided or engine-served transfers). Off:
  // clients move bytes with the gRPC Put/Get streams only.
  bool data_plane = true;
  // UCX transports of the data plane ("tcp", "shm", ...); empty: UCX_TLS or UCX's default.
  std::string transports;
  // More services served on the same port (`tierkv up` adds the workers'). Not owned; they
  // must outlive the server.
  std::vector<grpc::Service*> extra_services;
  // The GPU tier (DeviceTier's memory on the process's GPU), or null for none. Only a process
  // whose workers share the GPU has one (`tierkv up` on a GPU). Not owned; it must outlive
  // the server.
  DeviceTier* gpu_tier = nullptr;
};

class CacheManagerServer {
 public:
  // Starts serving. INVALID_ARGUMENT for bad options, UNAVAILABLE when the address cannot be
  // bound. `clock` must outlive the server; null means the real clock.
  static absl::StatusOr<std::unique_ptr<CacheManagerServer>> Start(
      const CacheManagerOptions& options, Clock* clock = nullptr);
  virtual ~CacheManagerServer() = default;

  // The bound port and "127.0.0.1:port"-style address to dial.
  virtual int port() const = 0;
  virtual std::string address() const = 0;
  // Stops accepting calls, cancels streams, and joins background threads. Idempotent.
  virtual void Shutdown() = 0;
  // Checks the block index's invariants (pool accounting, eviction order, leases): OK or
  // INTERNAL naming the first violation. For tests and operators' health checks.
  virtual absl::Status CheckInvariants() = 0;
  // The GPU tier's device memory in this process (TIER_GPU extents are offsets into it), or
  // empty without a GPU tier.
  virtual std::span<uint8_t> GpuTierRegion() const = 0;
  // The host tier's memory in this process: extents of Lookup responses are offsets into it.
  // For readers in the same process (tierkv up's workers); empty without a host tier.
  virtual std::span<uint8_t> HostTierRegion() const = 0;
  // One line per tier for start-up logs: sizes, and what the SSD tier recovered.
  virtual std::string TierSummary() const = 0;
  // Blocks until Shutdown() is called (from another thread or a signal handler's helper).
  virtual void Wait() = 0;
};

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_SERVER_H_
