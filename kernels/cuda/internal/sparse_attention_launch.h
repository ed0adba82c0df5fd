// Launcher of the block-sparse prefill attention kernel (sparse_attention.cu). Params are
// already checked by sparse_attention.cc. No abseil here: nvcc compiles this header too.
#ifndef TIERKV_KERNELS_CUDA_INTERNAL_SPARSE_ATTENTION_LAUNCH_H_
#define TIERKV_KERNELS_CUDA_INTERNAL_SPARSE_ATTENTION_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tierkv::kernels::cuda::internal {

// By value into the kernel. Index in CSR over (q head, row block): entry head * row_blocks +
// r. Positions and key indices fit in int (sparse_attention.cc rejects 2^30 keys or more).
struct SparseArgs {
  const uint16_t* q;
  const uint16_t* k;
  const uint16_t* v;
  uint16_t* out;
  int64_t ldq, ldkv, ldo;
  int num_queries, query_position, num_keys;
  int num_q_heads, group, row_blocks;
  float scale_log2;
  const int64_t* block_offsets;
  const int32_t* blocks;
  const int64_t* column_offsets;
  const int32_t* columns;
  const uint8_t* skip_heads;  // Null, or one byte per q head: non-zero heads are skipped.
};

cudaError_t LaunchSparseAttention(const SparseArgs& a, int head_dim, cudaStream_t stream);

}  // namespace tierkv::kernels::cuda::internal

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_SPARSE_ATTENTION_LAUNCH_H_
