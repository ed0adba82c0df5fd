#include "cache_manager/server.h"

#include <grpcpp/grpcpp.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "cache_manager/service.h"
#include "proto/grpc_server.h"

namespace tierkv {
namespace {

constexpr absl::Duration kReapInterval = absl::Milliseconds(100);

class ServerImpl : public CacheManagerServer {
 public:
  ~ServerImpl() override { Shutdown(); }

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
    auto pool = HostPool::Create(
        {.capacity_bytes = options.host_capacity_bytes, .page_bytes = options.page_bytes});
    if (!pool.ok()) return pool.status();
    pool_ = std::move(pool).value();
    events_ = std::make_unique<EventLog>(options.event_buffer);
    BlockIndexOptions index_options;
    index_options.write_lease_ttl = options.write_lease_ttl;
    index_options.read_lease_ttl = options.read_lease_ttl;
    index_options.max_lease_ttl = options.max_lease_ttl;
    index_options.eviction_memory = options.eviction_memory;
    index_ = std::make_unique<BlockIndex>(index_options, pool_.get(), clock_, events_.get());

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
    done_.Notify();
  }

  void Wait() override { done_.WaitForNotification(); }
  absl::Status CheckInvariants() override { return index_->CheckInvariants(); }

 private:
  ServiceContext MakeContext() {
    ServiceContext ctx;
    ctx.index = index_.get();
    ctx.events = events_.get();
    ctx.pool = pool_.get();
    ctx.clock = clock_;
    ctx.node = &node_ptr_;
    ctx.started = clock_->Now();
    return ctx;
  }

  Clock* clock_ = nullptr;
  std::unique_ptr<HostPool> pool_;
  std::unique_ptr<EventLog> events_;
  std::unique_ptr<BlockIndex> index_;
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
