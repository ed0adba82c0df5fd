// Sparse prefill index building on the GPU: the softmax sums of the vertical-slash estimate,
// top-k selection with CUB's segmented radix sort, the conversion of lines to per-row-block
// lists, the A-shape lists, and the block-sparse pooling, pooled scores and per-row top
// blocks (internal/sparse_index_launch.h says what each launcher needs). Every reduction
// runs in a fixed order, so the same inputs give the same bits; the block-sparse arithmetic
// is kernels::PooledBlockScores's, operation for operation (explicit __fadd_rn / __fdiv_rn /
// fmaf / __fmul_rn, so nvcc contracts nothing), which is what makes its selection equal the
// CPU reference's.
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/internal/bf16.cuh"
#include "kernels/cuda/internal/sparse_index_launch.h"

namespace tierkv::kernels::cuda::internal {
namespace {

constexpr int kThreads = 256;
constexpr float kLog2e = 1.4426950408889634f;

// Row statistics of one head's score rows: grid (rows, heads). Row i (query position
// pos0 + i) sees keys [0, pos0 + i]; stats[h][i] = (max of scale * s, sum of exp(scale * s -
// max)), in one pass (each thread keeps a running maximum and rescales its sum when it
// grows), the threads' pairs then combined in a fixed tree.
__global__ void __launch_bounds__(kThreads)
    RowStatsKernel(const float* scores, int64_t ld, int64_t head_stride, int64_t pos0,
                   float scale, float2* stats) {
  const int i = blockIdx.x;
  const int h = blockIdx.y;
  const float* row = scores + h * head_stride + static_cast<int64_t>(i) * ld;
  const int64_t visible = pos0 + i + 1;
  __shared__ float red_m[kThreads], red_s[kThreads];
  float m = -INFINITY, sum = 0.0f;
  for (int64_t j = threadIdx.x; j < visible; j += kThreads) {
    const float x = scale * row[j];
    if (x > m) {
      sum = sum * exp2f((m - x) * kLog2e) + 1.0f;
      m = x;
    } else {
      sum += exp2f((x - m) * kLog2e);
    }
  }
  red_m[threadIdx.x] = m;
  red_s[threadIdx.x] = sum;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const float m1 = red_m[threadIdx.x], m2 = red_m[threadIdx.x + s];
      const float mx = fmaxf(m1, m2);
      // A thread that saw no key holds (-inf, 0): it adds nothing (and no NaN).
      const float s1 = m1 == -INFINITY ? 0.0f : red_s[threadIdx.x] * exp2f((m1 - mx) * kLog2e);
      const float s2 =
          m2 == -INFINITY ? 0.0f : red_s[threadIdx.x + s] * exp2f((m2 - mx) * kLog2e);
      red_m[threadIdx.x] = mx;
      red_s[threadIdx.x] = s1 + s2;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    stats[static_cast<int64_t>(h) * gridDim.x + i] = make_float2(red_m[0], red_s[0]);
  }
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

// Sort keys of TopIndices: the segment in the high bits, then the value's rank in
// descending order (forced indices 0, before any value; NaN as -infinity; -0 as +0, so equal
// values stay equal); a stable ascending sort of them with the indices as payload puts each
// segment's chosen first, equal values by lower index.
__device__ __forceinline__ uint32_t DescendingRank(float v) {
  if (isnan(v)) v = -INFINITY;
  if (v == 0.0f) v = 0.0f;
  uint32_t u = __float_as_uint(v);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // Ascends with the value.
  return ~u;
}
__global__ void PrepareTopKernel(const float* values, int64_t n, int64_t total, int64_t keep,
                                 const int64_t* keeps, uint64_t* keys, int32_t* indices) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= total) return;
  const int64_t segment = t / n, i = t % n;
  const int64_t forced = keeps != nullptr ? keeps[segment] : keep;
  keys[t] = (static_cast<uint64_t>(segment) << 32) | (i < forced ? 0u : DescendingRank(values[t]));
  indices[t] = static_cast<int32_t>(i);
}

// The first `count` (or counts[segment]) sorted indices of each segment, keyed (segment,
// index) to be sorted ascending next; a segment's slots past its own count get INT32_MAX,
// which sorts after every index.
__global__ void TakeTopKernel(const int32_t* sorted, int64_t n, int64_t count,
                              const int64_t* counts, int segments, uint64_t* out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= count * segments) return;
  const int64_t segment = t / count, i = t % count;
  const int64_t mine = counts != nullptr ? counts[segment] : count;
  out[t] = (static_cast<uint64_t>(segment) << 32) |
           static_cast<uint32_t>(i < mine ? sorted[segment * n + i] : 0x7fffffff);
}

__global__ void UnpackTopKernel(const uint64_t* sorted, int64_t total, int32_t* out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t < total) out[t] = static_cast<int32_t>(sorted[t] & 0xffffffffu);
}

struct IndexArgs {
  const int32_t* verticals;
  int64_t num_verticals;
  const int2* runs;         // [heads][num_slashes]: merged slash runs (SlashRunsKernel).
  const int* run_counts;    // [heads]
  int64_t num_slashes;
  const int64_t* head_verticals;  // Null: num_verticals for every head.
  int64_t num_queries, query_position;
  int row_blocks;
  int key_blocks;  // Of the whole call: bits of the bitmap.
};

// The slashes of head blockIdx.x (ascending distances) as runs [d0, d1] of distances at
// most 64 apart. Every row block's key blocks from the run's slashes are then exactly those
// of keys [first - d1, last - d0]: between two slashes of a run lies a gap of keys shorter
// than a key block, so no block falls in it whole. Runs are what the conversion marks, once
// per row block (thousands of random slashes make a few runs; a recency band one).
constexpr int kRunThreads = 1024;
__global__ void __launch_bounds__(kRunThreads)
    SlashRunsKernel(const int32_t* slashes, int64_t num_slashes, const int64_t* head_slashes,
                    int2* runs, int* run_counts) {
  using Scan = cub::BlockScan<int, kRunThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int carry;
  const int h = blockIdx.x;
  const int32_t* d = slashes + static_cast<int64_t>(h) * num_slashes;
  int2* out = runs + static_cast<int64_t>(h) * num_slashes;
  const int64_t mine = head_slashes != nullptr ? head_slashes[h] : num_slashes;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < mine; base += kRunThreads) {
    const int64_t i = base + threadIdx.x;
    const bool in = i < mine;
    const bool starts = in && (i == 0 || d[i] - d[i - 1] > 64);
    int before = 0, total = 0;
    Scan(scan).ExclusiveSum(starts ? 1 : 0, before, total);
    // Run k starts at its first slash; it ends where the next starts (or at the last slash).
    if (starts) out[carry + before].x = d[i];
    const bool ends = in && (i + 1 == mine || d[i + 1] - d[i] > 64);
    if (ends) out[carry + before + (starts ? 1 : 0) - 1].y = d[i];
    __syncthreads();
    if (threadIdx.x == 0) carry += total;
    __syncthreads();
  }
  if (threadIdx.x == 0) run_counts[h] = carry;
}

// Marks the key blocks row block r of head h reaches; returns nothing, leaves the bitmap in
// shared memory (key_blocks bits, zeroed by the caller).
__device__ void MarkBlocks(const IndexArgs& a, int h, int r, uint32_t* bits) {
  const int64_t first = a.query_position + static_cast<int64_t>(r) * 64;
  const int64_t last = a.query_position + min(a.num_queries, static_cast<int64_t>(r + 1) * 64) - 1;
  const int2* runs = a.runs + static_cast<int64_t>(h) * a.num_slashes;
  const int n = a.run_counts[h];
  // Blocks lo .. hi, a word at a time.
  auto mark = [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo / 32; w <= hi / 32; ++w) {
      const int from = w == lo / 32 ? static_cast<int>(lo % 32) : 0;
      const int to = w == hi / 32 ? static_cast<int>(hi % 32) : 31;
      const uint32_t mask = (to == 31 ? ~0u : (2u << to) - 1u) & ~((1u << from) - 1u);
      atomicOr(&bits[w], mask);
    }
  };
  for (int k = threadIdx.x; k < n; k += kThreads) {
    const int2 run = runs[k];
    const int64_t hi = last - run.x;
    if (hi < 0) continue;  // Every slash of the run lies past this row block's keys.
    const int64_t lo = first - run.y > 0 ? first - run.y : 0;
    mark(lo / 64, hi / 64);
  }
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
  // Verticals ascend: the ones this row block sees are a prefix.
  int64_t visible = 0;
  {
    int64_t hi = a.head_verticals != nullptr ? a.head_verticals[h] : a.num_verticals;
    while (visible < hi) {
      const int64_t mid = (visible + hi) / 2;
      if (verticals[mid] <= last) {
        visible = mid + 1;
      } else {
        hi = mid;
      }
    }
  }
  for (int64_t base = 0; base < visible; base += kThreads) {
    const int64_t t = base + threadIdx.x;
    int keep = 0;
    int32_t v = 0;
    if (t < visible) {
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

// ---------------------------------------------------------------------------------------
// A-shape and block-sparse

__device__ __forceinline__ int64_t FirstPosition(const BlockShape& s, int r) {
  return s.query_position + static_cast<int64_t>(r) * 64;
}
__device__ __forceinline__ int64_t LastPosition(const BlockShape& s, int r) {
  return s.query_position + min(s.num_queries, static_cast<int64_t>(r) * 64 + 64) - 1;
}
__device__ __forceinline__ int Diagonal(const BlockShape& s, int r) {
  return static_cast<int>(LastPosition(s, r) / 64);
}

// The A-shape blocks of row block r are [0, init) and [local_from, diagonal]: key block b is
// in when 64 b < min(n_init, last + 1) (b < init) or 64 b + 64 > max(0, first - local + 1)
// (b >= local_from), as kernels::AShapeIndex tests it block by block. The list: [0, init),
// then [max(local_from, init), diagonal].
struct AShapeRows {
  int64_t init;
  int64_t second;  // First block of the second run.
  int64_t count;
};
__device__ AShapeRows AShapeOf(const BlockShape& s, int r, int64_t n_init, int64_t local) {
  const int64_t first = FirstPosition(s, r), last = LastPosition(s, r);
  const int64_t diagonal = last / 64;
  const int64_t init_end = min(n_init, last + 1);
  const int64_t init = (init_end + 63) / 64;  // <= diagonal + 1.
  const int64_t local_begin = max(int64_t{0}, first - local + 1);
  const int64_t local_from = local_begin / 64;  // <= diagonal.
  const int64_t second = max(local_from, init);
  return {init, second, init + (diagonal + 1 - second)};
}

__global__ void AShapeCountsKernel(BlockShape s, int heads, int64_t n_init, int64_t local,
                                   int64_t* counts) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t n = static_cast<int64_t>(heads) * s.row_blocks;
  if (e > n) return;
  counts[e] = e == n ? 0 : AShapeOf(s, static_cast<int>(e % s.row_blocks), n_init, local).count;
}

// grid (row_blocks, heads).
__global__ void AShapeFillKernel(BlockShape s, int64_t n_init, int64_t local,
                                 const int64_t* block_offsets, int32_t* blocks) {
  const int r = blockIdx.x, h = blockIdx.y;
  const AShapeRows a = AShapeOf(s, r, n_init, local);
  int32_t* out = blocks + block_offsets[static_cast<int64_t>(h) * s.row_blocks + r];
  for (int64_t i = threadIdx.x; i < a.count; i += blockDim.x) {
    out[i] = static_cast<int32_t>(i < a.init ? i : a.second + (i - a.init));
  }
}

// Blocks of row block r: its own (one, or two when it starts inside a key block) and as many
// more as top_blocks asks, within the visible diagonal + 1.
struct BudgetOfRow {
  int diagonal, first_block, forced, budget;
};
__device__ BudgetOfRow BudgetOf(const BlockShape& s, int r, int64_t top_blocks) {
  BudgetOfRow b;
  b.diagonal = Diagonal(s, r);
  b.first_block = static_cast<int>(FirstPosition(s, r) / 64);
  b.forced = b.first_block == b.diagonal ? 1 : 2;
  b.budget = static_cast<int>(min(max(top_blocks, static_cast<int64_t>(b.forced)),
                                  static_cast<int64_t>(b.diagonal) + 1));
  return b;
}

__global__ void BlockSparseCountsKernel(BlockShape s, int heads, int64_t top_blocks,
                                        int64_t* counts) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t n = static_cast<int64_t>(heads) * s.row_blocks;
  if (e > n) return;
  counts[e] = e == n ? 0 : BudgetOf(s, static_cast<int>(e % s.row_blocks), top_blocks).budget;
}

constexpr int kPoolThreads = 128;
constexpr int kPoolUnroll = 16;

// grid (blocks of 64 rows, heads). Each thread owns dimensions e, e + 128, ... and sums its
// column of the block's rows in order; the loads of kPoolUnroll rows go out together, the
// additions stay sequential.
__global__ void __launch_bounds__(kPoolThreads)
    MeanPoolKernel(const uint16_t* x, int64_t ld, int64_t rows, int head_dim, float* out) {
  const int blk = blockIdx.x, h = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blk) * 64;
  const int n = static_cast<int>(min(rows, row0 + 64) - row0);
  const uint16_t* base = x + row0 * ld + static_cast<int64_t>(h) * head_dim;
  float* dst = out + (static_cast<int64_t>(h) * gridDim.x + blk) * head_dim;
  for (int e = threadIdx.x; e < head_dim; e += kPoolThreads) {
    float sum = 0.0f;
    int i = 0;
    for (; i + kPoolUnroll <= n; i += kPoolUnroll) {
      float v[kPoolUnroll];
#pragma unroll
      for (int j = 0; j < kPoolUnroll; ++j) v[j] = Bf16BitsToFloat(base[(i + j) * ld + e]);
#pragma unroll
      for (int j = 0; j < kPoolUnroll; ++j) sum = __fadd_rn(sum, v[j]);
    }
    for (; i < n; ++i) sum = __fadd_rn(sum, Bf16BitsToFloat(base[i * ld + e]));
    dst[e] = __fdiv_rn(sum, static_cast<float>(n));
  }
}

constexpr int kScoreTile = 64;   // Row blocks x key blocks of a CTA.
constexpr int kScoreChunk = 16;  // Dimensions staged in shared memory at a time.
constexpr int kScorePad = kScoreTile + 4;

// grid (key tiles, row tiles, heads of the round), 256 threads, each a 4 x 4 patch of the
// 64 x 64 tile. Every score is one fmaf chain over e = 0 .. head_dim - 1 in order (chunks in
// order, dimensions in order within a chunk), then one multiply by scale.
__global__ void __launch_bounds__(kThreads)
    BlockScoresKernel(const float* qbar, const float* kbar, BlockShape s, int head0, int group,
                      int head_dim, float scale, bool write_invisible, float* scores) {
  const int hr = blockIdx.z, h = head0 + hr, g = h / group;
  const int r0 = blockIdx.y * kScoreTile, b0 = blockIdx.x * kScoreTile;
  const int r_end = min(s.row_blocks, r0 + kScoreTile);
  const int b_end = min(s.key_blocks, b0 + kScoreTile);
  float* out = scores + static_cast<int64_t>(hr) * s.row_blocks * s.key_blocks;
  const int t = threadIdx.x;
  if (b0 > Diagonal(s, r_end - 1)) {  // No row of the tile sees any of its key blocks.
    if (write_invisible) {
      for (int i = t; i < kScoreTile * kScoreTile; i += kThreads) {
        const int r = r0 + i / kScoreTile, b = b0 + i % kScoreTile;
        if (r < r_end && b < b_end) out[static_cast<int64_t>(r) * s.key_blocks + b] = -INFINITY;
      }
    }
    return;
  }
  __shared__ __align__(16) float qs[kScoreChunk][kScorePad];
  __shared__ __align__(16) float ks[kScoreChunk][kScorePad];
  const float* qa = qbar + static_cast<int64_t>(h) * s.row_blocks * head_dim;
  const float* ka = kbar + static_cast<int64_t>(g) * s.key_blocks * head_dim;
  const int tx = t % 16, ty = t / 16;
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  }
  for (int e0 = 0; e0 < head_dim; e0 += kScoreChunk) {
    for (int idx = t; idx < kScoreTile * kScoreChunk; idx += kThreads) {
      const int i = idx / kScoreChunk, e = idx % kScoreChunk;
      qs[e][i] = r0 + i < r_end ? qa[static_cast<int64_t>(r0 + i) * head_dim + e0 + e] : 0.0f;
      ks[e][i] = b0 + i < b_end ? ka[static_cast<int64_t>(b0 + i) * head_dim + e0 + e] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kScoreChunk; ++e) {
      const float4 a4 = *reinterpret_cast<const float4*>(&qs[e][ty * 4]);
      const float4 b4 = *reinterpret_cast<const float4*>(&ks[e][tx * 4]);
      const float a[4] = {a4.x, a4.y, a4.z, a4.w};
      const float b[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = r0 + ty * 4 + i;
    if (r >= r_end) continue;
    const int diagonal = Diagonal(s, r);
    float* row = out + static_cast<int64_t>(r) * s.key_blocks;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int b = b0 + tx * 4 + j;
      if (b < b_end) row[b] = b <= diagonal ? __fmul_rn(scale, acc[i][j]) : -INFINITY;
    }
  }
}

// A score as an unsigned key in the reference's order: larger key = better; -0 ranks as +0
// (they compare equal there); NaN below -infinity (NaN after every number).
__device__ __forceinline__ uint32_t OrderKey(float f) {
  if (isnan(f)) return 0u;
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) == 0) u = 0;
  return (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
}

constexpr int kCachedKeys = 4096;  // Rows up to this many blocks keep their keys in shared memory.

// grid (row_blocks, heads of the round), kThreads (= 256, one histogram bin each). The own
// blocks go in; of the others, the `more` best keys: an MSB-first radix select (four 8-bit
// digits) finds the key T of the more-th best and how many equal to T to take (`need`); then
// one pass in block order keeps keys above T and the first `need` equal to T, which is the
// reference's "equal scores by lower block", and writes the kept blocks in ascending order.
__global__ void __launch_bounds__(kThreads)
    SelectBlocksKernel(const float* scores, BlockShape s, int head0, int64_t top_blocks,
                       const int64_t* block_offsets, int32_t* blocks) {
  extern __shared__ uint32_t cache[];
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int hist[256];
  __shared__ int chosen_digit, chosen_rank;
  __shared__ int carry_equal, carry_out;
  const int r = blockIdx.x, hr = blockIdx.y, h = head0 + hr;
  const int t = threadIdx.x;
  const BudgetOfRow row_budget = BudgetOf(s, r, top_blocks);
  const int n = row_budget.diagonal + 1;
  const int first_block = row_budget.first_block, diagonal = row_budget.diagonal;
  const int more = row_budget.budget - row_budget.forced;
  int32_t* out = blocks + block_offsets[static_cast<int64_t>(h) * s.row_blocks + r];
  if (more == n - row_budget.forced) {  // Every visible block.
    for (int b = t; b < n; b += kThreads) out[b] = b;
    return;
  }
  if (more == 0) {  // Only its own (first_block < diagonal when there are two).
    if (t == 0) {
      out[0] = first_block;
      if (row_budget.forced == 2) out[1] = diagonal;
    }
    return;
  }
  const float* row = scores + static_cast<int64_t>(hr) * s.row_blocks * s.key_blocks +
                     static_cast<int64_t>(r) * s.key_blocks;
  const bool cached = n <= kCachedKeys;
  if (cached) {
    for (int b = t; b < n; b += kThreads) cache[b] = OrderKey(row[b]);
    __syncthreads();
  }
  auto key_of = [&](int b) { return cached ? cache[b] : OrderKey(row[b]); };
  auto own = [&](int b) { return b == first_block || b == diagonal; };
  uint32_t prefix = 0, mask = 0;
  int rank = more;  // 1-based rank of the wanted key among the others matching the prefix.
  for (int shift = 24; shift >= 0; shift -= 8) {
    hist[t] = 0;
    __syncthreads();
    for (int base = 0; base < n; base += kThreads) {  // Same trip count for every thread.
      const int b = base + t;
      int digit = 256;  // None.
      if (b < n && !own(b)) {
        const uint32_t u = key_of(b);
        if ((u & mask) == prefix) digit = static_cast<int>((u >> shift) & 255u);
      }
      // One atomic per distinct digit of the warp (equal scores would all hit one bin).
      const unsigned peers = __match_any_sync(0xffffffffu, digit);
      if (digit != 256 && (t & 31) == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
    }
    __syncthreads();
    // Thread t holds digit 255 - t: the inclusive sum counts keys with digits >= 255 - t.
    const int c = hist[255 - t];
    int inclusive = 0;
    Scan(scan).InclusiveSum(c, inclusive);
    if (inclusive - c < rank && rank <= inclusive) {
      chosen_digit = 255 - t;
      chosen_rank = rank - (inclusive - c);
    }
    __syncthreads();
    prefix |= static_cast<uint32_t>(chosen_digit) << shift;
    mask |= 255u << shift;
    rank = chosen_rank;
    __syncthreads();
  }
  const uint32_t threshold = prefix;
  const int need = rank;  // Keys equal to threshold to keep, lowest blocks first.
  if (t == 0) carry_equal = carry_out = 0;
  __syncthreads();
  for (int base = 0; base < n; base += kThreads) {
    const int b = base + t;
    bool forced = false, above = false, equal = false;
    if (b < n) {
      forced = own(b);
      if (!forced) {
        const uint32_t u = key_of(b);
        above = u > threshold;
        equal = u == threshold;
      }
    }
    int equal_before = 0, equal_total = 0;
    Scan(scan).ExclusiveSum(equal ? 1 : 0, equal_before, equal_total);
    const bool keep = forced || above || (equal && carry_equal + equal_before < need);
    __syncthreads();
    int before = 0, total = 0;
    Scan(scan).ExclusiveSum(keep ? 1 : 0, before, total);
    if (keep) out[carry_out + before] = b;
    __syncthreads();
    if (t == 0) {
      carry_equal += equal_total;
      carry_out += total;
    }
    __syncthreads();
  }
}

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

// Bits of the sort keys: 32 for the rank or index, enough above them for the segment.
int SortEndBit(int segments) {
  int bits = 0;
  while ((int64_t{1} << bits) < segments) ++bits;
  return 32 + bits;
}

size_t TopSortTempBytes(int64_t n, int segments) {
  size_t a = 0, b = 0;
  const int64_t total = n * segments;
  cub::DeviceRadixSort::SortPairs(nullptr, a, static_cast<const uint64_t*>(nullptr),
                                  static_cast<uint64_t*>(nullptr),
                                  static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), total, 0,
                                  SortEndBit(segments));
  cub::DeviceRadixSort::SortKeys(nullptr, b, static_cast<const uint64_t*>(nullptr),
                                 static_cast<uint64_t*>(nullptr), total, 0,
                                 SortEndBit(segments));
  return a > b ? a : b;
}

cudaError_t LaunchTopIndices(const float* values, int64_t n, int segments, int64_t count,
                             int64_t keep, int32_t* out, const TopScratch& w,
                             cudaStream_t stream) {
  // One radix sort over every segment at once (keys carry the segment): the whole device
  // works on it, where a segmented sort gives each segment one block.
  const int64_t total = n * segments;
  const int end_bit = SortEndBit(segments);
  PrepareTopKernel<<<Grid(total), kThreads, 0, stream>>>(values, n, total, keep, w.keeps,
                                                         w.keys, w.indices);
  size_t temp = w.temp_bytes;
  cudaError_t err = cub::DeviceRadixSort::SortPairs(w.temp, temp, w.keys, w.keys_sorted,
                                                    w.indices, w.indices_sorted, total, 0,
                                                    end_bit, stream);
  if (err != cudaSuccess) return err;
  TakeTopKernel<<<Grid(count * segments), kThreads, 0, stream>>>(w.indices_sorted, n, count,
                                                                 w.counts, segments, w.keys);
  temp = w.temp_bytes;
  err = cub::DeviceRadixSort::SortKeys(w.temp, temp, w.keys, w.keys_sorted, count * segments, 0,
                                       end_bit, stream);
  if (err != cudaSuccess) return err;
  UnpackTopKernel<<<Grid(count * segments), kThreads, 0, stream>>>(w.keys_sorted,
                                                                   count * segments, out);
  return cudaGetLastError();
}

size_t ScanTempBytes(int64_t n) {
  size_t bytes = 0;
  cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const int64_t*>(nullptr),
                                static_cast<int64_t*>(nullptr), n);
  return bytes;
}

cudaError_t LaunchIndexCounts(const IndexLaunch& l, cudaStream_t stream) {
  if (l.num_slashes > 0) {
    SlashRunsKernel<<<l.heads, kRunThreads, 0, stream>>>(l.slashes, l.num_slashes,
                                                         l.head_slashes, l.runs, l.run_counts);
  } else {
    cudaMemsetAsync(l.run_counts, 0, sizeof(int) * l.heads, stream);
  }
  IndexArgs a{l.verticals,     l.num_verticals,  l.runs,          l.run_counts,
              l.num_slashes,   l.head_verticals, l.num_queries,   l.query_position,
              l.row_blocks,    l.key_blocks};
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
  IndexArgs a{l.verticals,     l.num_verticals,  l.runs,          l.run_counts,
              l.num_slashes,   l.head_verticals, l.num_queries,   l.query_position,
              l.row_blocks,    l.key_blocks};
  const size_t smem = static_cast<size_t>((l.key_blocks + 31) / 32) * 4;
  IndexKernel<true><<<dim3(l.row_blocks, l.heads), kThreads, smem, stream>>>(
      a, nullptr, nullptr, l.block_offsets, l.column_offsets, l.blocks, l.columns);
  return cudaGetLastError();
}

cudaError_t LaunchOffsets(const int64_t* counts, int64_t n, int64_t* offsets, void* temp,
                          size_t temp_bytes, cudaStream_t stream) {
  size_t bytes = temp_bytes;
  return cub::DeviceScan::ExclusiveSum(temp, bytes, counts, offsets, n + 1, stream);
}

cudaError_t LaunchAShapeCounts(BlockShape s, int heads, int64_t n_init, int64_t local,
                               int64_t* counts, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(heads) * s.row_blocks;
  AShapeCountsKernel<<<Grid(n + 1), kThreads, 0, stream>>>(s, heads, n_init, local, counts);
  return cudaGetLastError();
}

cudaError_t LaunchAShapeFill(BlockShape s, int heads, int64_t n_init, int64_t local,
                             const int64_t* block_offsets, int32_t* blocks, cudaStream_t stream) {
  AShapeFillKernel<<<dim3(s.row_blocks, heads), 128, 0, stream>>>(s, n_init, local,
                                                                  block_offsets, blocks);
  return cudaGetLastError();
}

cudaError_t LaunchBlockSparseCounts(BlockShape s, int heads, int64_t top_blocks, int64_t* counts,
                                    cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(heads) * s.row_blocks;
  BlockSparseCountsKernel<<<Grid(n + 1), kThreads, 0, stream>>>(s, heads, top_blocks, counts);
  return cudaGetLastError();
}

cudaError_t LaunchMeanPool(const uint16_t* x, int64_t ld, int64_t rows, int heads, int head_dim,
                           float* out, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((rows + 63) / 64);
  MeanPoolKernel<<<dim3(blocks, heads), kPoolThreads, 0, stream>>>(x, ld, rows, head_dim, out);
  return cudaGetLastError();
}

cudaError_t LaunchBlockScores(const float* qbar, const float* kbar, BlockShape s, int head0,
                              int heads, int group, int head_dim, float scale,
                              bool write_invisible, float* scores, cudaStream_t stream) {
  const dim3 grid((s.key_blocks + kScoreTile - 1) / kScoreTile,
                  (s.row_blocks + kScoreTile - 1) / kScoreTile, heads);
  BlockScoresKernel<<<grid, kThreads, 0, stream>>>(qbar, kbar, s, head0, group, head_dim, scale,
                                                   write_invisible, scores);
  return cudaGetLastError();
}

cudaError_t LaunchSelectBlocks(const float* scores, BlockShape s, int head0, int heads,
                               int64_t top_blocks, const int64_t* block_offsets, int32_t* blocks,
                               cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(s.key_blocks < kCachedKeys ? s.key_blocks : kCachedKeys) *
                      sizeof(uint32_t);
  SelectBlocksKernel<<<dim3(s.row_blocks, heads), kThreads, smem, stream>>>(
      scores, s, head0, top_blocks, block_offsets, blocks);
  return cudaGetLastError();
}

}  // namespace tierkv::kernels::cuda::internal
