// Device discovery.
#include <cuda_runtime_api.h>

#include <cstring>

#include "kernels/cuda/internal/check.h"
#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda {

absl::StatusOr<DeviceInfo> CurrentDevice() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // Not sticky; leave no error for the next caller.
    return absl::UnavailableError(absl::StrCat("no usable CUDA device: ", cudaGetErrorName(err),
                                               " (", cudaGetErrorString(err), ")"));
  }
  if (count == 0) return absl::UnavailableError("no CUDA device present");
  DeviceInfo info;
  if (absl::Status s = CudaStatus(cudaGetDevice(&info.ordinal), "cudaGetDevice"); !s.ok()) {
    return s;
  }
  cudaDeviceProp prop;
  if (absl::Status s = CudaStatus(cudaGetDeviceProperties(&prop, info.ordinal),
                                  "cudaGetDeviceProperties");
      !s.ok()) {
    return s;
  }
  static_assert(sizeof(info.name) >= sizeof(prop.name));
  std::memcpy(info.name, prop.name, sizeof(prop.name));
  info.name[sizeof(info.name) - 1] = '\0';
  info.sm_major = prop.major;
  info.sm_minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.total_memory = prop.totalGlobalMem;
  info.l2_bytes = prop.l2CacheSize;
  info.max_shared_per_block_optin = prop.sharedMemPerBlockOptin;
  return info;
}

bool Available() {
  absl::StatusOr<DeviceInfo> info = CurrentDevice();
  return info.ok() && info->sm_major == 9 && info->sm_minor == 0;
}

}  // namespace tierkv::kernels::cuda
