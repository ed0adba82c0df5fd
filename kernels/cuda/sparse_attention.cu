// Block-sparse prefill attention on mma.sync tensor cores (the FlashAttention-2 loop of
// attention.cu, over a per-row-block list of key tiles instead of a range). One block: 64
// query rows (one row block of the index: 4 warps x 16 rows) of one q head. Its key tiles are
// the row block's key blocks (64 keys each, the diagonal one first) followed by its single
// columns gathered 64 at a time; the key index of every tile column is kept in shared memory
// beside the tile, so the causal mask (and the end of the last column tile) is applied per
// element where a tile can reach past a row's position. Everything else (cp.async ring,
// swizzled tiles, ldmatrix fragments, online softmax in base 2) is attention.cu's.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/internal/mma_sync.cuh"
#include "kernels/cuda/internal/sparse_attention_launch.h"

namespace tierkv::kernels::cuda::internal {
namespace {

constexpr int kWarps = 4;
constexpr int kBlockM = 64;  // = kWarps * 16: one row block.
constexpr int kBlockN = 64;  // Keys per tile: one key block.
constexpr int kStages = 2;
constexpr int kThreads = kWarps * 32;
constexpr int kNoKey = 0x7fffffff;  // Key index of an empty tile column: always masked.

template <int kHeadDim>
struct Smem {
  static constexpr int kChunks = kHeadDim / 8;
  static constexpr int kRowsPerPass = kThreads / kChunks;
  static constexpr int kQElems = kBlockM * kHeadDim;
  static constexpr int kKVElems = kBlockN * kHeadDim;
  // Q, then per stage K and V, then per stage the tile's key indices.
  static constexpr int kBytes = (kQElems + kStages * 2 * kKVElems) * 2 + kStages * kBlockN * 4;
};

template <int kHeadDim>
__global__ void __launch_bounds__(kThreads, 2) SparseAttentionKernel(SparseArgs a) {
  using S = Smem<kHeadDim>;
  constexpr int kNTiles = kBlockN / 8, kDTiles = kHeadDim / 8;
  constexpr int kChunks = S::kChunks, kRowsPerPass = S::kRowsPerPass;

  extern __shared__ __align__(128) uint16_t smem[];
  uint16_t* const sq = smem;
  uint16_t* const skv = smem + S::kQElems;
  int* const skeys = reinterpret_cast<int*>(skv + kStages * 2 * S::kKVElems);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Heaviest row blocks (the last) first.
  const int head = blockIdx.x % a.num_q_heads;
  if (a.skip_heads != nullptr && a.skip_heads[head] != 0) return;  // The whole block leaves.
  const int rb = a.row_blocks - 1 - static_cast<int>(blockIdx.x / a.num_q_heads);
  const int kv_head = head / a.group;
  const int row0 = rb * kBlockM;
  const int row_last = min(row0 + kBlockM, a.num_queries) - 1;
  const int pos_min = a.query_position + row0;
  const int64_t entry = static_cast<int64_t>(head) * a.row_blocks + rb;
  const int64_t b_begin = a.block_offsets[entry];
  const int nb = static_cast<int>(a.block_offsets[entry + 1] - b_begin);
  const int64_t c_begin = a.column_offsets[entry];
  const int nc = static_cast<int>(a.column_offsets[entry + 1] - c_begin);
  const int n_tiles = nb + (nc + kBlockN - 1) / kBlockN;
  (void)row_last;

  // Q tile (its own commit group, the first).
  const int ld_ch = tid % kChunks, ld_row = tid / kChunks;
#pragma unroll
  for (int j = 0; j < kBlockM / kRowsPerPass; ++j) {
    const int row = ld_row + j * kRowsPerPass;
    const int i = row0 + row;
    const bool ok = i < a.num_queries;
    const uint16_t* src = a.q + static_cast<int64_t>(ok ? i : 0) * a.ldq +
                          static_cast<int64_t>(head) * kHeadDim + ld_ch * 8;
    CpAsync16(SmemAddr(sq + Swz<kHeadDim>(row, ld_ch)), src, ok);
  }
  CpAsyncCommit();

  const uint16_t* const kbase = a.k + static_cast<int64_t>(kv_head) * kHeadDim + ld_ch * 8;
  const uint16_t* const vbase = a.v + static_cast<int64_t>(kv_head) * kHeadDim + ld_ch * 8;
  // Key of column `row` of tile `t`: block tiles visit the row block's blocks last to first
  // (the diagonal, which needs the mask, first); column tiles follow in order.
  auto key_of = [&](int t, int row) -> int {
    if (t < nb) return a.blocks[b_begin + nb - 1 - t] * kBlockN + row;
    const int c = (t - nb) * kBlockN + row;
    return c < nc ? a.columns[c_begin + c] : kNoKey;
  };
  auto load_kv = [&](int t, int stage) {
    uint16_t* dk = skv + stage * 2 * S::kKVElems;
    uint16_t* dv = dk + S::kKVElems;
#pragma unroll
    for (int j = 0; j < kBlockN / kRowsPerPass; ++j) {
      const int row = ld_row + j * kRowsPerPass;
      const int key = key_of(t, row);
      const bool ok = key < a.num_keys;
      const int64_t off = static_cast<int64_t>(ok ? key : 0) * a.ldkv;
      CpAsync16(SmemAddr(dk + Swz<kHeadDim>(row, ld_ch)), kbase + off, ok);
      CpAsync16(SmemAddr(dv + Swz<kHeadDim>(row, ld_ch)), vbase + off, ok);
    }
    if (tid < kBlockN) skeys[stage * kBlockN + tid] = key_of(t, tid);
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_tiles) load_kv(s, s);
    CpAsyncCommit();
  }

  const int wrow0 = warp * 16;
  const int my_row0 = row0 + wrow0 + (lane >> 2);

  float o[kDTiles][4];
  float m[2], l[2];
#pragma unroll
  for (int d = 0; d < kDTiles; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0;
  m[0] = m[1] = -INFINITY;
  l[0] = l[1] = 0;
  const float sl2 = a.scale_log2;

  constexpr int kRowBytes = kHeadDim * 2;
  uint32_t q_off[4], k_off[4], v_off[4];
  FragmentOffsets<kHeadDim>(SmemAddr(sq), wrow0, lane, q_off, k_off, v_off);
  auto frag = [&](const uint32_t (&off)[4], int rows, int c2) {
    return off[c2 & 3] + rows * kRowBytes + (c2 >> 2) * 128;
  };
  const uint32_t skv_addr = SmemAddr(skv);

  for (int it = 0; it < n_tiles; ++it) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();
    {
      const int next = it + kStages - 1;
      if (next < n_tiles) load_kv(next, next % kStages);
      CpAsyncCommit();
    }
    const int stage = it % kStages;
    const uint32_t tk = skv_addr + stage * (2 * S::kKVElems * 2);
    const uint32_t tv = tk + S::kKVElems * 2;
    uint32_t tk_off[4], tv_off[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) tk_off[j] = tk + k_off[j], tv_off[j] = tv + v_off[j];

    float s[kNTiles][4];
#pragma unroll
    for (int n = 0; n < kNTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0;
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      uint32_t qa[4];
      Ldmatrix4(qa, frag(q_off, 0, kk));
#pragma unroll
      for (int n2 = 0; n2 < kBlockN / 16; ++n2) {
        uint32_t b[4];
        Ldmatrix4(b, frag(tk_off, n2 * 16, kk));
        Mma(s[2 * n2], qa, b[0], b[1]);
        Mma(s[2 * n2 + 1], qa, b[2], b[3]);
      }
    }

    // Block tiles below every row's position need no mask; column tiles and tiles that reach
    // past the first row's position do.
    const bool need_mask = it >= nb || skeys[stage * kBlockN + kBlockN - 1] > pos_min;
    if (need_mask) {
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = skeys[stage * kBlockN + n * 8 + (lane & 3) * 2 + (e & 1)];
          const int pos = a.query_position + my_row0 + 8 * (e >> 1);
          if (key > pos) s[n][e] = -INFINITY;
        }
      }
    }

#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * h], s[n][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[h], mx);
      const float m_scaled = m_new == -INFINITY ? 0.0f : m_new * sl2;
      const float alpha = Exp2(m[h] * sl2 - m_scaled);
      m[h] = m_new;
      float sum = 0;
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
        for (int e = 2 * h; e < 2 * h + 2; ++e) {
          const float p = Exp2(fmaf(s[n][e], sl2, -m_scaled));
          s[n][e] = p;
          sum += p;
        }
      }
      l[h] = l[h] * alpha + sum;
#pragma unroll
      for (int d = 0; d < kDTiles; ++d) {
        o[d][2 * h] *= alpha;
        o[d][2 * h + 1] *= alpha;
      }
    }

#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = PackBf16(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = PackBf16(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = PackBf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = PackBf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int d2 = 0; d2 < kHeadDim / 16; ++d2) {
        uint32_t b[4];
        Ldmatrix4Trans(b, frag(tv_off, kk * 16, d2));
        Mma(o[2 * d2], pa, b[0], b[1]);
        Mma(o[2 * d2 + 1], pa, b[2], b[3]);
      }
    }
  }
  CpAsyncWait<0>();

  float inv[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = l[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    inv[h] = sum > 0 ? 1.0f / sum : 0.0f;
  }
  __syncwarp();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = wrow0 + (lane >> 2) + 8 * h;
#pragma unroll
    for (int d = 0; d < kDTiles; ++d) {
      *reinterpret_cast<uint32_t*>(sq + Swz<kHeadDim>(row, d) + (lane & 3) * 2) =
          PackBf16(o[d][2 * h] * inv[h], o[d][2 * h + 1] * inv[h]);
    }
  }
  __syncwarp();
#pragma unroll
  for (int c = lane; c < 16 * kChunks; c += 32) {
    const int row = wrow0 + c / kChunks, ch = c % kChunks;
    const int i = row0 + row;
    if (i < a.num_queries) {
      *reinterpret_cast<uint4*>(a.out + static_cast<int64_t>(i) * a.ldo +
                                static_cast<int64_t>(head) * kHeadDim + ch * 8) =
          *reinterpret_cast<const uint4*>(sq + Swz<kHeadDim>(row, ch));
    }
  }
}

template <int kHeadDim>
cudaError_t Launch(const SparseArgs& a, cudaStream_t stream) {
  auto* kernel = &SparseAttentionKernel<kHeadDim>;
  constexpr int kBytes = Smem<kHeadDim>::kBytes;
  if (cudaError_t e =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
      e != cudaSuccess) {
    return e;
  }
  const unsigned grid = static_cast<unsigned>(a.row_blocks) * a.num_q_heads;
  kernel<<<grid, kThreads, kBytes, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchSparseAttention(const SparseArgs& a, int head_dim, cudaStream_t stream) {
  if (a.num_queries <= 0) return cudaSuccess;
  return head_dim == 64 ? Launch<64>(a, stream) : Launch<128>(a, stream);
}

}  // namespace tierkv::kernels::cuda::internal
