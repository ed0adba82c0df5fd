// Launchers of the elementwise and row kernels (elementwise.cu). Params are already checked
// by elementwise.cc; these only enqueue work and return the launch error.
#ifndef TIERKV_KERNELS_CUDA_INTERNAL_ELEMENTWISE_LAUNCH_H_
#define TIERKV_KERNELS_CUDA_INTERNAL_ELEMENTWISE_LAUNCH_H_

#include <cuda_runtime_api.h>

#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda::internal {

cudaError_t LaunchEmbedding(const EmbeddingParams& p, cudaStream_t stream);
cudaError_t LaunchRmsNorm(const RmsNormParams& p, cudaStream_t stream);
cudaError_t LaunchRopeQkv(const RopeQkvParams& p, cudaStream_t stream);
cudaError_t LaunchSwiGlu(const SwiGluParams& p, cudaStream_t stream);
cudaError_t LaunchF32ToBf16(const float* src, Bf16* dst, int64_t count, cudaStream_t stream);
cudaError_t LaunchBf16ToF32(const Bf16* src, float* dst, int64_t count, cudaStream_t stream);
cudaError_t LaunchFillSeeded(Bf16* dst, int64_t count, uint64_t key, uint64_t offset,
                             float scale, float shift, cudaStream_t stream);
cudaError_t LaunchArgMax(const ArgMaxParams& p, cudaStream_t stream);
// to_blocks: copy KV rows into p.blocks (cast to mutable) instead of the other way.
cudaError_t LaunchScatterKvBlocks(const ScatterKvBlocksParams& p, bool to_blocks,
                                  cudaStream_t stream);
// y[i][j] += bias[j] for i < m, j < n; y is bf16 when y_bf16 is set, else fp32.
cudaError_t LaunchAddBias(Bf16* y_bf16, float* y_f32, int64_t ldy, int64_t m, int64_t n,
                          const Bf16* bias, cudaStream_t stream);

}  // namespace tierkv::kernels::cuda::internal

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_ELEMENTWISE_LAUNCH_H_
