// The CUDA DeviceMemory (transfer/device_memory.h): what an engine needs to stage GPU
// buffers through pinned host memory where UCX has no CUDA transports. Built only with
// CUDA (TIERKV_HAVE_CUDA, library tierkv_transfer_cuda); no CUDA header is included here.
//
//   auto device = NewCudaDeviceMemory({}).value();
//   EngineOptions options;
//   options.device_memory = device;
//   auto engine = TransferEngine::Create(options).value();   // Get/Put take cudaMalloc'ed
//                                                             // buffers as op.local now.
#ifndef TIERKV_TRANSFER_CUDA_DEVICE_MEMORY_H_
#define TIERKV_TRANSFER_CUDA_DEVICE_MEMORY_H_

#include <memory>

#include "absl/status/statusor.h"
#include "transfer/device_memory.h"

namespace tierkv::transfer {

struct CudaDeviceMemoryOptions {
  // The device whose streams copy (cudaSetDevice ordinal); -1: the calling thread's
  // current device. Copies to and from other devices' memory work too (unified
  // addressing), through this device's streams.
  int device = -1;
  // Lanes: one non-blocking stream and one event each. The engine uses one per bounce slot
  // (at most four).
  int lanes = 4;
};

// IsDevice is true for memory of type cudaMemoryTypeDevice (cudaMalloc, any device);
// managed and host memory are not device memory. Pinned memory comes from cudaHostAlloc
// (portable). WaitLane blocks the thread (no spinning) until the lane's stream is idle.
// CUDA errors come back as INTERNAL (RESOURCE_EXHAUSTED for out of memory). Thread-safe.
// UNAVAILABLE when there is no usable CUDA device; INVALID_ARGUMENT for lanes < 1 or a
// device out of range.
absl::StatusOr<std::shared_ptr<DeviceMemory>> NewCudaDeviceMemory(
    const CudaDeviceMemoryOptions& options);

}  // namespace tierkv::transfer

#endif  // TIERKV_TRANSFER_CUDA_DEVICE_MEMORY_H_
