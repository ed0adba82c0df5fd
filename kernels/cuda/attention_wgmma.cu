// FlashAttention-3 style causal GQA prefill for Hopper (sm_90a): wgmma tensor-core products
// with operands in shared memory, K/V tiles brought in by the tensor memory accelerator (TMA),
// and warp specialization. See internal/attention_launch.h for where it sits beside the
// mma.sync kernels of attention.cu (the fallback).
//
// One block computes kBlockM = 64 x kConsumers query rows of one q head (128; 192 at
// head_dim 64, where the softmax costs as much as both products and a third consumer hides
// more of it), with one producer and kConsumers consumer warpgroups:
// - warpgroup 0, the producer: one thread issues the TMA copies (Q once, then K and V tiles,
//   last key tile first) into a kStages-deep ring, each completing on an mbarrier ("full");
//   the consumers hand a slot back through a second mbarrier ("empty"). Its registers are
//   given to the consumers (setmaxnreg).
// - warpgroups 1.., the consumers, 64 query rows each: S = Q K^T on wgmma m64n128k16
//   (both operands from shared memory), online softmax in registers, P converted to bf16 in
//   registers and used as the A operand of O += P V (wgmma with A in registers and V as the
//   transposed B). The product S of the next key tile is issued before O += P V of the current
//   one, so the softmax of a tile overlaps the tensor cores' work (FlashAttention-3's
//   intra-warpgroup pipelining).
// Shared-memory tiles are TMA boxes of 64 columns (128 bytes) x rows with the 128-byte
// swizzle, the layout the wgmma descriptors name: a head_dim-128 tile is two such boxes. K
// and V are read as 2-D tensors [num_keys][kv_heads * head_dim] with row stride ldkv, Q as
// [num_queries][q_heads * head_dim]; rows past the end are zero-filled by the TMA (and masked:
// a key past num_keys is past every query's position).
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/internal/attention_launch.h"
#include "kernels/cuda/internal/mma_sync.cuh"
#include "kernels/cuda/internal/wgmma.cuh"

namespace tierkv::kernels::cuda::internal {
namespace {

// Per-block scalars (the tensor maps travel separately, as __grid_constant__ parameters).
struct WgArgs {
  uint16_t* out;
  int64_t ldo;
  int num_queries, query_position, num_keys, window;  // window 0: none.
  int num_q_heads, group;
  int num_m_tiles;
  float scale_log2;
};

template <int kHeadDim_, int kStages_, int kConsumers_>
struct WgCfg {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kStages = kStages_;
  static constexpr int kConsumers = kConsumers_;  // Consumer warpgroups of 64 rows each.
  static constexpr int kBlockM = 64 * kConsumers;
  static constexpr int kBlockN = 128;  // Keys per tile.
  static constexpr int kThreads = 128 * (1 + kConsumers);
  // setmaxnreg: the producer keeps 24 registers per thread, the consumers share the rest of
  // the 64K-register file (a multiple of 8, at most 240 - 255 is not a legal target).
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs =
      std::min(240, (65536 / 128 - kProducerRegs) / kConsumers / 8 * 8);
  static constexpr int kBoxes = kHeadDim / 64;  // 64-column TMA boxes per row.
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKVBytes = kBlockN * kHeadDim * 2;
  // 1024 bytes of slack to align the tiles (the 128-byte swizzle repeats every 1024).
  static constexpr int kSmemBytes = kQBytes + kStages * 2 * kKVBytes + 1024;
  static_assert(kHeadDim == 64 || kHeadDim == 128);
  static_assert(kSmemBytes <= 227 * 1024 && kBlockM <= 256);  // 256: the TMA box limit.
};

// Barriers: q_full, then per stage k_full, v_full, k_empty, v_empty (StageRing).
constexpr int kMaxStages = 4;

template <class C>
__global__ void __launch_bounds__(C::kThreads, 1)
    PrefillWgmmaKernel(const __grid_constant__ CUtensorMap tq,
                       const __grid_constant__ CUtensorMap tk,
                       const __grid_constant__ CUtensorMap tv, WgArgs a) {
  constexpr int kHeadDim = C::kHeadDim, kBlockM = C::kBlockM, kBlockN = C::kBlockN;
  constexpr int kStages = C::kStages, kBoxes = C::kBoxes;
  constexpr int kOAcc = kHeadDim / 2;  // Accumulators per thread of a 64 x head_dim tile.
  extern __shared__ uint8_t smem_raw[];
  __shared__ alignas(8) uint64_t bars[1 + 4 * kMaxStages];

  const uint32_t base = (SmemAddr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sq = base;
  const StageRing<kStages, C::kKVBytes> ring{base + C::kQBytes, SmemAddr(bars)};

  const int tid = threadIdx.x;
  // Heaviest (last) query tiles first; the q heads of one tile are adjacent so the group
  // sharing a KV head reads its K/V tiles from L2 at about the same time.
  const int hq = blockIdx.x % a.num_q_heads;
  const int m_tile = a.num_m_tiles - 1 - static_cast<int>(blockIdx.x / a.num_q_heads);
  const int kv_head = hq / a.group;
  const int row0 = m_tile * kBlockM;
  const int row_last = min(row0 + kBlockM, a.num_queries) - 1;
  const int pos_min = a.query_position + row0;
  const int pos_max = a.query_position + row_last;
  const int t_begin = a.window > 0 ? max(0, pos_min - a.window + 1) / kBlockN : 0;
  const int t_end = pos_max / kBlockN + 1;
  const int n_tiles = t_end - t_begin;  // >= 1: every query sees its own key.

  if (tid == 0) ring.Init(1, 4 * C::kConsumers);  // Empty: one arrival per consumer warp.
  __syncthreads();

  if (tid < 128) {
    // Producer. All four warps lower their register allocation; one thread works.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(C::kProducerRegs));
    if (tid == 0) {
      const int q_col = hq * kHeadDim, kv_col = kv_head * kHeadDim;
      MbarExpectTx(ring.q_full(), C::kQBytes);
#pragma unroll
      for (int b = 0; b < kBoxes; ++b) {
        TmaLoad2d(sq + b * kBlockM * 128, &tq, q_col + 64 * b, row0, ring.q_full());
      }
      auto load = [&](const CUtensorMap* map, uint32_t dst, uint32_t full, uint32_t empty,
                      int it) {
        if (it >= kStages) MbarWait(empty, ((it / kStages) - 1) & 1);
        MbarExpectTx(full, C::kKVBytes);
        const int key0 = (t_end - 1 - it) * kBlockN;
#pragma unroll
        for (int b = 0; b < kBoxes; ++b) {
          TmaLoad2d(dst + b * kBlockN * 128, map, kv_col + 64 * b, key0, full);
        }
      };
      // The order the consumers use them: K0, then K(i), V(i-1), and V(last).
      load(&tk, ring.k(0), ring.k_full(0), ring.k_empty(0), 0);
      for (int it = 1; it < n_tiles; ++it) {
        const int s = it % kStages, sp = (it - 1) % kStages;
        load(&tk, ring.k(s), ring.k_full(s), ring.k_empty(s), it);
        load(&tv, ring.v(sp), ring.v_full(sp), ring.v_empty(sp), it - 1);
      }
      const int sl = (n_tiles - 1) % kStages;
      load(&tv, ring.v(sl), ring.v_full(sl), ring.v_empty(sl), n_tiles - 1);
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(C::kConsumerRegs));
  const int cw = tid / 128 - 1;  // Consumer warpgroup: rows cw * 64 .. + 63.
  const int wtid = tid % 128, warp = wtid / 32, lane = tid % 32;
  // This thread's two rows (accumulator layout of wgmma m64nN: row 16 warp + lane / 4, +8).
  const int pos_a = a.query_position + row0 + cw * 64 + warp * 16 + lane / 4;
  const int pos_b = pos_a + 8;
  const int wg_pos_min = a.query_position + row0 + cw * 64;
  const int wg_pos_max = wg_pos_min + 63;
  const int window = a.window > 0 ? a.window : 1 << 30;
  const float sl2 = a.scale_log2;

  float o[kOAcc];
#pragma unroll
  for (int i = 0; i < kOAcc; ++i) o[i] = 0;
  RowSoftmax sm;

  const uint32_t q_wg = sq + cw * 64 * 128;
  // Masks the scores of key tile `tile`: keys after a row's position or outside its window.
  auto mask = [&](int tile, float(&s_acc)[kBlockN / 2]) {
    const int n0 = tile * kBlockN;
    const bool need_mask =
        n0 + kBlockN - 1 > wg_pos_min || (a.window > 0 && n0 < wg_pos_max - a.window + 1);
    if (need_mask) {
#pragma unroll
      for (int c = 0; c < kBlockN / 8; ++c) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n0 + c * 8 + (lane % 4) * 2 + (e & 1);
          const int pos = e < 2 ? pos_a : pos_b;
          if (key > pos || key <= pos - window) s_acc[c * 4 + e] = -INFINITY;
        }
      }
    }
  };
  MbarWait(ring.q_full(), 0);
  // Key tiles last to first: tile `it` is key tile t_end - 1 - it.
  ConsumeTiles<kHeadDim, kBlockM, kStages>(
      n_tiles, q_wg, ring, sl2, lane, o, sm, [](int, int) {},
      [&](int it, float(&s)[kBlockN / 2]) { mask(t_end - 1 - it, s); });
  sm.Store(o, a.out, a.ldo, pos_a - a.query_position, a.num_queries,
           int64_t{hq} * kHeadDim, lane);
}

template <class C>
cudaError_t Launch(const AttentionProblem& p, cudaStream_t stream) {
  CUtensorMap tq, tk, tv;
  if (!MakeMap(&tq, p.q, int64_t{p.num_q_heads} * p.head_dim, p.num_queries, p.ldq,
               C::kBlockM) ||
      !MakeMap(&tk, p.k, int64_t{p.num_kv_heads} * p.head_dim, p.num_keys, p.ldkv,
               C::kBlockN) ||
      !MakeMap(&tv, p.v, int64_t{p.num_kv_heads} * p.head_dim, p.num_keys, p.ldkv,
               C::kBlockN)) {
    return cudaErrorNotSupported;
  }
  WgArgs a{};
  a.out = p.out;
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
  a.num_m_tiles = static_cast<int>((p.num_queries + C::kBlockM - 1) / C::kBlockM);
  a.scale_log2 = p.scale * 1.4426950408889634f;
  auto* kernel = &PrefillWgmmaKernel<C>;
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           C::kSmemBytes);
      e != cudaSuccess) {
    return e;
  }
  const dim3 grid(static_cast<unsigned>(a.num_m_tiles) * p.num_q_heads);
  kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(tq, tk, tv, a);
  return cudaGetLastError();
}

}  // namespace

bool WgmmaPrefillSupports(const AttentionProblem& p) {
  // (The m-tile count below uses the smallest block, 128 rows.)
  // The TMA needs 16-byte aligned bases and row strides (attention.cc already requires both)
  // and coordinates below 2^31; the grid's x dimension bounds m tiles x q heads.
  return (p.head_dim == 64 || p.head_dim == 128) && p.num_queries > kDecodeMaxQueries &&
         reinterpret_cast<uintptr_t>(p.q) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.k) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.v) % 16 == 0 && p.ldq % 8 == 0 && p.ldkv % 8 == 0 &&
         p.num_keys < (int64_t{1} << 30) &&
         (p.num_queries + 127) / 128 * p.num_q_heads < (int64_t{1} << 31);
}

cudaError_t LaunchPrefillWgmma(const AttentionProblem& p, int variant, cudaStream_t stream) {
  if (p.head_dim == 64) {
    switch (variant) {
      case kPrefillWgmmaS2:
        return Launch<WgCfg<64, 2, 2>>(p, stream);
      case kPrefillWgmmaS3:
        return Launch<WgCfg<64, 4, 2>>(p, stream);
      default:  // kPrefillWgmmaM192 and auto.
        return Launch<WgCfg<64, 3, 3>>(p, stream);
    }
  }
  switch (variant) {
    case kPrefillWgmmaS3:
      return Launch<WgCfg<128, 3, 2>>(p, stream);
    default:  // kPrefillWgmmaS2, auto, and kPrefillWgmmaM192 (no 192-row tile at 128).
      return Launch<WgCfg<128, 2, 2>>(p, stream);
  }
}

}  // namespace tierkv::kernels::cuda::internal
