// Attention kernels: a FlashAttention-2 style forward pass on Hopper's mma.sync tensor cores
// (bf16 operands, fp32 accumulators), used for decode (packed GQA rows and a key split) and
// for the prefills that the wgmma kernel of attention_wgmma.cu does not take. See
// internal/attention_launch.h for the paths.
//
// One block computes kBlockM rows (query, head) against a range of key tiles:
// - Q, K and V tiles come in by cp.async (16-byte, zero-filled past the end) into a
//   kStages-deep ring of shared-memory stages, so tile t+kStages-1 loads while t computes.
// - Shared-memory tiles are [rows][head_dim] bf16 with the 16-byte chunks of a row XORed by
//   the row's low 3 bits: the 8 row addresses of each ldmatrix phase then hit 8 distinct
//   bank groups (rows are 128 or 256 bytes, a multiple of the 32 banks).
// - Each warp owns kMTiles x 16 rows: S = Q K^T on mma.m16n8k16 with ldmatrix fragments,
//   online softmax in registers (row max / sum shared by the 4 lanes of a quad), P packed to
//   bf16 straight from the S accumulators into A fragments, O += P V with ldmatrix.trans.
// - Key tiles are visited last to first, so the causally masked tiles come first; only tiles
//   that cross a row's diagonal or window edge pay for the per-element mask.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/internal/attention_launch.h"
#include "kernels/cuda/internal/mma_sync.cuh"

namespace tierkv::kernels::cuda::internal {
namespace {

// Multiprocessors and shared memory per multiprocessor of an H100/H200 SXM. Constants rather
// than a device query so that the workspace size is a pure function of the params. Decode
// splits fill one wave of resident blocks: a second, partial wave cost 30% at 32K keys.
constexpr int64_t kMultiprocessors = 132;
constexpr int64_t kSmemPerMultiprocessor = 228 * 1024;  // 1 KB of it reserved per block.
// A split gets at least this many key tiles, so the combine pass stays small next to the
// split's own work on short contexts.
constexpr int64_t kMinTilesPerSplit = 4;
constexpr int64_t kMaxSplits = 256;
// Prefill on the wgmma + TMA kernel (attention_wgmma.cu) where it applies; false keeps every
// prefill on the mma.sync kernel below.
constexpr bool kUseWgmmaPrefill = true;

// Everything a block needs, by value (kernel parameter space). Positions and key indices
// fit in int: attention.cc rejects num_keys >= 2^30.
struct KernelArgs {
  const uint16_t* q;
  const uint16_t* k;
  const uint16_t* v;
  uint16_t* out;
  float* ws_o;    // [splits][num_queries][num_q_heads][head_dim] (splits > 1 only).
  float* ws_lse;  // [splits][num_queries][num_q_heads], log2 of each part's sum of exp.
  int64_t ldq, ldkv, ldo;
  int num_queries, query_position, num_keys, window;
  int num_q_heads, group;
  int pack;        // Rows per query in a block: 1 (prefill) or group (decode).
  int rows;        // num_queries * pack.
  int units;       // Blocks per row tile: q heads (prefill) or KV heads (decode).
  int num_m_tiles;
  int splits, tile_base, tiles_per_split;
  float scale_log2;  // scale * log2(e): softmax in base 2 (ex2.approx).
};


template <int kHeadDim_, int kWarps_, int kMTiles_, int kBlockN_, int kStages_, bool kQRegs_,
          int kMinBlocks_>
struct Cfg {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kMTiles = kMTiles_;  // 16-row MMA tiles per warp.
  static constexpr int kBlockN = kBlockN_;  // Keys per tile.
  static constexpr int kStages = kStages_;
  static constexpr bool kQRegs = kQRegs_;  // Q fragments loaded once into registers.
  static constexpr int kMinBlocks = kMinBlocks_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = kWarps * kMTiles * 16;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row.
  static constexpr int kRowsPerPass = kThreads / kChunks;
  static constexpr int kQElems = kBlockM * kHeadDim;
  static constexpr int kKVElems = kBlockN * kHeadDim;
  static constexpr int kSmemBytes = (kQElems + kStages * 2 * kKVElems) * 2;
  static_assert(kHeadDim == 64 || kHeadDim == 128);
  static_assert(kThreads % kChunks == 0 && kBlockN % kRowsPerPass == 0 &&
                kBlockM % kRowsPerPass == 0);
  static_assert(kBlockN % 16 == 0 && kStages >= 2);
};

template <class C>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) AttentionKernel(KernelArgs a) {
  constexpr int kHeadDim = C::kHeadDim, kBlockM = C::kBlockM, kBlockN = C::kBlockN;
  constexpr int kMTiles = C::kMTiles, kNTiles = kBlockN / 8, kDTiles = kHeadDim / 8;
  constexpr int kStages = C::kStages, kChunks = C::kChunks, kRowsPerPass = C::kRowsPerPass;

  extern __shared__ __align__(128) uint16_t smem[];
  uint16_t* const sq = smem;
  uint16_t* const skv = smem + C::kQElems;  // Stage s: K at s * 2 * kKVElems, then V.

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Heaviest row tiles first: the block scheduler hands out blocks in index order, and under
  // the causal mask the last query tile has the most keys.
  const int unit = blockIdx.x % a.units;
  const int m_tile = a.num_m_tiles - 1 - static_cast<int>(blockIdx.x / a.units);
  const int split = blockIdx.y;
  const int head_base = a.pack == 1 ? unit : unit * a.group;
  const int kv_head = head_base / a.group;
  const int row0 = m_tile * kBlockM;
  const int row_last = min(row0 + kBlockM, a.rows) - 1;
  const int pos_min = a.query_position + row0 / a.pack;
  const int pos_max = a.query_position + row_last / a.pack;
  int t_begin = a.window > 0 ? max(0, pos_min - a.window + 1) / kBlockN : 0;
  int t_end = pos_max / kBlockN + 1;
  if (a.splits > 1) {
    const int s0 = a.tile_base + split * a.tiles_per_split;
    t_begin = max(t_begin, s0);
    t_end = min(t_end, s0 + a.tiles_per_split);
  }
  const int n_tiles = max(0, t_end - t_begin);

  // Q tile (its own commit group, the first).
  const int ld_ch = tid % kChunks, ld_row = tid / kChunks;
#pragma unroll
  for (int j = 0; j < kBlockM / kRowsPerPass; ++j) {
    const int row = ld_row + j * kRowsPerPass;
    const int i = row0 + row;
    const bool ok = i < a.rows;
    const int r = ok ? i / a.pack : 0;
    const int hq = head_base + (ok ? i % a.pack : 0);
    const uint16_t* src =
        a.q + static_cast<int64_t>(r) * a.ldq + hq * kHeadDim + ld_ch * 8;
    CpAsync16(SmemAddr(sq + Swz<kHeadDim>(row, ld_ch)), src, ok);
  }
  CpAsyncCommit();

  const uint16_t* const kbase = a.k + kv_head * kHeadDim + ld_ch * 8;
  const uint16_t* const vbase = a.v + kv_head * kHeadDim + ld_ch * 8;
  const int64_t pass_stride = static_cast<int64_t>(kRowsPerPass) * a.ldkv;
  auto load_kv = [&](int tile, int stage) {
    uint16_t* dk = skv + stage * 2 * C::kKVElems;
    uint16_t* dv = dk + C::kKVElems;
    const int key0 = tile * kBlockN + ld_row;
    int64_t off = static_cast<int64_t>(key0) * a.ldkv;
#pragma unroll
    for (int j = 0; j < kBlockN / kRowsPerPass; ++j, off += pass_stride) {
      const int row = ld_row + j * kRowsPerPass;
      // Rows past the end read row 0 (any valid address) with zero bytes copied.
      const bool ok = key0 + j * kRowsPerPass < a.num_keys;
      CpAsync16(SmemAddr(dk + Swz<kHeadDim>(row, ld_ch)), kbase + (ok ? off : 0), ok);
      CpAsync16(SmemAddr(dv + Swz<kHeadDim>(row, ld_ch)), vbase + (ok ? off : 0), ok);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_tiles) load_kv(t_end - 1 - s, s);
    CpAsyncCommit();  // Always, so the group count per iteration stays fixed.
  }

  // This thread's rows: (mt, h) is row wrow0 + mt * 16 + lane / 4 + 8 h of the block.
  const int wrow0 = warp * kMTiles * 16;
  const int my_row0 = row0 + wrow0 + (lane >> 2);

  float o[kMTiles][kDTiles][4];
  float m[kMTiles][2], l[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int d = 0; d < kDTiles; ++d) o[mt][d][0] = o[mt][d][1] = o[mt][d][2] = o[mt][d][3] = 0;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0;
  }
  const float sl2 = a.scale_log2;

  // ldmatrix addresses from four lane-constant offsets per operand (FragmentOffsets); left to
  // itself the compiler kept one register per unrolled address and spilled.
  constexpr int kRowBytes = kHeadDim * 2;
  uint32_t q_off[4], k_off[4], v_off[4];
  FragmentOffsets<kHeadDim>(SmemAddr(sq), wrow0, lane, q_off, k_off, v_off);
  // Byte address of 16-byte chunk pair step `c2` (chunks 2 c2, 2 c2 + 1) at row offset
  // `rows` (a multiple of 16) from offsets `off`.
  auto frag = [&](const uint32_t (&off)[4], int rows, int c2) {
    return off[c2 & 3] + rows * kRowBytes + (c2 >> 2) * 128;
  };
  const uint32_t skv_addr = SmemAddr(skv);

  [[maybe_unused]] uint32_t qf[C::kQRegs ? kHeadDim / 16 : 1][kMTiles][4];

  for (int it = 0; it < n_tiles; ++it) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();
    {
      const int next = it + kStages - 1;
      if (next < n_tiles) load_kv(t_end - 1 - next, next % kStages);
      CpAsyncCommit();
    }
    if constexpr (C::kQRegs) {
      if (it == 0) {
#pragma unroll
        for (int kk = 0; kk < kHeadDim / 16; ++kk) {
#pragma unroll
          for (int mt = 0; mt < kMTiles; ++mt) Ldmatrix4(qf[kk][mt], frag(q_off, mt * 16, kk));
        }
      }
    }
    const int tile = t_end - 1 - it;
    const uint32_t tk = skv_addr + (it % kStages) * (2 * C::kKVElems * 2);
    const uint32_t tv = tk + C::kKVElems * 2;
    uint32_t tk_off[4], tv_off[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) tk_off[j] = tk + k_off[j], tv_off[j] = tv + v_off[j];

    float s[kMTiles][kNTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int n = 0; n < kNTiles; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0;
    }
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      uint32_t qa[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        if constexpr (C::kQRegs) {
#pragma unroll
          for (int x = 0; x < 4; ++x) qa[mt][x] = qf[kk][mt][x];
        } else {
          Ldmatrix4(qa[mt], frag(q_off, mt * 16, kk));
        }
      }
#pragma unroll
      for (int n2 = 0; n2 < kBlockN / 16; ++n2) {
        uint32_t b[4];
        Ldmatrix4(b, frag(tk_off, n2 * 16, kk));
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          Mma(s[mt][2 * n2], qa[mt], b[0], b[1]);
          Mma(s[mt][2 * n2 + 1], qa[mt], b[2], b[3]);
        }
      }
    }

    // Mask only tiles that cross some row's diagonal or window edge (block-uniform test).
    const int n0 = tile * kBlockN;
    const bool need_mask = n0 + kBlockN - 1 > pos_min ||
                           (a.window > 0 && n0 < pos_max - a.window + 1);
    if (need_mask) {
      const int window = a.window > 0 ? a.window : 1 << 30;  // key < pos - window + 1.
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = n0 + n * 8 + (lane & 3) * 2 + (e & 1);
            // Recomputed rather than kept: registers are the scarce resource of this loop.
            const int pos = a.query_position + (my_row0 + mt * 16 + 8 * (e >> 1)) / a.pack;
            if (key > pos || key <= pos - window) s[mt][n][e] = -INFINITY;
          }
        }
      }
    }

    // Online softmax. A row whose keys in this tile are all masked keeps m = -inf; m_scaled
    // is then 0 so that exp2(-inf - 0) = 0 instead of NaN.
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
          mx = fmaxf(mx, fmaxf(s[mt][n][2 * h], s[mt][n][2 * h + 1]));
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[mt][h], mx);
        const float m_scaled = m_new == -INFINITY ? 0.0f : m_new * sl2;
        const float alpha = Exp2(m[mt][h] * sl2 - m_scaled);
        m[mt][h] = m_new;
        float sum = 0;
#pragma unroll
        for (int n = 0; n < kNTiles; ++n) {
#pragma unroll
          for (int e = 2 * h; e < 2 * h + 2; ++e) {
            const float p = Exp2(fmaf(s[mt][n][e], sl2, -m_scaled));
            s[mt][n][e] = p;
            sum += p;
          }
        }
        l[mt][h] = l[mt][h] * alpha + sum;  // Per-lane partial; the quad sums at the end.
#pragma unroll
        for (int d = 0; d < kDTiles; ++d) {
          o[mt][d][2 * h] *= alpha;
          o[mt][d][2 * h + 1] *= alpha;
        }
      }
    }

    // O += P V: the S accumulators of key tiles 2kk and 2kk+1 are the A fragment of step kk.
    // (Packing all of P before the loop instead measured no fewer spills.)
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t pa[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        pa[mt][0] = PackBf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = PackBf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = PackBf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = PackBf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int d2 = 0; d2 < kHeadDim / 16; ++d2) {
        uint32_t b[4];
        Ldmatrix4Trans(b, frag(tv_off, kk * 16, d2));
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          Mma(o[mt][2 * d2], pa[mt], b[0], b[1]);
          Mma(o[mt][2 * d2 + 1], pa[mt], b[2], b[3]);
        }
      }
    }
  }
  CpAsyncWait<0>();  // Nothing may land in shared memory after the block moves on.

  float inv[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float sum = l[mt][h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      l[mt][h] = sum;
      inv[mt][h] = sum > 0 ? 1.0f / sum : 0.0f;  // 0: no key of this split (partials only).
    }
  }

  if (a.splits == 1) {
    // Through this warp's own Q rows in shared memory (no other warp reads them), so the
    // global stores are whole 16-byte chunks.
    __syncwarp();
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = wrow0 + mt * 16 + (lane >> 2) + 8 * h;
#pragma unroll
        for (int d = 0; d < kDTiles; ++d) {
          *reinterpret_cast<uint32_t*>(sq + Swz<kHeadDim>(row, d) + (lane & 3) * 2) =
              PackBf16(o[mt][d][2 * h] * inv[mt][h], o[mt][d][2 * h + 1] * inv[mt][h]);
        }
      }
    }
    __syncwarp();
#pragma unroll
    for (int c = lane; c < kMTiles * 16 * kChunks; c += 32) {
      const int row = wrow0 + c / kChunks, ch = c % kChunks;
      const int i = row0 + row;
      if (i < a.rows) {
        const int r = i / a.pack, hq = head_base + i % a.pack;
        *reinterpret_cast<uint4*>(a.out + static_cast<int64_t>(r) * a.ldo + hq * kHeadDim +
                                  ch * 8) =
            *reinterpret_cast<const uint4*>(sq + Swz<kHeadDim>(row, ch));
      }
    }
  } else {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int i = row0 + wrow0 + mt * 16 + (lane >> 2) + 8 * h;
        if (i >= a.rows) continue;
        const int r = i / a.pack, hq = head_base + i % a.pack;
        const int64_t idx =
            (static_cast<int64_t>(split) * a.num_queries + r) * a.num_q_heads + hq;
        float* dst = a.ws_o + idx * kHeadDim + (lane & 3) * 2;
#pragma unroll
        for (int d = 0; d < kDTiles; ++d) {
          *reinterpret_cast<float2*>(dst + d * 8) =
              make_float2(o[mt][d][2 * h] * inv[mt][h], o[mt][d][2 * h + 1] * inv[mt][h]);
        }
        if ((lane & 3) == 0) {
          a.ws_lse[idx] = l[mt][h] > 0 ? m[mt][h] * sl2 + __log2f(l[mt][h]) : -INFINITY;
        }
      }
    }
  }
}

// Merges the splits of one (query, q head) row per warp: out = sum_s w_s o_s / sum_s w_s with
// w_s = 2^(lse_s - max lse). Empty splits have lse = -inf and weigh nothing.
template <int kHeadDim>
__global__ void __launch_bounds__(128) CombineKernel(KernelArgs a) {
  constexpr int kPerLane = kHeadDim / 32;
  const int lane = threadIdx.x & 31;
  const int64_t row_count = static_cast<int64_t>(a.num_queries) * a.num_q_heads;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (idx >= row_count) return;
  float mx = -INFINITY;
  for (int s = lane; s < a.splits; s += 32) mx = fmaxf(mx, a.ws_lse[s * row_count + idx]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float acc[kPerLane] = {};
  float total = 0;
  for (int s = 0; s < a.splits; ++s) {
    const float w = Exp2(a.ws_lse[s * row_count + idx] - mx);
    total += w;
    const float* src = a.ws_o + (s * row_count + idx) * kHeadDim + lane * kPerLane;
    if constexpr (kPerLane == 4) {
      const float4 x = *reinterpret_cast<const float4*>(src);
      acc[0] += w * x.x, acc[1] += w * x.y, acc[2] += w * x.z, acc[3] += w * x.w;
    } else {
      const float2 x = *reinterpret_cast<const float2*>(src);
      acc[0] += w * x.x, acc[1] += w * x.y;
    }
  }
  const int64_t r = idx / a.num_q_heads;
  const int hq = static_cast<int>(idx % a.num_q_heads);
  uint16_t* dst = a.out + r * a.ldo + hq * kHeadDim + lane * kPerLane;
  const float inv = 1.0f / total;
  if constexpr (kPerLane == 4) {
    *reinterpret_cast<uint2*>(dst) =
        make_uint2(PackBf16(acc[0] * inv, acc[1] * inv), PackBf16(acc[2] * inv, acc[3] * inv));
  } else {
    *reinterpret_cast<uint32_t*>(dst) = PackBf16(acc[0] * inv, acc[1] * inv);
  }
}

// The configurations (see PrefillVariant). Register caps: 4-warp prefill tiles may use 255
// registers per thread at 2 blocks per multiprocessor (shared memory allows 2); the 8-warp
// tile must fit 128 to get 2 blocks.
template <int D> using PrefillW4N64 = Cfg<D, 4, 2, 64, 2, false, 2>;
template <int D> using PrefillW8N64 = Cfg<D, 8, 1, 64, 2, false, 2>;
template <int D> using PrefillW4N32 = Cfg<D, 4, 2, 32, 3, false, 2>;
// Decode: one warp for up to 16 packed rows (the usual 1 query x group 4..8), 4 warps for up
// to 64; small key tiles and deep pipelines, as the work is a stream over K and V.
template <int D> using DecodeW1 = Cfg<D, 1, 1, 32, 4, true, 3>;
template <int D> using DecodeW4 = Cfg<D, 4, 1, 64, 3, true, 2>;

template <class C>
cudaError_t LaunchMain(KernelArgs a, int splits, cudaStream_t stream) {
  auto* kernel = &AttentionKernel<C>;
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           C::kSmemBytes);
      e != cudaSuccess) {
    return e;
  }
  a.num_m_tiles = (a.rows + C::kBlockM - 1) / C::kBlockM;
  const dim3 grid(static_cast<unsigned>(a.num_m_tiles) * a.units, splits);
  kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

template <int D>
cudaError_t LaunchForHeadDim(KernelArgs a, const AttentionPlan& plan, int variant,
                             cudaStream_t stream) {
  if (!plan.decode) {
    a.pack = 1;
    a.units = a.num_q_heads;
    a.rows = a.num_queries;
    switch (variant) {
      case kPrefillM128N64W8:
        return LaunchMain<PrefillW8N64<D>>(a, 1, stream);
      case kPrefillM128N32W4:
        return LaunchMain<PrefillW4N32<D>>(a, 1, stream);
      default:
        return LaunchMain<PrefillW4N64<D>>(a, 1, stream);
    }
  }
  a.pack = a.group;
  a.units = a.num_q_heads / a.group;
  a.rows = a.num_queries * a.group;
  cudaError_t e = plan.key_tile == DecodeW1<D>::kBlockN && a.rows <= DecodeW1<D>::kBlockM
                      ? LaunchMain<DecodeW1<D>>(a, plan.splits, stream)
                      : LaunchMain<DecodeW4<D>>(a, plan.splits, stream);
  if (e != cudaSuccess || plan.splits == 1) return e;
  const int64_t row_count = static_cast<int64_t>(a.num_queries) * a.num_q_heads;
  CombineKernel<D><<<static_cast<unsigned>((row_count + 3) / 4), 128, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

const char* PrefillVariantName(int variant) {
  switch (variant) {
    case kPrefillM128N64W4:
      return "m128n64w4";
    case kPrefillM128N64W8:
      return "m128n64w8";
    case kPrefillM128N32W4:
      return "m128n32w4";
    case kPrefillWgmmaS2:
      return "wgmma_s2";
    case kPrefillWgmmaS3:
      return "wgmma_s3";
    case kPrefillWgmmaM192:
      return "wgmma_m192";
    default:
      return "auto";
  }
}

AttentionPlan PlanAttention(const AttentionProblem& p) {
  AttentionPlan plan;
  if (p.num_queries <= 0 || p.num_kv_heads <= 0) return plan;
  plan.decode = p.num_queries <= kDecodeMaxQueries;
  if (!plan.decode) return plan;
  const int64_t group = p.num_q_heads / p.num_kv_heads;
  const int64_t rows = p.num_queries * group;
  // Same rule as LaunchForHeadDim: one warp (32-key tiles) when the packed rows fit 16.
  const bool one_warp = rows <= 16;
  plan.key_tile = one_warp ? 32 : 64;
  const int64_t block_rows = one_warp ? 16 : 64;
  const int64_t row_tiles = (rows + block_rows - 1) / block_rows;
  const int64_t pos_min = p.query_position;
  const int64_t pos_max = p.query_position + p.num_queries - 1;
  const int64_t first =
      p.sliding_window > 0 ? std::max<int64_t>(0, pos_min - p.sliding_window + 1) : 0;
  const int64_t t0 = first / plan.key_tile;
  const int64_t tiles = pos_max / plan.key_tile + 1 - t0;
  const int64_t blocks = p.num_kv_heads * row_tiles;
  const int64_t smem = p.head_dim == 64
                           ? (one_warp ? DecodeW1<64>::kSmemBytes : DecodeW4<64>::kSmemBytes)
                           : (one_warp ? DecodeW1<128>::kSmemBytes : DecodeW4<128>::kSmemBytes);
  const int64_t resident = kMultiprocessors * (kSmemPerMultiprocessor / (smem + 1024));
  int64_t splits = resident / blocks;
  splits = std::min(splits, (tiles + kMinTilesPerSplit - 1) / kMinTilesPerSplit);
  splits = std::clamp<int64_t>(splits, 1, kMaxSplits);
  const int64_t per_split = (tiles + splits - 1) / splits;
  splits = (tiles + per_split - 1) / per_split;  // No empty trailing splits.
  plan.splits = static_cast<int>(splits);
  plan.tile_base = t0;
  plan.tiles_per_split = per_split;
  if (splits > 1) {
    plan.workspace_bytes = static_cast<size_t>(splits) * p.num_queries * p.num_q_heads *
                           (p.head_dim + 1) * sizeof(float);
  }
  return plan;
}

cudaError_t LaunchAttention(const AttentionProblem& p, const AttentionPlan& plan, int variant,
                            cudaStream_t stream) {
  if (p.num_queries <= 0) return cudaSuccess;
  if (!plan.decode && (variant == kPrefillAuto ? kUseWgmmaPrefill : IsWgmmaVariant(variant)) &&
      WgmmaPrefillSupports(p)) {
    const cudaError_t e = LaunchPrefillWgmma(p, variant, stream);
    if (e != cudaErrorNotSupported) return e;  // Otherwise no tensor maps: mma.sync below.
    variant = kPrefillAuto;
  }
  KernelArgs a{};
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.out = p.out;
  a.ldq = p.ldq;
  a.ldkv = p.ldkv;
  a.ldo = p.ldo;
  a.num_queries = static_cast<int>(p.num_queries);
  a.query_position = static_cast<int>(p.query_position);
  a.num_keys = static_cast<int>(p.num_keys);
  // A window that reaches past key 0 for every query is no window.
  a.window = p.sliding_window > 0 && p.sliding_window < p.num_keys
                 ? static_cast<int>(p.sliding_window)
                 : 0;
  a.num_q_heads = p.num_q_heads;
  a.group = p.num_q_heads / p.num_kv_heads;
  a.splits = plan.decode ? plan.splits : 1;
  a.tile_base = static_cast<int>(plan.tile_base);
  a.tiles_per_split = static_cast<int>(plan.tiles_per_split);
  a.scale_log2 = p.scale * 1.4426950408889634f;
  if (a.splits > 1) {
    a.ws_o = static_cast<float*>(p.workspace);
    a.ws_lse = a.ws_o + static_cast<int64_t>(a.splits) * p.num_queries * p.num_q_heads *
                            p.head_dim;
  }
  return p.head_dim == 64 ? LaunchForHeadDim<64>(a, plan, variant, stream)
                          : LaunchForHeadDim<128>(a, plan, variant, stream);
}

}  // namespace tierkv::kernels::cuda::internal
