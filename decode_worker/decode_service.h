// DecodeService over gRPC: Generate streams tokens as they are sampled. Requests run one at
// a time on the worker's compute thread (the model parallelises inside), with a bounded
// backlog; a caller that goes away stops its generation at the next token.
//
// Thread-safe.
#ifndef TIERKV_DECODE_WORKER_DECODE_SERVICE_H_
#define TIERKV_DECODE_WORKER_DECODE_SERVICE_H_

#include "cache_client/cache_client.h"
#include "core/executor.h"
#include "model/runtime.h"
#include "tierkv/v1/decode_service.grpc.pb.h"

namespace tierkv {

class DecodeServiceImpl final : public v1::DecodeService::CallbackService {
 public:
  // `model` must outlive the service; `cache` too, or be null (nothing is ever cached).
  DecodeServiceImpl(const Runtime* model, CacheClient* cache, size_t max_queued = 64);

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;

 private:
  const Runtime* const model_;
  CacheClient* const cache_;
  SerialExecutor executor_;
};

}  // namespace tierkv

#endif  // TIERKV_DECODE_WORKER_DECODE_SERVICE_H_
