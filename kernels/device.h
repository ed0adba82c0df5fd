// Where a kernel runs. Today every kernel in kernels/ops.h is a CPU implementation taking a
// ThreadPool; CUDA versions will be declared next to them with the same Params structs
// (pointers then naming device memory) and a stream instead of a pool, so callers switch
// by Device without changing how they describe the work.
#ifndef TIERKV_KERNELS_DEVICE_H_
#define TIERKV_KERNELS_DEVICE_H_

#include <string_view>

namespace tierkv::kernels {

enum class Device {
  kCpu,   // kernels/ops.h with a ThreadPool.
  kCuda,  // Not built yet: asking for it gives UNIMPLEMENTED.
};

inline std::string_view DeviceName(Device device) {
  return device == Device::kCpu ? "cpu" : "cuda";
}

}  // namespace tierkv::kernels

#endif  // TIERKV_KERNELS_DEVICE_H_
