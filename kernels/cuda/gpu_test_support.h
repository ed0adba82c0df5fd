// For GPU tests: why there is no usable GPU here, and the skip every such test starts with.
#ifndef TIERKV_KERNELS_CUDA_GPU_TEST_SUPPORT_H_
#define TIERKV_KERNELS_CUDA_GPU_TEST_SUPPORT_H_

#include <string>

#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda {

// Empty when an sm_90 device is usable; otherwise what is missing, for the skip message.
inline std::string WhyNoGpu() {
  if (Available()) return "";
  absl::StatusOr<DeviceInfo> info = CurrentDevice();
  return info.ok() ? std::string(info->name) + " is not compute capability 9.0"
                   : info.status().ToString();
}

}  // namespace tierkv::kernels::cuda

// Skips the calling test (GTEST_SKIP, which ctest shows as skipped) without a usable GPU.
#define TIERKV_REQUIRE_GPU()                                                             \
  do {                                                                                   \
    const std::string why_no_gpu = ::tierkv::kernels::cuda::WhyNoGpu();                  \
    if (!why_no_gpu.empty()) GTEST_SKIP() << "no usable sm_90 CUDA device: " << why_no_gpu; \
  } while (0)

#endif  // TIERKV_KERNELS_CUDA_GPU_TEST_SUPPORT_H_
