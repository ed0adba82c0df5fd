// Elementwise and per-row kernels of the GPU runtime. All are memory-bound: each reads its
// inputs once and writes its outputs once; the row kernels keep a row's reduction inside one
// thread block so no second pass over memory is needed.
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/internal/bf16.cuh"
#include "kernels/cuda/internal/elementwise_launch.h"
#include "kernels/random.h"

namespace tierkv::kernels::cuda::internal {
namespace {

constexpr int kThreads = 256;

int GridFor(int64_t count, int threads = kThreads) {
  const int64_t blocks = (count + threads - 1) / threads;
  return static_cast<int>(blocks < 65535 * 8 ? (blocks < 1 ? 1 : blocks) : 65535 * 8);
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats.
__device__ float BlockSum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  v = lane < warps ? scratch[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // scratch may be reused by the caller.
  return v;
}

__global__ void EmbeddingKernel(EmbeddingParams p) {
  const int64_t r = blockIdx.x;
  const int32_t id = p.ids[r];
  float* out = p.out + r * p.ldo;
  const bool ok = id >= 0 && id < p.vocab;
  const uint16_t* row = p.table + static_cast<int64_t>(ok ? id : 0) * p.dim;
  for (int64_t j = threadIdx.x; j < p.dim; j += blockDim.x) {
    out[j] = ok ? Bf16BitsToFloat(row[j]) : __int_as_float(0x7fc00000);
  }
}

__global__ void RmsNormKernel(RmsNormParams p) {
  __shared__ float scratch[32];
  const float* x = p.x + static_cast<int64_t>(blockIdx.x) * p.ldx;
  uint16_t* y = p.y + static_cast<int64_t>(blockIdx.x) * p.ldy;
  float ss = 0.0f;
  for (int64_t j = threadIdx.x; j < p.dim; j += blockDim.x) ss += x[j] * x[j];
  ss = BlockSum(ss, scratch);
  const float r = rsqrtf(ss / static_cast<float>(p.dim) + p.eps);
  for (int64_t j = threadIdx.x; j < p.dim; j += blockDim.x) {
    y[j] = FloatToBf16Bits((x[j] * r) * Bf16BitsToFloat(p.weight[j]));
  }
}

// grid: (rows, num_q_heads + 2 * num_kv_heads); block: head_dim / 2 threads, each owning the
// pair (i, i + head_dim / 2).
__global__ void RopeQkvKernel(RopeQkvParams p) {
  const int64_t r = blockIdx.x;
  const int head = blockIdx.y;
  const int half = p.head_dim / 2;
  const int i = threadIdx.x;
  const uint16_t* src = p.qkv + r * p.ld_qkv + static_cast<int64_t>(head) * p.head_dim;
  const float a = Bf16BitsToFloat(src[i]);
  const float b = Bf16BitsToFloat(src[i + half]);
  const int64_t pos = p.position0 + r;
  const int64_t row = p.cache_row0 + r;
  const int64_t kv_ld = static_cast<int64_t>(p.num_kv_heads) * p.head_dim;
  if (head < p.num_q_heads + p.num_kv_heads) {
    const float c = p.cos[pos * half + i];
    const float s = p.sin[pos * half + i];
    const float ra = a * c - b * s;
    const float rb = b * c + a * s;
    uint16_t* dst;
    if (head < p.num_q_heads) {
      dst = p.q_out + (r * p.num_q_heads + head) * p.head_dim;
    } else {
      dst = p.k_cache + row * kv_ld + static_cast<int64_t>(head - p.num_q_heads) * p.head_dim;
    }
    dst[i] = FloatToBf16Bits(ra);
    dst[i + half] = FloatToBf16Bits(rb);
  } else {
    const int kvh = head - p.num_q_heads - p.num_kv_heads;
    uint16_t* dst = p.v_cache + row * kv_ld + static_cast<int64_t>(kvh) * p.head_dim;
    dst[i] = src[i];
    dst[i + half] = src[i + half];
  }
}

__global__ void SwiGluKernel(SwiGluParams p) {
  const int64_t total = p.rows * p.inter;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / p.inter, j = e % p.inter;
    const uint16_t* row = p.gate_up + i * p.ld_gate_up;
    const float g = Bf16BitsToFloat(row[j]);
    const float u = Bf16BitsToFloat(row[p.inter + j]);
    p.out[i * p.ld_out + j] = FloatToBf16Bits(g / (1.0f + expf(-g)) * u);
  }
}

__global__ void F32ToBf16Kernel(const float* src, uint16_t* dst, int64_t count) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[e] = FloatToBf16Bits(src[e]);
  }
}

__global__ void Bf16ToF32Kernel(const uint16_t* src, float* dst, int64_t count) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[e] = Bf16BitsToFloat(src[e]);
  }
}

__global__ void FillSeededKernel(uint16_t* dst, int64_t count, uint64_t key, uint64_t offset,
                                 float scale, float shift) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float u = UniformPm1(RandomBits(key, offset + static_cast<uint64_t>(e)));
    // Two separately rounded operations, as SeededWeights does them (no FMA).
    dst[e] = FloatToBf16Bits(__fadd_rn(__fmul_rn(u, scale), shift));
  }
}

// (value, index) with NaN never winning and the lower index winning ties.
__device__ bool Better(float v, int32_t i, float best, int32_t best_i) {
  if (isnan(v)) return false;
  if (isnan(best)) return true;
  return v > best || (v == best && i < best_i);
}

__global__ void ArgMaxKernel(ArgMaxParams p) {
  __shared__ float sv[32];
  __shared__ int32_t si[32];
  const float* row = p.logits + static_cast<int64_t>(blockIdx.x) * p.ld;
  float best = __int_as_float(0x7fc00000);
  int32_t best_i = 0;
  for (int64_t j = threadIdx.x; j < p.cols; j += blockDim.x) {
    if (Better(row[j], static_cast<int32_t>(j), best, best_i)) {
      best = row[j];
      best_i = static_cast<int32_t>(j);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, best, o);
    const int32_t i = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (Better(v, i, best, best_i)) {
      best = v;
      best_i = i;
    }
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = best_i;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x / 32;
    best = lane < warps ? sv[lane] : __int_as_float(0x7fc00000);
    best_i = lane < warps ? si[lane] : 0;
    for (int o = 16; o > 0; o >>= 1) {
      const float v = __shfl_xor_sync(0xffffffffu, best, o);
      const int32_t i = __shfl_xor_sync(0xffffffffu, best_i, o);
      if (Better(v, i, best, best_i)) {
        best = v;
        best_i = i;
      }
    }
    if (lane == 0) p.out[blockIdx.x] = isnan(best) ? 0 : best_i;
  }
}

__global__ void AddBiasKernel(uint16_t* y_bf16, float* y_f32, int64_t ldy, int64_t m,
                              int64_t n, const uint16_t* bias) {
  const int64_t total = m * n;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / n, j = e % n;
    const float b = Bf16BitsToFloat(bias[j]);
    if (y_bf16 != nullptr) {
      uint16_t* y = y_bf16 + i * ldy + j;
      *y = FloatToBf16Bits(Bf16BitsToFloat(*y) + b);
    } else {
      y_f32[i * ldy + j] += b;
    }
  }
}

// grid: (num_blocks * 2 * num_layers); each thread block copies one [block_tokens][row] part
// with 16-byte accesses.
__global__ void ScatterKvBlocksKernel(ScatterKvBlocksParams p, bool to_blocks) {
  const int64_t parts = 2 * static_cast<int64_t>(p.num_layers);
  const int64_t b = blockIdx.x / parts;
  const int64_t part = blockIdx.x % parts;
  const int64_t part_elems = p.block_tokens * p.row_elems;
  const uint16_t* object = p.block_starts != nullptr
                              ? reinterpret_cast<const uint16_t*>(p.block_starts[b])
                              : p.blocks + b * parts * part_elems;
  uint4* obj = reinterpret_cast<uint4*>(const_cast<uint16_t*>(object) + part * part_elems);
  uint4* kv = reinterpret_cast<uint4*>(p.kv + part * p.capacity * p.row_elems +
                                       (p.row0 + b * p.block_tokens) * p.row_elems);
  const int64_t vecs = part_elems / 8;
  if (to_blocks) {
    for (int64_t i = threadIdx.x; i < vecs; i += blockDim.x) obj[i] = kv[i];
  } else {
    for (int64_t i = threadIdx.x; i < vecs; i += blockDim.x) kv[i] = obj[i];
  }
}

}  // namespace

cudaError_t LaunchScatterKvBlocks(const ScatterKvBlocksParams& p, bool to_blocks,
                                  cudaStream_t stream) {
  if (p.num_blocks == 0) return cudaSuccess;
  ScatterKvBlocksKernel<<<static_cast<unsigned>(p.num_blocks * 2 * p.num_layers), 256, 0,
                          stream>>>(p, to_blocks);
  return cudaGetLastError();
}

cudaError_t LaunchAddBias(Bf16* y_bf16, float* y_f32, int64_t ldy, int64_t m, int64_t n,
                          const Bf16* bias, cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  AddBiasKernel<<<GridFor(m * n), kThreads, 0, stream>>>(y_bf16, y_f32, ldy, m, n, bias);
  return cudaGetLastError();
}

cudaError_t LaunchEmbedding(const EmbeddingParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  EmbeddingKernel<<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchRmsNorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const int threads = p.dim >= 4096 ? 1024 : (p.dim >= 1024 ? 512 : 128);
  RmsNormKernel<<<static_cast<unsigned>(p.rows), threads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchRopeQkv(const RopeQkvParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p.rows), p.num_q_heads + 2 * p.num_kv_heads);
  RopeQkvKernel<<<grid, p.head_dim / 2, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchSwiGlu(const SwiGluParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.inter == 0) return cudaSuccess;
  SwiGluKernel<<<GridFor(p.rows * p.inter), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchF32ToBf16(const float* src, Bf16* dst, int64_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  F32ToBf16Kernel<<<GridFor(count), kThreads, 0, stream>>>(src, dst, count);
  return cudaGetLastError();
}

cudaError_t LaunchBf16ToF32(const Bf16* src, float* dst, int64_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  Bf16ToF32Kernel<<<GridFor(count), kThreads, 0, stream>>>(src, dst, count);
  return cudaGetLastError();
}

cudaError_t LaunchFillSeeded(Bf16* dst, int64_t count, uint64_t key, uint64_t offset,
                             float scale, float shift, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  FillSeededKernel<<<GridFor(count), kThreads, 0, stream>>>(dst, count, key, offset, scale,
                                                             shift);
  return cudaGetLastError();
}

cudaError_t LaunchArgMax(const ArgMaxParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  ArgMaxKernel<<<static_cast<unsigned>(p.rows), 1024, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace tierkv::kernels::cuda::internal
