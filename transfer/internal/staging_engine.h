// The engine that TransferEngine::Create returns when EngineOptions::device_memory is set:
// it wraps the UCX engine and stages device ops through pinned bounce buffers (engine.h,
// "GPU memory"). Host ops, and every other method, go to the wrapped engine unchanged.
#ifndef TIERKV_TRANSFER_INTERNAL_STAGING_ENGINE_H_
#define TIERKV_TRANSFER_INTERNAL_STAGING_ENGINE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "transfer/engine.h"

namespace tierkv::transfer::internal {

// Takes `inner`, a started engine without device support, and options.device_memory (not
// null) and options.bounce_bytes. INVALID_ARGUMENT when bounce_bytes is below 8 KiB; the
// error of AllocatePinned or of registering the bounce buffers with `inner`.
absl::StatusOr<std::unique_ptr<TransferEngine>> NewStagingEngine(
    std::unique_ptr<TransferEngine> inner, const EngineOptions& options);

}  // namespace tierkv::transfer::internal

#endif  // TIERKV_TRANSFER_INTERNAL_STAGING_ENGINE_H_
