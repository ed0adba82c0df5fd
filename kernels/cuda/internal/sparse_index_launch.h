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

// Scratch of LaunchTopIndices, all device memory: keys / keys_sorted (n * segments floats),
// indices / indices_sorted (n * segments int32), offsets (segments + 1 int64), temp.
struct TopScratch {
  float* keys;
  float* keys_sorted;
  int32_t* indices;
  int32_t* indices_sorted;
  int64_t* offsets;
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

}  // namespace tierkv::kernels::cuda::internal

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_SPARSE_INDEX_LAUNCH_H_
