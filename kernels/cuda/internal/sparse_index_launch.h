// Launchers of the sparse index kernels (sparse_index.cu). Params are already checked by
// sparse_index.cc; these only enqueue work and return the launch error. No abseil here:
// nvcc compiles this header too.
#ifndef TIERKV_KERNELS_CUDA_INTERNAL_SPARSE_INDEX_LAUNCH_H_
#define TIERKV_KERNELS_CUDA_INTERNAL_SPARSE_INDEX_LAUNCH_H_

#include <cuda_runtime_api.h>
#include <vector_types.h>

#include <cstddef>
#include <cstdint>

namespace tierkv::kernels::cuda::internal {

// stats[h][i] = (max, sum of exp(x - max)) of scale * scores[h][i][0 .. pos0 + i], for rows
// i < rows of heads h < heads, rows `ld` floats apart and heads `head_stride` floats apart.
cudaError_t LaunchRowStats(const float* scores, int64_t ld, int64_t head_stride, int rows,
                           int heads, int64_t pos0, float scale, float2* stats,
                           cudaStream_t stream);
// per_key[h][j] and per_distance[h][j] for j < keys (arrays `keys` floats apart per head).
cudaError_t LaunchMass(const float* scores, int64_t ld, int64_t head_stride, int rows, int heads,
                       int64_t pos0, int64_t keys, float scale, const float2* stats,
                       float* per_key, float* per_distance, cudaStream_t stream);

// Scratch of LaunchTopIndices, all device memory: keys / keys_sorted (n * segments uint64),
// indices / indices_sorted (n * segments int32), temp.
struct TopScratch {
  uint64_t* keys;
  uint64_t* keys_sorted;
  int32_t* indices;
  int32_t* indices_sorted;
  // Per-segment count and keep (device memory), or null: the scalar ones for every segment.
  const int64_t* counts;
  const int64_t* keeps;
  void* temp;
  size_t temp_bytes;
};
size_t TopSortTempBytes(int64_t n, int segments);
cudaError_t LaunchTopIndices(const float* values, int64_t n, int segments, int64_t count,
                             int64_t keep, int32_t* out, const TopScratch& w, cudaStream_t stream);

struct IndexLaunch {
  const int32_t* verticals;
  int64_t num_verticals;
  const int32_t* slashes;
  int64_t num_slashes;
  int heads;
  int64_t num_queries, query_position;
  int row_blocks, key_blocks;
  // Scratch: the slashes merged into runs per head (heads * num_slashes) and their counts.
  int2* runs;
  int* run_counts;
  // Per-head line counts (device memory), or null: num_verticals / num_slashes for all.
  const int64_t* head_verticals;
  const int64_t* head_slashes;
  // Counts (heads * row_blocks + 1 entries each; the last is 0) and their exclusive sums.
  int64_t* block_counts;
  int64_t* column_counts;
  int64_t* block_offsets;
  int64_t* column_offsets;
  int32_t* blocks;
  int32_t* columns;
  void* scan_temp;
  size_t scan_temp_bytes;
};
size_t ScanTempBytes(int64_t n);
// Counts and offsets (the totals land in block_offsets[n] and column_offsets[n]).
cudaError_t LaunchIndexCounts(const IndexLaunch& l, cudaStream_t stream);
cudaError_t LaunchIndexFill(const IndexLaunch& l, cudaStream_t stream);

// offsets[i] = counts[0] + ... + counts[i - 1] for i <= n (n + 1 entries of each; the total
// lands in offsets[n] when counts[n] is 0). temp: ScanTempBytes(n + 1) bytes.
cudaError_t LaunchOffsets(const int64_t* counts, int64_t n, int64_t* offsets, void* temp,
                          size_t temp_bytes, cudaStream_t stream);

// Where a call's queries sit: row block r holds query rows [64 r, min(64 r + 64,
// num_queries)) at positions query_position + row; key blocks cover keys [0, query_position +
// num_queries). Row block r sees key blocks 0 .. (its last position) / 64.
struct BlockShape {
  int64_t num_queries;
  int64_t query_position;
  int row_blocks;
  int key_blocks;
};

// A-shape (kernels::AShapeIndex): counts[h * row_blocks + r] for every head (the same per
// head), and counts[heads * row_blocks] = 0; then the lists at block_offsets.
cudaError_t LaunchAShapeCounts(BlockShape s, int heads, int64_t n_init, int64_t local,
                               int64_t* counts, cudaStream_t stream);
cudaError_t LaunchAShapeFill(BlockShape s, int heads, int64_t n_init, int64_t local,
                             const int64_t* block_offsets, int32_t* blocks, cudaStream_t stream);

// Block-sparse: counts min(max(top_blocks, own blocks), visible blocks) per (head, row block),
// and 0 at counts[heads * row_blocks].
cudaError_t LaunchBlockSparseCounts(BlockShape s, int heads, int64_t top_blocks, int64_t* counts,
                                    cudaStream_t stream);
// out[h][blk][e] = (sum over rows i of block blk, in increasing i, of x[i][h][e]) / n, fp32,
// each addition and the division rounded to nearest (the rows of the block: [64 blk,
// min(64 blk + 64, rows))). x is bf16 [rows][heads][head_dim] with row stride ld; out is
// [heads][ceil(rows / 64)][head_dim].
cudaError_t LaunchMeanPool(const uint16_t* x, int64_t ld, int64_t rows, int heads, int head_dim,
                           float* out, cudaStream_t stream);
// scores[h - head0][r][b] for heads [head0, head0 + heads): scale * (fma chain over e of
// qbar[h][r][e] * kbar[h / group][b][e]) where b is visible from r, -infinity where it is not.
// Tiles of 64 x 64 wholly invisible are written only when write_invisible is set.
// head_dim: a multiple of 16.
cudaError_t LaunchBlockScores(const float* qbar, const float* kbar, BlockShape s, int head0,
                              int heads, int group, int head_dim, float scale,
                              bool write_invisible, float* scores, cudaStream_t stream);
// The blocks of (h, r) for heads [head0, head0 + heads) from their scores (laid out as
// LaunchBlockScores writes them), ascending, at blocks + block_offsets[h * row_blocks + r].
cudaError_t LaunchSelectBlocks(const float* scores, BlockShape s, int head0, int heads,
                               int64_t top_blocks, const int64_t* block_offsets, int32_t* blocks,
                               cudaStream_t stream);

}  // namespace tierkv::kernels::cuda::internal

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_SPARSE_INDEX_LAUNCH_H_
