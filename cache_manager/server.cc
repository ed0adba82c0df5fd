#include "cache_manager/server.h"

#include <grpcpp/grpcpp.h>

#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "cache_manager/service.h"
#include "core/status.h"
#include "core/units.h"
#include "proto/grpc_server.h"

namespace tierkv {
namespace {

constexpr absl::Duration kReapInterval = absl::Milliseconds(100);

class ServerImpl : public CacheManagerServer {
 public:
  ~ServerImpl() override {
    Shutdown();
    // A registration over the pool's own mapping goes before the mapping does; memory the
    // engine allocated goes after the pool (members die in reverse order).
    if (pool_ != nullptr && region_ != nullptr && region_->base() != pool_external_) {
      region_.reset();
    }
  }

  absl::Status Init(const CacheManagerOptions& options, Clock* clock) {
    clock_ = clock != nullptr ? clock : RealClock();
    if (options.max_lease_ttl <= absl::ZeroDuration() ||
        options.write_lease_ttl <= absl::ZeroDuration() ||
        options.read_lease_ttl <= absl::ZeroDuration() ||
        options.write_lease_ttl > options.max_lease_ttl ||
        options.read_lease_ttl > options.max_lease_ttl) {
      return absl::InvalidArgumentError(absl::StrCat(
          "lease lengths must be positive and at most the maximum of ",
          absl::FormatDuration(options.max_lease_ttl)));
    }
    HostPool::Options pool_options{.capacity_bytes = options.host_capacity_bytes,
                                   .page_bytes = options.page_bytes};
    if (options.data_plane) {
      TIERKV_RETURN_IF_ERROR(StartDataPlane(options, &pool_options));
    }
    auto pool = HostPool::Create(pool_options);
    if (!pool.ok()) return pool.status();
    pool_ = std::move(pool).value();
    if (engine_ != nullptr && region_ == nullptr) {
      // UCX could not allocate the pool's memory itself: register the pool's own mapping.
      auto region = engine_->Register(pool_->base(), pool_->capacity_bytes());
      if (!region.ok()) {
        return absl::Status(region.status().code(),
                            absl::StrCat("data plane: registering the host tier: ",
                                         region.status().message()));
      }
      region_ = std::move(region).value();
    }
    events_ = std::make_unique<EventLog>(options.event_buffer);
    BlockIndexOptions index_options;
    index_options.write_lease_ttl = options.write_lease_ttl;
    index_options.read_lease_ttl = options.read_lease_ttl;
    index_options.max_lease_ttl = options.max_lease_ttl;
    index_options.eviction_memory = options.eviction_memory;
    index_options.ssd_write_through = options.ssd_write_through;
    flush_on_shutdown_ = options.ssd_flush_on_shutdown && !options.data_dir.empty();
    index_options.ssd_admit_min_hits = options.ssd_admit_min_hits;
    index_options.admission = options.admission;
    tier_summary_ = absl::StrCat("host tier ", FormatBytes(pool_->capacity_bytes()), " in ",
                                 FormatBytes(pool_->page_bytes()), " pages");
    SsdRecovery recovery;
    if (!options.data_dir.empty()) {
      SsdTierOptions ssd_options;
      ssd_options.dir = options.data_dir;
      ssd_options.capacity_bytes = options.ssd_capacity_bytes;
      ssd_options.slab_bytes = options.ssd_slab_bytes;
      ssd_options.direct_io = options.ssd_direct_io;
      ssd_options.io = options.ssd_io;
      auto ssd = SsdTier::Open(ssd_options, &recovery);
      if (!ssd.ok()) {
        const bool direct = absl::StrContains(ssd.status().message(), "O_DIRECT");
        return absl::Status(ssd.status().code(),
                            absl::StrCat("SSD tier in ", options.data_dir, ": ",
                                         ssd.status().message(),
                                         direct ? " (flag --no-direct-io)" : ""));
      }
      ssd_ = std::move(ssd).value();
    }
    gpu_ = options.gpu_tier;
    if (gpu_ != nullptr) {
      absl::StrAppend(&tier_summary_, "\nGPU tier ", FormatBytes(gpu_->pool().capacity_bytes()),
                      " on ", gpu_->Describe(),
                      options.ssd_write_through
                          ? " (unused: SSD write-through needs every block in host memory)"
                          : "");
    }
    index_ = std::make_unique<BlockIndex>(index_options, pool_.get(), clock_, events_.get(),
                                          ssd_.get(), gpu_);
    if (ssd_ != nullptr) {
      const absl::Time start = absl::Now();
      index_->Recover(recovery);
      absl::StrAppend(&tier_summary_, "\nSSD tier ", FormatBytes(ssd_->capacity_bytes()),
                      " under ", options.data_dir,
                      options.ssd_write_through ? " (write-through)" : " (write-back)",
                      ": recovered ", recovery.records.size(), " blocks in ",
                      absl::StrFormat("%.1f ms", absl::ToDoubleMilliseconds(
                                                     recovery.elapsed + (absl::Now() - start))));
      if (recovery.dropped_records > 0) {
        absl::StrAppend(&tier_summary_, ", dropped ", recovery.dropped_records,
                        " records whose payload was missing or half-written");
      }
    }

    // The node name depends on the bound port, known only after the server starts; the
    // services read it through an atomic pointer set below.
    cache_service_ = std::make_unique<CacheServiceImpl>(MakeContext());
    admin_service_ = std::make_unique<AdminServiceImpl>(MakeContext());
    std::vector<grpc::Service*> services = {cache_service_.get(), admin_service_.get()};
    services.insert(services.end(), options.extra_services.begin(), options.extra_services.end());
    auto started = StartGrpcServer(options.listen_address, services);
    if (!started.ok()) return started.status();
    server_ = std::move(started->server);
    port_ = started->port;
    address_ = started->address;
    node_ = options.node_name.empty() ? address_ : options.node_name;
    node_ptr_.store(&node_, std::memory_order_release);
    reaper_ = std::thread([this] {
      while (!stop_.WaitForNotificationWithTimeout(kReapInterval)) index_->ExpireLeases();
    });
    return absl::OkStatus();
  }

  int port() const override { return port_; }
  std::string address() const override { return address_; }

  void Shutdown() override {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
    if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    if (!stop_.HasBeenNotified()) stop_.Notify();
    if (reaper_.joinable()) reaper_.join();
    if (server_ != nullptr) server_->Wait();
    if (flush_on_shutdown_ && index_ != nullptr) {
      const absl::Time start = absl::Now();
      const BlockIndex::FlushResult flushed = index_->FlushToSsd();
      std::cerr << "cache manager: flushed " << flushed.written << " blocks ("
                << FormatBytes(flushed.bytes) << ") to the SSD tier in "
                << absl::StrFormat("%.1f s", absl::ToDoubleSeconds(absl::Now() - start))
                << (flushed.left > 0 ? absl::StrCat("; ", flushed.left,
                                                    " blocks did not fit and are dropped")
                                     : std::string())
                << std::endl;
    }
    done_.Notify();
  }

  void Wait() override { done_.WaitForNotification(); }
  absl::Status CheckInvariants() override { return index_->CheckInvariants(); }
  std::string TierSummary() const override { return tier_summary_; }
  std::span<uint8_t> HostTierRegion() const override {
    if (pool_ == nullptr) return {};
    return {pool_->base(), static_cast<size_t>(pool_->capacity_bytes())};
  }
  std::span<uint8_t> GpuTierRegion() const override {
    if (gpu_ == nullptr) return {};
    return {gpu_->region_base(), static_cast<size_t>(gpu_->pool().capacity_bytes())};
  }

 private:
  // Starts the UCX engine and takes the host tier's memory from it, so that peers on this
  // host map it directly (shm) and remote peers reach it through its registration.
  absl::Status StartDataPlane(const CacheManagerOptions& options, HostPool::Options* pool) {
    transfer::EngineOptions engine_options;
    engine_options.name = "cache-manager";
    engine_options.transports = options.transports;
    auto engine = transfer::TransferEngine::Create(engine_options);
    if (!engine.ok()) {
      return absl::Status(engine.status().code(),
                          absl::StrCat("data plane: ", engine.status().message(),
                                       "; run with --no-data-plane to serve over gRPC only"));
    }
    engine_ = std::move(engine).value();
    transports_ = options.transports;
    const uint64_t capacity = options.host_capacity_bytes / options.page_bytes * options.page_bytes;
    if (capacity == 0) return absl::OkStatus();  // HostPool::Create says what is wrong.
    auto region = engine_->Allocate(capacity);
    if (region.ok() && reinterpret_cast<uintptr_t>((*region)->base()) % 4096 == 0) {
      region_ = std::move(region).value();
      pool->external_memory = region_->base();
      pool_external_ = region_->base();
    }
    return absl::OkStatus();
  }

  ServiceContext MakeContext() {
    ServiceContext ctx;
    ctx.index = index_.get();
    ctx.events = events_.get();
    ctx.pool = pool_.get();
    ctx.clock = clock_;
    ctx.node = &node_ptr_;
    ctx.started = clock_->Now();
    ctx.engine = engine_.get();
    ctx.region = region_.get();
    ctx.transports = transports_;
    return ctx;
  }

  Clock* clock_ = nullptr;
  // The data plane outlives the pool built on its memory (members die in reverse order).
  std::unique_ptr<transfer::TransferEngine> engine_;
  std::unique_ptr<transfer::MemoryRegion> region_;
  std::string transports_;
  void* pool_external_ = nullptr;  // The engine's memory the pool manages, if any.
  std::unique_ptr<HostPool> pool_;
  std::unique_ptr<EventLog> events_;
  std::unique_ptr<SsdTier> ssd_;  // Outlives the index that uses it.
  std::unique_ptr<BlockIndex> index_;
  std::string tier_summary_;
  DeviceTier* gpu_ = nullptr;  // Not owned.
  bool flush_on_shutdown_ = false;
  std::atomic<const std::string*> node_ptr_{nullptr};
  std::unique_ptr<CacheServiceImpl> cache_service_;
  std::unique_ptr<AdminServiceImpl> admin_service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string address_;
  std::string node_;
  std::thread reaper_;
  absl::Notification stop_;
  absl::Notification done_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CacheManagerServer>> CacheManagerServer::Start(
    const CacheManagerOptions& options, Clock* clock) {
  auto server = std::make_unique<ServerImpl>();
  absl::Status status = server->Init(options, clock);
  if (!status.ok()) return status;
  return std::unique_ptr<CacheManagerServer>(std::move(server));
}

}  // namespace tierkv
