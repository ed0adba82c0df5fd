// PrefillService over gRPC: requests run one at a time on the worker's compute thread (the
// model parallelises inside), with a bounded backlog.
//
// Thread-safe.
#ifndef TIERKV_PREFILL_WORKER_PREFILL_SERVICE_H_
#define TIERKV_PREFILL_WORKER_PREFILL_SERVICE_H_

#include <memory>

#include "cache_client/cache_client.h"
#include "core/executor.h"
#include "model/runtime.h"
#include "tierkv/v1/prefill_service.grpc.pb.h"

namespace tierkv {

class PrefillServiceImpl final : public v1::PrefillService::CallbackService {
 public:
  // `model` and `cache` must outlive the service. A request arriving while `max_queued`
  // wait gets RESOURCE_EXHAUSTED.
  PrefillServiceImpl(const Runtime* model, CacheClient* cache, size_t max_queued = 64);

  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* context,
                                    const v1::PrefillRequest* request,
                                    v1::PrefillResponse* response) override;

 private:
  const Runtime* const model_;
  CacheClient* const cache_;
  SerialExecutor executor_;
};

}  // namespace tierkv

#endif  // TIERKV_PREFILL_WORKER_PREFILL_SERVICE_H_
