// Launcher of the block checksum kernel (checksum.cu). Params are already checked by
// checksum.cc; this only enqueues the work and returns the launch error. No abseil (nor
// ops.h, which includes it) here: this header is also compiled by nvcc.
#ifndef TIERKV_KERNELS_CUDA_INTERNAL_CHECKSUM_LAUNCH_H_
#define TIERKV_KERNELS_CUDA_INTERNAL_CHECKSUM_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace tierkv::kernels::cuda::internal {

// out[i] = XXH3-64 (seed 0) of bytes [i * block_bytes, (i + 1) * block_bytes) of `data`, for
// i < num_blocks. Requires (checked by the caller): block_bytes > 240, 1 <= num_blocks
// <= 2^31 - 1, num_blocks * block_bytes representable, data and out non-null and 8-byte
// aligned. The load width follows the alignment: 16-byte loads when data and block_bytes
// are multiples of 16, 8-byte loads when they are multiples of 8, byte loads otherwise.
cudaError_t LaunchBlockChecksums(const void* data, size_t block_bytes, int64_t num_blocks,
                                 uint64_t* out, cudaStream_t stream);

// The same for blocks anywhere in device memory: block i starts at starts[i] (`starts` is a
// device array of num_blocks pointers, each a multiple of `alignment`, which picks the load
// width as data's address does above).
cudaError_t LaunchBlockChecksumsAt(const void* const* starts, size_t alignment,
                                   size_t block_bytes, int64_t num_blocks, uint64_t* out,
                                   cudaStream_t stream);

}  // namespace tierkv::kernels::cuda::internal

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_CHECKSUM_LAUNCH_H_
