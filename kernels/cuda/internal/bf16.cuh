// Device helpers shared by the .cu files of kernels/cuda: bf16 <-> fp32 conversions with the
// rounding of kernels/dtype.h, and 16-byte vector loads.
#ifndef TIERKV_KERNELS_CUDA_INTERNAL_BF16_CUH_
#define TIERKV_KERNELS_CUDA_INTERNAL_BF16_CUH_

#include <cuda_bf16.h>

#include <cstdint>

namespace tierkv::kernels::cuda {

__device__ __forceinline__ float Bf16BitsToFloat(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

// Round to nearest even; NaN stays a quiet NaN (kernels::FloatToBf16).
__device__ __forceinline__ uint16_t FloatToBf16Bits(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

}  // namespace tierkv::kernels::cuda

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_BF16_CUH_
