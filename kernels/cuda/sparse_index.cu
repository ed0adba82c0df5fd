// Sparse prefill index building on the GPU: the softmax sums of the vertical-slash estimate,
// top-k selection with CUB's segmented radix sort, and the conversion of lines to per-row-
// block lists (internal/sparse_index_launch.h says what each launcher needs). Every reduction
// runs in a fixed order, so the same inputs give the same bits.
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include "kernels/cuda/internal/sparse_index_launch.h"

namespace tierkv::kernels::cuda::internal {
namespace {

constexpr int kThreads = 256;
constexpr float kLog2e = 1.4426950408889634f;

// Row statistics of one head's score rows: grid (rows, heads). Row i (query position
// pos0 + i) sees keys [0, pos0 + i]; stats[h][i] = (max of scale * s, sum of exp(scale * s -
// max)), reduced in a fixed tree.
__global__ void __launch_bounds__(kThreads)
    RowStatsKernel(const float* scores, int64_t ld, int64_t head_stride, int64_t pos0,
                   float scale, float2* stats) {
  const int i = blockIdx.x;
  const int h = blockIdx.y;
  const float* row = scores + h * head_stride + static_cast<int64_t>(i) * ld;
  const int64_t visible = pos0 + i + 1;
  __shared__ float red[kThreads];
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < visible; j += kThreads) m = fmaxf(m, scale * row[j]);
  red[threadIdx.x] = m;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  m = red[0];
  __syncthreads();
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < visible; j += kThreads) {
    sum += exp2f((scale * row[j] - m) * kLog2e);
  }
  red[threadIdx.x] = sum;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) stats[static_cast<int64_t>(h) * gridDim.x + i] = make_float2(m, red[0]);
}

// Per key (grid.x over keys, grid.y heads) and per distance (the same threads): the softmax
// weight summed over the rows, rows in order.
__global__ void __launch_bounds__(kThreads)
    MassKernel(const float* scores, int64_t ld, int64_t head_stride, int rows, int64_t pos0,
               int64_t keys, float scale, const float2* stats, float* per_key,
               float* per_distance) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int h = blockIdx.y;
  if (j >= keys) return;
  const float* s = scores + h * head_stride;
  const float2* st = stats + static_cast<int64_t>(h) * rows;
  float by_key = 0.0f, by_distance = 0.0f;
  for (int i = 0; i < rows; ++i) {
    const int64_t pos = pos0 + i;
    const float2 ms = st[i];
    if (j <= pos) by_key += exp2f((scale * s[i * ld + j] - ms.x) * kLog2e) / ms.y;
    // Distance j: the key pos - j of row i.
    const int64_t key = pos - j;
    if (key >= 0) by_distance += exp2f((scale * s[i * ld + key] - ms.x) * kLog2e) / ms.y;
  }
  per_key[static_cast<int64_t>(h) * keys + j] = by_key;
  per_distance[static_cast<int64_t>(h) * keys + j] = by_distance;
}

// Sort input: forced indices get +infinity, NaN gets -infinity; values paired with indices.
__global__ void PrepareTopKernel(const float* values, int64_t n, int64_t total, int64_t keep,
                                 float* keys, int32_t* indices) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= total) return;
  const int64_t i = t % n;
  const float v = values[t];
  keys[t] = i < keep ? INFINITY : (isnan(v) ? -INFINITY : v);
  indices[t] = static_cast<int32_t>(i);
}

// The first `count` sorted indices of each segment, to be sorted ascending next.
__global__ void TakeTopKernel(const int32_t* sorted, int64_t n, int64_t count, int segments,
                              int32_t* out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= count * segments) return;
  const int64_t s = t / count, i = t % count;
  out[t] = sorted[s * n + i];
}

// Segment offsets s * step, s = 0 .. segments.
__global__ void OffsetsKernel(int64_t step, int segments, int64_t* offsets) {
  const int s = blockIdx.x * kThreads + threadIdx.x;
  if (s <= segments) offsets[s] = s * step;
}

struct IndexArgs {
  const int32_t* verticals;
  int64_t num_verticals;
  const int32_t* slashes;
  int64_t num_slashes;
  int64_t num_queries, query_position;
  int row_blocks;
  int key_blocks;  // Of the whole call: bits of the bitmap.
};

// Marks the key blocks row block r of head h reaches; returns nothing, leaves the bitmap in
// shared memory (key_blocks bits, zeroed by the caller).
__device__ void MarkBlocks(const IndexArgs& a, int h, int r, uint32_t* bits) {
  const int64_t first = a.query_position + static_cast<int64_t>(r) * 64;
  const int64_t last = a.query_position + min(a.num_queries, static_cast<int64_t>(r + 1) * 64) - 1;
  const int32_t* slashes = a.slashes + static_cast<int64_t>(h) * a.num_slashes;
  // Each thread takes a contiguous run of the (ascending) slashes: their block ranges move
  // down as the distance grows, so it merges touching ranges and marks each merged range
  // once. (One atomic per slash made thousands of threads hit the same few words.)
  auto mark = [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b <= hi; ++b) atomicOr(&bits[b / 32], 1u << (b % 32));
  };
  const int64_t per = (a.num_slashes + kThreads - 1) / kThreads;
  const int64_t t_end = min(a.num_slashes, (threadIdx.x + 1) * per);
  int64_t cur_lo = 0, cur_hi = -1;  // Pending merged range (empty while cur_hi < cur_lo).
  for (int64_t t = threadIdx.x * per; t < t_end; ++t) {
    const int64_t d = slashes[t];
    const int64_t hi = last - d;
    if (hi < 0) break;  // Later distances are larger still.
    const int64_t b_lo = (first - d > 0 ? first - d : 0) / 64, b_hi = hi / 64;
    if (cur_hi >= cur_lo && b_hi >= cur_lo - 1) {
      cur_lo = min(cur_lo, b_lo);
    } else {
      mark(cur_lo, cur_hi);
      cur_lo = b_lo;
      cur_hi = b_hi;
    }
  }
  mark(cur_lo, cur_hi);
  if (threadIdx.x == 0) {
    // The blocks of the row block's own positions (two when it starts inside a key block).
    const int64_t diagonal = last / 64, first_block = first / 64;
    atomicOr(&bits[diagonal / 32], 1u << (diagonal % 32));
    atomicOr(&bits[first_block / 32], 1u << (first_block % 32));
  }
  __syncthreads();
}

// Pass 1 (fill == false): counts of (h, r) into block_counts / column_counts. Pass 2: the
// lists at the scanned offsets. grid (row_blocks, heads); dynamic shared memory: the bitmap.
template <bool kFill>
__global__ void __launch_bounds__(kThreads)
    IndexKernel(IndexArgs a, int64_t* block_counts, int64_t* column_counts,
                const int64_t* block_offsets, const int64_t* column_offsets, int32_t* blocks,
                int32_t* columns) {
  extern __shared__ uint32_t bits[];
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int carry;
  const int r = blockIdx.x, h = blockIdx.y;
  const int64_t e = static_cast<int64_t>(h) * a.row_blocks + r;
  const int words = (a.key_blocks + 31) / 32;
  for (int w = threadIdx.x; w < words; w += kThreads) bits[w] = 0;
  __syncthreads();
  MarkBlocks(a, h, r, bits);
  const int64_t last = a.query_position + min(a.num_queries, static_cast<int64_t>(r + 1) * 64) - 1;
  // Blocks: words in order, each thread a word per round; a block scan of the bit counts.
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int base = 0; base < words; base += kThreads) {
    const int w = base + threadIdx.x;
    const uint32_t word = w < words ? bits[w] : 0u;
    int before = 0, total = 0;
    Scan(scan).ExclusiveSum(__popc(word), before, total);
    if (kFill) {
      int32_t* out = blocks + block_offsets[e] + carry + before;
      uint32_t rest = word;
      while (rest != 0) {
        const int bit = __ffs(rest) - 1;
        *out++ = w * 32 + bit;
        rest &= rest - 1;
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) carry += total;
    __syncthreads();
  }
  if (!kFill && threadIdx.x == 0) block_counts[e] = carry;
  __syncthreads();
  // Columns: verticals in order that this row block sees, outside its blocks.
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  const int32_t* verticals = a.verticals + static_cast<int64_t>(h) * a.num_verticals;
  for (int64_t base = 0; base < a.num_verticals; base += kThreads) {
    const int64_t t = base + threadIdx.x;
    int keep = 0;
    int32_t v = 0;
    if (t < a.num_verticals) {
      v = verticals[t];
      keep = v <= last && ((bits[(v / 64) / 32] >> ((v / 64) % 32)) & 1u) == 0;
    }
    int before = 0, total = 0;
    Scan(scan).ExclusiveSum(keep, before, total);
    if (kFill && keep) columns[column_offsets[e] + carry + before] = v;
    __syncthreads();
    if (threadIdx.x == 0) carry += total;
    __syncthreads();
  }
  if (!kFill && threadIdx.x == 0) column_counts[e] = carry;
}

unsigned Grid(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

cudaError_t LaunchRowStats(const float* scores, int64_t ld, int64_t head_stride, int rows,
                           int heads, int64_t pos0, float scale, float2* stats,
                           cudaStream_t stream) {
  RowStatsKernel<<<dim3(rows, heads), kThreads, 0, stream>>>(scores, ld, head_stride, pos0, scale,
                                                             stats);
  return cudaGetLastError();
}

cudaError_t LaunchMass(const float* scores, int64_t ld, int64_t head_stride, int rows, int heads,
                       int64_t pos0, int64_t keys, float scale, const float2* stats,
                       float* per_key, float* per_distance, cudaStream_t stream) {
  MassKernel<<<dim3(Grid(keys), heads), kThreads, 0, stream>>>(
      scores, ld, head_stride, rows, pos0, keys, scale, stats, per_key, per_distance);
  return cudaGetLastError();
}

size_t TopSortTempBytes(int64_t n, int segments) {
  size_t a = 0, b = 0;
  const int64_t total = n * segments;
  cub::DeviceSegmentedRadixSort::SortPairsDescending(
      nullptr, a, static_cast<const float*>(nullptr), static_cast<float*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), total, segments,
      static_cast<const int64_t*>(nullptr), static_cast<const int64_t*>(nullptr));
  cub::DeviceSegmentedRadixSort::SortKeys(nullptr, b, static_cast<const int32_t*>(nullptr),
                                          static_cast<int32_t*>(nullptr), total, segments,
                                          static_cast<const int64_t*>(nullptr),
                                          static_cast<const int64_t*>(nullptr));
  return a > b ? a : b;
}

cudaError_t LaunchTopIndices(const float* values, int64_t n, int segments, int64_t count,
                             int64_t keep, int32_t* out, const TopScratch& w,
                             cudaStream_t stream) {
  const int64_t total = n * segments;
  PrepareTopKernel<<<Grid(total), kThreads, 0, stream>>>(values, n, total, keep, w.keys,
                                                         w.indices);
  OffsetsKernel<<<Grid(segments + 1), kThreads, 0, stream>>>(n, segments, w.offsets);
  size_t temp = w.temp_bytes;
  cudaError_t err = cub::DeviceSegmentedRadixSort::SortPairsDescending(
      w.temp, temp, w.keys, w.keys_sorted, w.indices, w.indices_sorted, total, segments,
      w.offsets, w.offsets + 1, 0, 32, stream);
  if (err != cudaSuccess) return err;
  TakeTopKernel<<<Grid(count * segments), kThreads, 0, stream>>>(w.indices_sorted, n, count,
                                                                 segments, w.indices);
  OffsetsKernel<<<Grid(segments + 1), kThreads, 0, stream>>>(count, segments, w.offsets);
  temp = w.temp_bytes;
  err = cub::DeviceSegmentedRadixSort::SortKeys(w.temp, temp, w.indices, out, count * segments,
                                                segments, w.offsets, w.offsets + 1, 0, 32, stream);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

size_t ScanTempBytes(int64_t n) {
  size_t bytes = 0;
  cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const int64_t*>(nullptr),
                                static_cast<int64_t*>(nullptr), n);
  return bytes;
}

cudaError_t LaunchIndexCounts(const IndexLaunch& l, cudaStream_t stream) {
  IndexArgs a{l.verticals, l.num_verticals, l.slashes, l.num_slashes, l.num_queries,
              l.query_position, l.row_blocks, l.key_blocks};
  const size_t smem = static_cast<size_t>((l.key_blocks + 31) / 32) * 4;
  IndexKernel<false><<<dim3(l.row_blocks, l.heads), kThreads, smem, stream>>>(
      a, l.block_counts, l.column_counts, nullptr, nullptr, nullptr, nullptr);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // Offsets: exclusive sums over the counts plus one more entry, the total.
  const int64_t n = static_cast<int64_t>(l.row_blocks) * l.heads;
  size_t temp = l.scan_temp_bytes;
  err = cub::DeviceScan::ExclusiveSum(l.scan_temp, temp, l.block_counts, l.block_offsets, n + 1,
                                      stream);
  if (err != cudaSuccess) return err;
  temp = l.scan_temp_bytes;
  return cub::DeviceScan::ExclusiveSum(l.scan_temp, temp, l.column_counts, l.column_offsets,
                                       n + 1, stream);
}

cudaError_t LaunchIndexFill(const IndexLaunch& l, cudaStream_t stream) {
  IndexArgs a{l.verticals, l.num_verticals, l.slashes, l.num_slashes, l.num_queries,
              l.query_position, l.row_blocks, l.key_blocks};
  const size_t smem = static_cast<size_t>((l.key_blocks + 31) / 32) * 4;
  IndexKernel<true><<<dim3(l.row_blocks, l.heads), kThreads, smem, stream>>>(
      a, nullptr, nullptr, l.block_offsets, l.column_offsets, l.blocks, l.columns);
  return cudaGetLastError();
}

}  // namespace tierkv::kernels::cuda::internal
