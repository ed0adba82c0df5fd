// Conversion of CUDA and cuBLAS errors to absl::Status, once, at the edge. Only for .cc/.cu
// files of kernels/cuda and the GPU runtime.
#ifndef TIERKV_KERNELS_CUDA_INTERNAL_CHECK_H_
#define TIERKV_KERNELS_CUDA_INTERNAL_CHECK_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tierkv::kernels::cuda {

// OK for cudaSuccess; RESOURCE_EXHAUSTED for out-of-memory; UNAVAILABLE when there is no
// usable device or driver; INTERNAL otherwise. `what` names the call.
inline absl::Status CudaStatus(cudaError_t err, std::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  // A failed call also sets this thread's last error, which the next launch's check would
  // report as its own; the error is returned here, so clear it (sticky errors stay).
  cudaGetLastError();
  const std::string msg = absl::StrCat(std::string(what), ": ", cudaGetErrorName(err), " (",
                                       cudaGetErrorString(err), ")");
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInitializationError:
    case cudaErrorDevicesUnavailable:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

inline absl::Status CublasStatus(cublasStatus_t st, std::string_view what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg =
      absl::StrCat(std::string(what), ": ", cublasGetStatusName(st), " (",
                   cublasGetStatusString(st), ")");
  if (st == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  if (st == CUBLAS_STATUS_NOT_INITIALIZED) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

// The status of the last launch on this thread (clears it).
inline absl::Status LaunchStatus(std::string_view kernel) {
  return CudaStatus(cudaGetLastError(), kernel);
}

}  // namespace tierkv::kernels::cuda

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_CHECK_H_
