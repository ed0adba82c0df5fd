// Device helpers of the Hopper (sm_90a) attention kernels (attention_wgmma.cu,
// sparse_attention_wgmma.cu): mbarriers, TMA tile loads, wgmma descriptors and products,
// and the host side of the tensor maps. CUDA only (included by .cu files).
#ifndef TIERKV_KERNELS_CUDA_INTERNAL_WGMMA_CUH_
#define TIERKV_KERNELS_CUDA_INTERNAL_WGMMA_CUH_

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/internal/mma_sync.cuh"

namespace tierkv::kernels::cuda::internal {

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

// cuTensorMapEncodeTiled from the driver, found through the runtime (no -lcuda); null when
// the driver lacks it.
inline PFN_cuTensorMapEncodeTiled_v12000 EncodeTiled() {
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
inline bool MakeMap(CUtensorMap* map, const uint16_t* ptr, int64_t cols, int64_t rows,
                    int64_t ld, int box_rows) {
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

// --- The consumer warpgroup's side of a 64-row x 128-key tile ------------------------------
// Accumulator layout of wgmma m64nN: thread (warp w, lane l) holds rows 16 w + l / 4 (a) and
// + 8 (b); element 4 c + e is column 8 c + 2 (l % 4) + (e & 1), row a for e < 2, b otherwise.

// S = Q K^T of one warpgroup: Q rows at q_wg (boxes of kBlockM rows), K at k (boxes of 128).
template <int kHeadDim, int kBlockM>
__device__ __forceinline__ void IssueS(float (&s_acc)[64], uint32_t q_wg, uint32_t k) {
  WgmmaFence();
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    const uint32_t off = (kk % 4) * 32;  // 16 columns = 32 bytes into the swizzled row.
    const uint64_t da = Desc(q_wg + (kk / 4) * kBlockM * 128 + off, 16, 1024);
    const uint64_t db = Desc(k + (kk / 4) * 128 * 128 + off, 16, 1024);
    WgmmaSS128(s_acc, da, db, kk > 0);
  }
  WgmmaCommit();
}

// O += P V, P as bf16 A fragments in registers, V a 128-key tile at v.
template <int kHeadDim>
__device__ __forceinline__ void IssuePV(float (&o)[kHeadDim / 2], const uint32_t (&p)[8][4],
                                        uint32_t v) {
  WgmmaFence();
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    const uint64_t db = Desc(v + kk * 16 * 128, 128 * 128, 1024);
    if constexpr (kHeadDim == 128) {
      WgmmaRS128(o, p[kk], db);
    } else {
      WgmmaRS64(o, p[kk], db);
    }
  }
  WgmmaCommit();
}

// Online softmax in base 2 over the tiles of a thread's two rows.
struct RowSoftmax {
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0, l_b = 0, alpha_a = 1, alpha_b = 1;

  // Takes a masked score tile (masked scores -inf) in place to exp2 of the scaled scores less
  // the new running maximum; alpha is the factor O must take before P V is added.
  __device__ __forceinline__ void Update(float (&s)[64], float sl2) {
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int c = 0; c < 16; ++c) {
      mx_a = fmaxf(mx_a, fmaxf(s[4 * c], s[4 * c + 1]));
      mx_b = fmaxf(mx_b, fmaxf(s[4 * c + 2], s[4 * c + 3]));
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
    for (int c = 0; c < 16; ++c) {
      s[4 * c] = Exp2(fmaf(s[4 * c], sl2, -ms_a));
      s[4 * c + 1] = Exp2(fmaf(s[4 * c + 1], sl2, -ms_a));
      s[4 * c + 2] = Exp2(fmaf(s[4 * c + 2], sl2, -ms_b));
      s[4 * c + 3] = Exp2(fmaf(s[4 * c + 3], sl2, -ms_b));
      sum_a += s[4 * c] + s[4 * c + 1];
      sum_b += s[4 * c + 2] + s[4 * c + 3];
    }
    l_a = l_a * alpha_a + sum_a;  // Per-thread partial sums; the quad adds them at the end.
    l_b = l_b * alpha_b + sum_b;
  }

  template <int N>
  __device__ __forceinline__ void Rescale(float (&o)[N]) const {
#pragma unroll
    for (int c = 0; c < N / 4; ++c) {
      o[4 * c] *= alpha_a;
      o[4 * c + 1] *= alpha_a;
      o[4 * c + 2] *= alpha_b;
      o[4 * c + 3] *= alpha_b;
    }
  }

  // out[row][col0 ..] = O / l as bf16 for the thread's rows r_a and r_a + 8 below
  // num_queries. A row with nothing listed (l = 0, past the queries) is written as zeros.
  template <int N>
  __device__ __forceinline__ void Store(const float (&o)[N], uint16_t* out, int64_t ldo,
                                        int r_a, int num_queries, int64_t col0, int lane) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    const float inv_a = l_a > 0 ? 1.0f / l_a : 0.0f, inv_b = l_b > 0 ? 1.0f / l_b : 0.0f;
    uint16_t* const out_a = out + static_cast<int64_t>(r_a) * ldo + col0 + (lane % 4) * 2;
    uint16_t* const out_b = out_a + 8 * ldo;
#pragma unroll
    for (int c = 0; c < N / 4; ++c) {
      if (r_a < num_queries) {
        *reinterpret_cast<uint32_t*>(out_a + c * 8) =
            PackBf16(o[4 * c] * inv_a, o[4 * c + 1] * inv_a);
      }
      if (r_a + 8 < num_queries) {
        *reinterpret_cast<uint32_t*>(out_b + c * 8) =
            PackBf16(o[4 * c + 2] * inv_b, o[4 * c + 3] * inv_b);
      }
    }
  }
};

// P as the A fragments of the P V steps: key columns 16 kk .. 16 kk + 15.
__device__ __forceinline__ void PackP(const float (&s)[64], uint32_t (&p)[8][4]) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    p[kk][0] = PackBf16(s[8 * kk], s[8 * kk + 1]);
    p[kk][1] = PackBf16(s[8 * kk + 2], s[8 * kk + 3]);
    p[kk][2] = PackBf16(s[8 * kk + 4], s[8 * kk + 5]);
    p[kk][3] = PackBf16(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

// Shared-memory addresses of a K/V ring of kStages stages (K then V, kKVBytes each, stage
// after stage from kv0) and of its mbarriers (from bar0: q_full, then per stage k_full,
// v_full, k_empty, v_empty).
template <int kStages, int kKVBytes>
struct StageRing {
  uint32_t kv0, bar0;
  // By one thread, before the block's first __syncthreads(): q_full for one arrival (with the
  // TMA's bytes), the full barriers for `fills` arrivals, the empty ones for `releases`.
  __device__ __forceinline__ void Init(uint32_t fills, uint32_t releases) const {
    MbarInit(q_full(), 1);
    for (int s = 0; s < kStages; ++s) {
      MbarInit(k_full(s), fills);
      MbarInit(v_full(s), fills);
      MbarInit(k_empty(s), releases);
      MbarInit(v_empty(s), releases);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __device__ __forceinline__ uint32_t k(int s) const { return kv0 + s * 2 * kKVBytes; }
  __device__ __forceinline__ uint32_t v(int s) const { return k(s) + kKVBytes; }
  __device__ __forceinline__ uint32_t q_full() const { return bar0; }
  __device__ __forceinline__ uint32_t k_full(int s) const { return bar0 + 8 * (1 + s); }
  __device__ __forceinline__ uint32_t v_full(int s) const {
    return bar0 + 8 * (1 + kStages + s);
  }
  __device__ __forceinline__ uint32_t k_empty(int s) const {
    return bar0 + 8 * (1 + 2 * kStages + s);
  }
  __device__ __forceinline__ uint32_t v_empty(int s) const {
    return bar0 + 8 * (1 + 3 * kStages + s);
  }
};

// A consumer warpgroup's whole pass over n_tiles K/V tiles of a kStages ring: S of tile `it`
// (its K stage `it % kStages` ready on k_full), `on_k(it, stage)` while K is still held,
// mask(it) on the scores, the online softmax, O += P V; the S of the next tile is issued
// before the P V of this one, so the softmax overlaps the tensor cores' work. Stages go back
// to the producer through k_empty / v_empty (one arrival per warp). `stages` gives the
// addresses: .k(s), .v(s), .k_full(s), .v_full(s), .k_empty(s), .v_empty(s).
template <int kHeadDim, int kBlockM, int kStages, class Stages, class OnK, class Mask>
__device__ __forceinline__ void ConsumeTiles(int n_tiles, uint32_t q_wg, const Stages& stages,
                                             float sl2, int lane, float (&o)[kHeadDim / 2],
                                             RowSoftmax& sm, OnK on_k, Mask mask) {
  float s_acc[64];
  uint32_t p[8][4];
  auto release = [&](uint32_t bar) {
    __syncwarp();
    if (lane == 0) MbarArrive(bar);
  };
  MbarWait(stages.k_full(0), 0);
  on_k(0, 0);
  IssueS<kHeadDim, kBlockM>(s_acc, q_wg, stages.k(0));
  WgmmaWait<0>();
  FenceRegs(s_acc);
  release(stages.k_empty(0));
  mask(0, s_acc);
  sm.Update(s_acc, sl2);
  PackP(s_acc, p);
  for (int it = 1; it < n_tiles; ++it) {
    const int s = it % kStages, sp = (it - 1) % kStages;
    MbarWait(stages.k_full(s), (it / kStages) & 1);
    on_k(it, s);
    IssueS<kHeadDim, kBlockM>(s_acc, q_wg, stages.k(s));  // S of this tile runs while ...
    sm.Rescale(o);
    MbarWait(stages.v_full(sp), ((it - 1) / kStages) & 1);
    IssuePV<kHeadDim>(o, p, stages.v(sp));  // ... O += P V of the previous one queues behind.
    WgmmaWait<1>();
    FenceRegs(s_acc);
    release(stages.k_empty(s));
    mask(it, s_acc);
    sm.Update(s_acc, sl2);
    WgmmaWait<0>();
    FenceRegs(o);
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) FenceRegs(p[kk]);
    release(stages.v_empty(sp));
    PackP(s_acc, p);
  }
  const int sl = (n_tiles - 1) % kStages;
  sm.Rescale(o);
  MbarWait(stages.v_full(sl), ((n_tiles - 1) / kStages) & 1);
  IssuePV<kHeadDim>(o, p, stages.v(sl));
  WgmmaWait<0>();
  FenceRegs(o);
}

}  // namespace tierkv::kernels::cuda::internal

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_WGMMA_CUH_
