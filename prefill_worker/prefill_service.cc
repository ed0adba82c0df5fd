#include "prefill_worker/prefill_service.h"

#include "prefill_worker/prefill.h"
#include "proto/grpc_status.h"

namespace tierkv {

PrefillServiceImpl::PrefillServiceImpl(const Runtime* model, CacheClient* cache, size_t max_queued)
    : model_(model), cache_(cache), executor_(max_queued) {}

grpc::ServerUnaryReactor* PrefillServiceImpl::Prefill(grpc::CallbackServerContext* context,
                                                      const v1::PrefillRequest* request,
                                                      v1::PrefillResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // The request and response live until Finish; the job runs before that.
  absl::Status queued = executor_.Submit([this, context, request, response, reactor] {
    if (context->IsCancelled()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "caller went away"));
      return;
    }
    auto result = RunPrefill(*model_, *cache_, *request);
    if (!result.ok()) {
      reactor->Finish(ToGrpcStatus(result.status()));
      return;
    }
    *response = *std::move(result);
    reactor->Finish(grpc::Status::OK);
  });
  if (!queued.ok()) reactor->Finish(ToGrpcStatus(queued));
  return reactor;
}

}  // namespace tierkv
