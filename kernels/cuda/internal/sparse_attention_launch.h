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

// Kernels of the sparse attention (SparseAttentionVariant picks one; kSparseAuto: the wgmma
// kernel where it runs, else mma.sync).
enum SparseVariant {
  kSparseAuto = -1,
  kSparseMmaSync = 0,  // sparse_attention.cu: one 64-row row block per block, any sm_80+.
  kSparseWgmmaS2 = 1,  // sparse_attention_wgmma.cu: two row blocks per block, 2 K/V stages.
  kSparseWgmmaS3 = 2,  // The same with 3 stages.
  kSparseVariants = 3,
};
const char* SparseVariantName(int variant);

// The mma.sync kernel (sparse_attention.cu).
cudaError_t LaunchSparseAttention(const SparseArgs& a, int head_dim, cudaStream_t stream);

// The wgmma kernel's workspace: the merged lists of each pair of row blocks, as long as the
// index's lists, and a count per (head, pair). SparseWorkspaceLayout carves them out of one
// allocation.
struct SparseWorkspace {
  uint32_t* merged_blocks = nullptr;
  uint32_t* merged_columns = nullptr;
  int* pair_blocks = nullptr;
  int64_t blocks_room = 0, columns_room = 0;  // Entries of merged_blocks / merged_columns.
};
struct SparseWorkspaceLayout {
  size_t blocks_offset, columns_offset, pairs_offset, tiles_offset, bytes;
};
inline SparseWorkspaceLayout LayOutSparseWorkspace(int64_t total_blocks, int64_t total_columns,
                                                   int num_q_heads, int64_t row_blocks) {
  auto up = [](size_t n) { return (n + 255) / 256 * 256; };
  SparseWorkspaceLayout l{};
  l.blocks_offset = 0;
  l.columns_offset = up(static_cast<size_t>(total_blocks) * 4);
  l.pairs_offset = l.columns_offset + up(static_cast<size_t>(total_columns) * 4);
  l.tiles_offset =
      l.pairs_offset + up(static_cast<size_t>(num_q_heads) * ((row_blocks + 1) / 2) * 4);
  l.bytes = l.tiles_offset + up(static_cast<size_t>(num_q_heads) * 8);  // Per-head tiles.
  return l;
}
// Whether the wgmma kernel takes these args (head_dim, alignment for the TMA, grid size).
bool SparseWgmmaSupports(const SparseArgs& a, int head_dim);
// The merge of LaunchSparseAttentionWgmma, then per head the 64 x 64 tiles its kernel would
// compute into tiles[num_q_heads] (device memory; 0 for skipped heads).
cudaError_t LaunchSparsePairTiles(const SparseArgs& a, const SparseWorkspace& ws,
                                  int64_t* tiles, cudaStream_t stream);
// cudaErrorNotSupported, with nothing enqueued, when the tensor maps cannot be built.
cudaError_t LaunchSparseAttentionWgmma(const SparseArgs& a, int head_dim, int variant,
                                       const SparseWorkspace& ws, cudaStream_t stream);

}  // namespace tierkv::kernels::cuda::internal

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_SPARSE_ATTENTION_LAUNCH_H_
