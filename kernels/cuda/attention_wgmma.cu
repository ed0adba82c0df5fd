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

namespace tierkv::kernels::cuda::internal {
namespace {

// --- mbarriers (shared::cta) ---------------------------------------------------------------
__device__ __forceinline__ void MbarInit(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void MbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void MbarExpectTx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// 2-D TMA tile load into shared memory, completing `bar`'s transaction count.
__device__ __forceinline__ void TmaLoad2d(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                          uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}

// --- wgmma -----------------------------------------------------------------------------------
// Shared-memory matrix descriptor, 128-byte swizzle: start address, leading-dimension byte
// offset (K-major: unused, 16; MN-major: the stride between 64-element column blocks), stride
// byte offset (between 8-row groups: 1024 bytes here), all in 16-byte units. Tiles start on
// 1024-byte boundaries, so the base-offset field stays 0.
__device__ __forceinline__ uint64_t Desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>(lbo >> 4) << 16) | (static_cast<uint64_t>(sbo >> 4) << 32) |
         (uint64_t{1} << 62);
}
__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Ties registers that an in-flight wgmma reads or writes to this point of the program, so the
// compiler neither moves their uses across a wait nor reuses them early.
template <int N>
__device__ __forceinline__ void FenceRegs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void FenceRegs(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// d (+)= A * B, one m64n128k16 step; A and B in shared memory, K-major (descriptors).
// accumulate 0 overwrites d.
__device__ __forceinline__ void WgmmaSS128(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                           int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, "
      "%40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63 "
      "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// d += A * B, one m64n128k16 step; A (bf16x2 fragments) in registers, B in shared memory
// MN-major (the transposed form).
__device__ __forceinline__ void WgmmaRS128(float (&d)[64], const uint32_t (&a)[4],
                                          uint64_t desc_b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, "
      "%40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63 "
      "}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

// d += A * B, one m64n64k16 step; A (bf16x2 fragments) in registers, B in shared memory
// MN-major (the transposed form).
__device__ __forceinline__ void WgmmaRS64(float (&d)[32], const uint32_t (&a)[4],
                                          uint64_t desc_b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, "
      "%8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31 "
      "}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}

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

// Barriers: q_full, then per stage k_full, v_full, k_empty, v_empty.
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
  auto sk = [&](int s) { return base + C::kQBytes + s * 2 * C::kKVBytes; };
  auto sv = [&](int s) { return sk(s) + C::kKVBytes; };
  const uint32_t bar0 = SmemAddr(bars);
  const uint32_t q_full = bar0;
  auto k_full = [&](int s) { return bar0 + 8 * (1 + s); };
  auto v_full = [&](int s) { return bar0 + 8 * (1 + kStages + s); };
  auto k_empty = [&](int s) { return bar0 + 8 * (1 + 2 * kStages + s); };
  auto v_empty = [&](int s) { return bar0 + 8 * (1 + 3 * kStages + s); };

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

  if (tid == 0) {
    MbarInit(q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      MbarInit(k_full(s), 1);
      MbarInit(v_full(s), 1);
      MbarInit(k_empty(s), 4 * C::kConsumers);  // One arrival per consumer warp.
      MbarInit(v_empty(s), 4 * C::kConsumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (tid < 128) {
    // Producer. All four warps lower their register allocation; one thread works.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(C::kProducerRegs));
    if (tid == 0) {
      const int q_col = hq * kHeadDim, kv_col = kv_head * kHeadDim;
      MbarExpectTx(q_full, C::kQBytes);
#pragma unroll
      for (int b = 0; b < kBoxes; ++b) {
        TmaLoad2d(sq + b * kBlockM * 128, &tq, q_col + 64 * b, row0, q_full);
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
      load(&tk, sk(0), k_full(0), k_empty(0), 0);
      for (int it = 1; it < n_tiles; ++it) {
        const int s = it % kStages, sp = (it - 1) % kStages;
        load(&tk, sk(s), k_full(s), k_empty(s), it);
        load(&tv, sv(sp), v_full(sp), v_empty(sp), it - 1);
      }
      const int sl = (n_tiles - 1) % kStages;
      load(&tv, sv(sl), v_full(sl), v_empty(sl), n_tiles - 1);
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
  float s_acc[kBlockN / 2];
  uint32_t p[kBlockN / 16][4];
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0, l_b = 0, alpha_a = 1, alpha_b = 1;

  const uint32_t q_wg = sq + cw * 64 * 128;
  auto issue_s = [&](int s) {
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      const uint32_t off = (kk % 4) * 32;  // 16 columns = 32 bytes into the swizzled row.
      const uint64_t da = Desc(q_wg + (kk / 4) * kBlockM * 128 + off, 16, 1024);
      const uint64_t db = Desc(sk(s) + (kk / 4) * kBlockN * 128 + off, 16, 1024);
      WgmmaSS128(s_acc, da, db, kk > 0);
    }
    WgmmaCommit();
  };
  auto issue_pv = [&](int s) {
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      const uint64_t db = Desc(sv(s) + kk * 16 * 128, kBlockN * 128, 1024);
      if constexpr (kHeadDim == 128) {
        WgmmaRS128(o, p[kk], db);
      } else {
        WgmmaRS64(o, p[kk], db);
      }
    }
    WgmmaCommit();
  };
  // Mask, then the online-softmax update of tile `tile` held in s_acc (in place: s_acc ends
  // as exp2 of the scaled scores); alpha is the factor O must take before P V is added.
  auto softmax = [&](int tile) {
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
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int c = 0; c < kBlockN / 8; ++c) {
      mx_a = fmaxf(mx_a, fmaxf(s_acc[4 * c], s_acc[4 * c + 1]));
      mx_b = fmaxf(mx_b, fmaxf(s_acc[4 * c + 2], s_acc[4 * c + 3]));
    }
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
    const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
    // A row with every key so far masked keeps m = -inf: subtract 0 so exp2 gives 0, not NaN.
    const float ms_a = mn_a == -INFINITY ? 0.0f : mn_a * sl2;
    const float ms_b = mn_b == -INFINITY ? 0.0f : mn_b * sl2;
    alpha_a = Exp2(m_a * sl2 - ms_a);
    alpha_b = Exp2(m_b * sl2 - ms_b);
    m_a = mn_a;
    m_b = mn_b;
    float sum_a = 0, sum_b = 0;
#pragma unroll
    for (int c = 0; c < kBlockN / 8; ++c) {
      s_acc[4 * c] = Exp2(fmaf(s_acc[4 * c], sl2, -ms_a));
      s_acc[4 * c + 1] = Exp2(fmaf(s_acc[4 * c + 1], sl2, -ms_a));
      s_acc[4 * c + 2] = Exp2(fmaf(s_acc[4 * c + 2], sl2, -ms_b));
      s_acc[4 * c + 3] = Exp2(fmaf(s_acc[4 * c + 3], sl2, -ms_b));
      sum_a += s_acc[4 * c] + s_acc[4 * c + 1];
      sum_b += s_acc[4 * c + 2] + s_acc[4 * c + 3];
    }
    l_a = l_a * alpha_a + sum_a;  // Per-thread partial sums; the quad adds them at the end.
    l_b = l_b * alpha_b + sum_b;
  };
  // P as the A fragments of the P V steps: key columns 16 kk .. 16 kk + 15.
  auto pack_p = [&] {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      p[kk][0] = PackBf16(s_acc[8 * kk], s_acc[8 * kk + 1]);
      p[kk][1] = PackBf16(s_acc[8 * kk + 2], s_acc[8 * kk + 3]);
      p[kk][2] = PackBf16(s_acc[8 * kk + 4], s_acc[8 * kk + 5]);
      p[kk][3] = PackBf16(s_acc[8 * kk + 6], s_acc[8 * kk + 7]);
    }
  };
  auto rescale_o = [&] {
#pragma unroll
    for (int c = 0; c < kHeadDim / 8; ++c) {
      o[4 * c] *= alpha_a;
      o[4 * c + 1] *= alpha_a;
      o[4 * c + 2] *= alpha_b;
      o[4 * c + 3] *= alpha_b;
    }
  };
  auto release = [&](uint32_t bar) {
    __syncwarp();
    if (lane == 0) MbarArrive(bar);
  };

  MbarWait(q_full, 0);
  // Tile 0 (the last key tile): S, softmax, P.
  MbarWait(k_full(0), 0);
  issue_s(0);
  WgmmaWait<0>();
  FenceRegs(s_acc);
  release(k_empty(0));
  softmax(t_end - 1);
  pack_p();
  for (int it = 1; it < n_tiles; ++it) {
    const int s = it % kStages, sp = (it - 1) % kStages;
    MbarWait(k_full(s), (it / kStages) & 1);
    issue_s(s);  // S of this tile runs while ...
    rescale_o();
    MbarWait(v_full(sp), ((it - 1) / kStages) & 1);
    issue_pv(sp);  // ... O += P V of the previous one is queued behind it.
    WgmmaWait<1>();
    FenceRegs(s_acc);
    release(k_empty(s));
    softmax(t_end - 1 - it);
    WgmmaWait<0>();
    FenceRegs(o);
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) FenceRegs(p[kk]);
    release(v_empty(sp));
    pack_p();
  }
  {
    const int sl = (n_tiles - 1) % kStages;
    rescale_o();
    MbarWait(v_full(sl), ((n_tiles - 1) / kStages) & 1);
    issue_pv(sl);
    WgmmaWait<0>();
    FenceRegs(o);
  }

  l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
  const float inv_a = 1.0f / l_a, inv_b = 1.0f / l_b;  // l >= 1: the row max contributes 1.
  const int r_a = pos_a - a.query_position, r_b = r_a + 8;
  uint16_t* const out_a = a.out + static_cast<int64_t>(r_a) * a.ldo + hq * kHeadDim +
                          (lane % 4) * 2;
  uint16_t* const out_b = out_a + 8 * a.ldo;
#pragma unroll
  for (int c = 0; c < kHeadDim / 8; ++c) {
    if (r_a < a.num_queries) {
      *reinterpret_cast<uint32_t*>(out_a + c * 8) = PackBf16(o[4 * c] * inv_a,
                                                             o[4 * c + 1] * inv_a);
    }
    if (r_b < a.num_queries) {
      *reinterpret_cast<uint32_t*>(out_b + c * 8) = PackBf16(o[4 * c + 2] * inv_b,
                                                             o[4 * c + 3] * inv_b);
    }
  }
}

// cuTensorMapEncodeTiled from the driver, found through the runtime (no -lcuda); null when
// the driver lacks it.
PFN_cuTensorMapEncodeTiled_v12000 EncodeTiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();  // Not sticky, but keep the launch's error report clean.
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A 2-D bf16 tensor [rows][cols] with row stride ld (elements), read in boxes of 64 columns x
// box_rows rows with the 128-byte swizzle; reads past `rows` come back as zeros.
bool MakeMap(CUtensorMap* map, const uint16_t* ptr, int64_t cols, int64_t rows, int64_t ld,
             int box_rows) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = EncodeTiled();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<uint16_t*>(ptr), dims,
                strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
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
