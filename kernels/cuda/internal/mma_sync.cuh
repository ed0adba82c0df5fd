// Device helpers of the mma.sync attention kernels (attention.cu, sparse_attention.cu):
// cp.async copies, ldmatrix, the m16n8k16 bf16 MMA, base-2 exponent, bf16 packing and the
// swizzled [rows][head_dim] shared-memory tile layout. CUDA only (included by .cu files).
#ifndef TIERKV_KERNELS_CUDA_INTERNAL_MMA_SYNC_CUH_
#define TIERKV_KERNELS_CUDA_INTERNAL_MMA_SYNC_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace tierkv::kernels::cuda::internal {

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; with pred false nothing is read and the 16 bytes are zeroed
// (src-size 0), which is what the tails need: zero K gives finite scores, zero V adds nothing.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(pred ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void Ldmatrix4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void Ldmatrix4Trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a * b, m16n8k16, bf16 operands, fp32 accumulators.
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats to a bf16x2 register, `lo` in the low half (round to nearest even).
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Element offset of 16-byte chunk `chunk` of row `row` in a swizzled [rows][kHeadDim] tile.
template <int kHeadDim>
__device__ __forceinline__ int Swz(int row, int chunk) {
  return row * kHeadDim + ((chunk ^ (row & 7)) << 3);
}

// ldmatrix addresses of a warp's fragments (see the fragment layouts of mma.m16n8k16) in
// swizzled [rows][kHeadDim] tiles: A from the Q rows at wrow0 of the tile at shared address
// `sq` (absolute), B from K rows (non-transposed) and from V rows (transposed), relative to
// their tile. Row r of a step sits at a multiple of 16 rows from the lane's base row, so r & 7
// is a lane constant x; and for an even chunk 2j, (2j + c) ^ x == 2j ^ (c ^ x). Chunks 8..15
// are then chunks 0..7 plus 128 bytes, so four lane-constant offsets per operand (j = 0..3)
// and immediates reach every fragment.
template <int kHeadDim>
__device__ __forceinline__ void FragmentOffsets(uint32_t sq, int wrow0, int lane,
                                                uint32_t (&q_off)[4], uint32_t (&k_off)[4],
                                                uint32_t (&v_off)[4]) {
  constexpr int kRowBytes = kHeadDim * 2;
  const int q_row = wrow0 + (lane & 15), q_x = (lane >> 4) ^ (lane & 7);
  const int k_row = ((lane >> 4) << 3) + (lane & 7), k_x = ((lane >> 3) & 1) ^ (lane & 7);
  const int v_row = (((lane >> 3) & 1) << 3) + (lane & 7), v_x = (lane >> 4) ^ (lane & 7);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    q_off[j] = sq + q_row * kRowBytes + (((2 * j) ^ q_x) << 4);
    k_off[j] = k_row * kRowBytes + (((2 * j) ^ k_x) << 4);
    v_off[j] = v_row * kRowBytes + (((2 * j) ^ v_x) << 4);
  }
}

}  // namespace tierkv::kernels::cuda::internal

#endif  // TIERKV_KERNELS_CUDA_INTERNAL_MMA_SYNC_CUH_
