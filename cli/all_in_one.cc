#include "cli/all_in_one.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cache_client/cache_client.h"
#include "core/status.h"
#include "decode_worker/decode_service.h"
#include "model/model.h"
#include "prefill_worker/prefill_service.h"
#include "prefill_worker/sparse_patterns.h"

namespace tierkv {
namespace {

// A port on 127.0.0.1 that nothing listens on right now. The workers dial the cache
// manager on the process's own port, so it must be known before the server starts.
absl::StatusOr<int> FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return ErrnoToStatus(errno, "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    absl::Status s = ErrnoToStatus(errno, "bind 127.0.0.1:0");
    close(fd);
    return s;
  }
  close(fd);
  return ntohs(addr.sin_port);
}

// The cache manager's GPU tier over device memory of the model's runtime.
class RuntimeDeviceTier : public DeviceTier {
 public:
  static absl::StatusOr<std::unique_ptr<RuntimeDeviceTier>> Create(
      std::unique_ptr<DeviceArena> arena, uint64_t page_bytes) {
    auto tier = std::unique_ptr<RuntimeDeviceTier>(new RuntimeDeviceTier(std::move(arena)));
    TIERKV_RETURN_IF_ERROR(
        tier->InitPool(tier->arena_->base(), tier->arena_->bytes(), page_bytes));
    return tier;
  }
  std::string Describe() const override { return arena_->Describe(); }
  absl::Status CopyToHost(const PoolAllocation& src,
                          std::span<const std::span<uint8_t>> dst) override {
    return arena_->CopyToHost(PiecesOf(src), dst);
  }
  absl::Status Checksums(std::span<const PoolAllocation> blocks,
                         std::span<uint64_t> out) override {
    std::vector<std::vector<PayloadPiece>> pieces;
    pieces.reserve(blocks.size());
    std::vector<std::span<const PayloadPiece>> spans;
    for (const PoolAllocation& b : blocks) spans.emplace_back(pieces.emplace_back(PiecesOf(b)));
    return arena_->Checksums(spans, out);
  }

 private:
  explicit RuntimeDeviceTier(std::unique_ptr<DeviceArena> arena) : arena_(std::move(arena)) {}
  std::vector<PayloadPiece> PiecesOf(const PoolAllocation& a) const {
    std::vector<PayloadPiece> pieces;
    for (const PoolExtent& e : a.extents) pieces.push_back({arena_->base() + e.offset, e.length});
    return pieces;
  }
  std::unique_ptr<DeviceArena> arena_;
};

class AllInOneImpl : public AllInOne {
 public:
  absl::Status Init(const AllInOneOptions& options) {
    RuntimeOptions runtime = options.runtime;
    if (!options.sparse_patterns.empty()) {
      TIERKV_ASSIGN_OR_RETURN(ModelConfig config, ModelConfigOf(options.model));
      TIERKV_ASSIGN_OR_RETURN(
          SparsePlan plan,
          LoadSparsePatterns(options.sparse_patterns, static_cast<int>(config.num_layers),
                             static_cast<int>(config.num_heads)));
      runtime.sparse_plan = std::make_shared<const SparsePlan>(std::move(plan));
    }
    TIERKV_ASSIGN_OR_RETURN(model_, Runtime::Load(options.model, runtime));
    CacheManagerOptions cache_options = options.cache;
    if (model_->device() == kernels::Device::kCuda && options.gpu_capacity_bytes > 0) {
      auto arena = model_->AllocateDeviceArena(options.gpu_capacity_bytes);
      absl::StatusOr<std::unique_ptr<RuntimeDeviceTier>> tier =
          arena.ok() ? RuntimeDeviceTier::Create(*std::move(arena), cache_options.page_bytes)
                     : absl::StatusOr<std::unique_ptr<RuntimeDeviceTier>>(arena.status());
      if (tier.ok()) {
        gpu_tier_ = *std::move(tier);
        cache_options.gpu_tier = gpu_tier_.get();
      } else {
        std::cerr << "tierkv: no GPU tier (" << tier.status().message()
                  << "); new blocks go to host memory\n";
      }
    }
    std::string& listen = cache_options.listen_address;
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("--listen '", listen, "' is not host:port"));
    }
    int port = 0;
    if (!absl::SimpleAtoi(listen.substr(colon + 1), &port)) {
      return absl::InvalidArgumentError(absl::StrCat("--listen '", listen, "' has no port"));
    }
    if (port == 0) {
      TIERKV_ASSIGN_OR_RETURN(port, FreeLoopbackPort());
      listen = absl::StrCat(listen.substr(0, colon), ":", port);
    }
    CacheClientOptions client_options;
    client_options.address = listen;
    TIERKV_ASSIGN_OR_RETURN(cache_client_, CacheClient::Create(client_options));
    prefill_ = std::make_unique<PrefillServiceImpl>(model_.get(), cache_client_.get());
    decode_ = std::make_unique<DecodeServiceImpl>(model_.get(), cache_client_.get());
    cache_options.extra_services = {prefill_.get(), decode_.get()};
    TIERKV_ASSIGN_OR_RETURN(server_, CacheManagerServer::Start(cache_options));
    // The workers read cached blocks where they lie in the host tier: no copy on the CPU, and
    // on the GPU one DMA from the registered region.
    const std::span<uint8_t> region = server_->HostTierRegion();
    if (!region.empty()) {
      auto registration = model_->RegisterHostMemory(region.data(), region.size());
      if (registration.ok()) {
        host_registration_ = std::move(registration).value();
      } else {
        std::cerr << "tierkv: the host tier could not be registered for DMA ("
                  << registration.status().message() << "); cached blocks reach the GPU "
                  << "through the driver's staging instead\n";
      }
      cache_client_->SetLocalHostTier(region);
    }
    // The workers compute on the GPU tier's device: they write new blocks there and read
    // cached ones where they lie.
    const std::span<uint8_t> gpu_region = server_->GpuTierRegion();
    if (!gpu_region.empty()) cache_client_->SetLocalGpuTier(gpu_region);
    return absl::OkStatus();
  }

  ~AllInOneImpl() override { Shutdown(); }
  std::string address() const override { return server_->address(); }
  int port() const override { return server_->port(); }
  const Runtime& model() const override { return *model_; }
  CacheManagerServer& cache_manager() override { return *server_; }
  uint64_t gpu_tier_bytes() const override {
    return gpu_tier_ == nullptr ? 0 : gpu_tier_->pool().capacity_bytes();
  }
  void Shutdown() override {
    if (server_) server_->Shutdown();
  }

 private:
  std::unique_ptr<Runtime> model_;
  // Outlives the server that hands out its memory.
  std::unique_ptr<RuntimeDeviceTier> gpu_tier_;
  std::unique_ptr<CacheClient> cache_client_;
  std::unique_ptr<PrefillServiceImpl> prefill_;
  std::unique_ptr<DecodeServiceImpl> decode_;
  std::unique_ptr<CacheManagerServer> server_;
  // Released before the server frees the host tier.
  std::unique_ptr<HostMemoryRegistration> host_registration_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<AllInOne>> AllInOne::Start(const AllInOneOptions& options) {
  auto all = std::make_unique<AllInOneImpl>();
  TIERKV_RETURN_IF_ERROR(all->Init(options));
  return std::unique_ptr<AllInOne>(std::move(all));
}

}  // namespace tierkv
