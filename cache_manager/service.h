// gRPC front ends of the cache manager: CacheService and AdminService over one BlockIndex.
// Callback API; no handler blocks on anything but the index's short critical sections and
// memory copies.
//
// Thread-safe.
#ifndef TIERKV_CACHE_MANAGER_SERVICE_H_
#define TIERKV_CACHE_MANAGER_SERVICE_H_

#include <atomic>
#include <string>

#include "cache_manager/block_index.h"
#include "cache_manager/event_log.h"
#include "core/clock.h"
#include "storage/host_pool.h"
#include "transfer/engine.h"
#include "tierkv/v1/admin_service.grpc.pb.h"
#include "tierkv/v1/cache_service.grpc.pb.h"

namespace tierkv {

// Everything a service handler reads; owned by the server, outliving the services.
struct ServiceContext {
  BlockIndex* index = nullptr;
  EventLog* events = nullptr;
  HostPool* pool = nullptr;
  Clock* clock = nullptr;
  // Name advertised in locations and ListNodes. Set once the server knows its port; empty
  // until then. Points into the server.
  const std::atomic<const std::string*>* node = nullptr;
  absl::Time started;
  // The data plane, or null without one. Owned by the server.
  transfer::TransferEngine* engine = nullptr;
  const transfer::MemoryRegion* region = nullptr;
  std::string transports;

  std::string node_name() const {
    const std::string* n = node == nullptr ? nullptr : node->load(std::memory_order_acquire);
    return n == nullptr ? std::string() : *n;
  }
};

// Lookup is served raw (bytes in, bytes out): its response is encoded straight from the
// index (cache_manager/lookup_response_encoder.h) rather than built as a message and then
// serialized; the wire format is LookupResponse's, unchanged.
class CacheServiceImpl final
    : public v1::CacheService::WithRawCallbackMethod_Lookup<v1::CacheService::CallbackService> {
 public:
  explicit CacheServiceImpl(ServiceContext ctx) : ctx_(std::move(ctx)) {}

  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Allocate(grpc::CallbackServerContext* context,
                                     const v1::AllocateRequest* request,
                                     v1::AllocateResponse* response) override;
  grpc::ServerUnaryReactor* Commit(grpc::CallbackServerContext* context,
                                   const v1::CommitRequest* request,
                                   v1::CommitResponse* response) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const v1::AbortRequest* request,
                                  v1::AbortResponse* response) override;
  grpc::ServerUnaryReactor* ReleaseLease(grpc::CallbackServerContext* context,
                                         const v1::ReleaseLeaseRequest* request,
                                         v1::ReleaseLeaseResponse* response) override;
  grpc::ServerUnaryReactor* Pin(grpc::CallbackServerContext* context,
                                const v1::PinRequest* request,
                                v1::PinResponse* response) override;
  grpc::ServerUnaryReactor* Unpin(grpc::CallbackServerContext* context,
                                  const v1::PinRequest* request,
                                  v1::PinResponse* response) override;
  grpc::ServerUnaryReactor* Evict(grpc::CallbackServerContext* context,
                                  const v1::EvictRequest* request,
                                  v1::EvictResponse* response) override;
  grpc::ServerReadReactor<v1::PutRequest>* Put(grpc::CallbackServerContext* context,
                                               v1::PutResponse* response) override;
  grpc::ServerWriteReactor<v1::GetResponse>* Get(grpc::CallbackServerContext* context,
                                                 const v1::GetRequest* request) override;
  grpc::ServerWriteReactor<v1::Event>* WatchEvents(
      grpc::CallbackServerContext* context, const v1::WatchEventsRequest* request) override;
  grpc::ServerUnaryReactor* DataPlane(grpc::CallbackServerContext* context,
                                      const v1::DataPlaneRequest* request,
                                      v1::DataPlaneResponse* response) override;

 private:
  const ServiceContext ctx_;
};

class AdminServiceImpl final : public v1::AdminService::CallbackService {
 public:
  explicit AdminServiceImpl(ServiceContext ctx) : ctx_(std::move(ctx)) {}

  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* context,
                                  const v1::StatsRequest* request,
                                  v1::StatsResponse* response) override;
  grpc::ServerUnaryReactor* ListBlocks(grpc::CallbackServerContext* context,
                                       const v1::ListBlocksRequest* request,
                                       v1::ListBlocksResponse* response) override;
  grpc::ServerUnaryReactor* InspectPrefix(grpc::CallbackServerContext* context,
                                          const v1::InspectPrefixRequest* request,
                                          v1::InspectPrefixResponse* response) override;
  grpc::ServerUnaryReactor* ListNodes(grpc::CallbackServerContext* context,
                                      const v1::ListNodesRequest* request,
                                      v1::ListNodesResponse* response) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* context,
                                  const v1::DrainRequest* request,
                                  v1::DrainResponse* response) override;

 private:
  const ServiceContext ctx_;
};

// The core spec of a request's model (validated by the index, not here).
ModelSpec ModelSpecFromProto(const v1::ModelSpec& proto);

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_SERVICE_H_
