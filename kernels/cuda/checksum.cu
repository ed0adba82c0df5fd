// XXH3-64 of many equal-sized KV blocks, one warp per block (the algorithm and its split are
// described in internal/xxh3.cuh).
//
// Work of a warp, per 1 KiB block of input (16 stripes = 64 chunks of 16 bytes): lane t
// loads chunks t and t + 32, i.e. 16 bytes of stripe t / 4 and of stripe t / 4 + 8, both at
// byte 16 * (t % 4) of their stripe: the data words of accumulator lanes 2 j and 2 j + 1,
// j = t % 4. Every thread thus contributes to one lane pair only; the eight threads that
// share a pair sum their contributions with three xor-shuffles (distances 4, 8, 16), after
// which each of them holds the pair's accumulators (replicated, all eight apply the same
// update) and scrambles them, which needs no other lane. The loads do not depend on the
// accumulators, so a group of kDepth blocks is in flight while the previous group is summed.
// The partial last block and the last stripe go through the same sum (the last stripe on
// lanes 28..31, whose second chunk, stripe 15, a partial block never has), and the final
// merge of the four pairs is two more shuffles.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/internal/checksum_launch.h"
#include "kernels/cuda/internal/xxh3.cuh"

namespace tierkv::kernels::cuda::internal {
namespace {

constexpr int kWarpsPerCta = 4;
constexpr int kThreads = 32 * kWarpsPerCta;
// 1 KiB blocks whose loads are issued together (per warp kDepth KiB, per thread
// 2 * kDepth 16-byte loads, double-buffered).
constexpr int kDepth = 4;
constexpr unsigned kFullMask = 0xffffffffu;

enum class LoadMode { kVec16, kVec8, kBytes };

// The two little-endian words of the 16 bytes at p.
template <LoadMode kMode>
__device__ __forceinline__ void LoadChunk(const uint8_t* p, uint64_t& w0, uint64_t& w1) {
  if constexpr (kMode == LoadMode::kVec16) {
    // Read-only path, no L1 allocation (each byte is read once), 256-byte L2 prefetch.
    asm("ld.global.nc.L1::no_allocate.L2::256B.v2.u64 {%0, %1}, [%2];"
        : "=l"(w0), "=l"(w1)
        : "l"(p));
  } else if constexpr (kMode == LoadMode::kVec8) {
    w0 = __ldg(reinterpret_cast<const unsigned long long*>(p));
    w1 = __ldg(reinterpret_cast<const unsigned long long*>(p + 8));
  } else {
    w0 = xxh3::ReadLE64(p);
    w1 = xxh3::ReadLE64(p + 8);
  }
}

// Adds what the data words (w0, w1) of accumulator lanes (2 j, 2 j + 1) of one stripe, with
// secret words (k0, k1), contribute to those lanes: each lane gets its own product and the
// other lane's data word (the acc[i ^ 1] += data swap).
__device__ __forceinline__ void AddChunk(uint64_t w0, uint64_t w1, uint64_t k0, uint64_t k1,
                                         uint64_t& c_even, uint64_t& c_odd) {
  c_even += xxh3::LaneProduct(w0, k0) + w1;
  c_odd += xxh3::LaneProduct(w1, k1) + w0;
}

// Sums (a, b) over the eight lanes with the same lane % 4; all eight get the sums.
__device__ __forceinline__ void SumOverPair(uint64_t& a, uint64_t& b) {
#pragma unroll
  for (int d = 4; d < 32; d <<= 1) {
    a += __shfl_xor_sync(kFullMask, a, d);
    b += __shfl_xor_sync(kFullMask, b, d);
  }
}

// Issues the loads of 1 KiB blocks first .. first + kDepth - 1 (those below `full`).
template <LoadMode kMode>
__device__ __forceinline__ void LoadGroup(const uint8_t* in, size_t first, size_t full, size_t off0,
                                          uint64_t (&buf)[kDepth][4]) {
#pragma unroll
  for (int d = 0; d < kDepth; ++d) {
    if (first + d < full) {
      const uint8_t* p = in + (first + d) * xxh3::kBlockBytes + off0;
      LoadChunk<kMode>(p, buf[d][0], buf[d][1]);
      LoadChunk<kMode>(p + xxh3::kBlockBytes / 2, buf[d][2], buf[d][3]);
    }
  }
}

// grid: ceil(num_blocks / kWarpsPerCta) CTAs of kThreads; warp w of CTA c hashes block
// c * kWarpsPerCta + w, which starts at starts[block] when `starts` is given (blocks
// anywhere in device memory), else at data + block * block_bytes.
template <LoadMode kMode>
__global__ void __launch_bounds__(kThreads)
    BlockChecksumsKernel(const uint8_t* __restrict__ data,
                         const uint8_t* const* __restrict__ starts, size_t block_bytes,
                         int64_t num_blocks, uint64_t* __restrict__ out) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t block =
      static_cast<int64_t>(blockIdx.x) * kWarpsPerCta + static_cast<int64_t>(threadIdx.x / 32);
  if (block >= num_blocks) return;  // The whole warp leaves together.
  const uint8_t* in =
      starts != nullptr ? starts[block] : data + static_cast<size_t>(block) * block_bytes;

  const int j = lane % 4;                              // Accumulator lanes 2 j and 2 j + 1.
  const int s = lane / 4;                              // Stripes s and s + 8 of each 1 KiB block.
  const size_t off0 = static_cast<size_t>(lane) * 16;  // = 64 s + 16 j.
  const uint64_t k0e = xxh3::SecretWord(8 * s + 16 * j);
  const uint64_t k0o = xxh3::SecretWord(8 * s + 16 * j + 8);
  const uint64_t k1e = xxh3::SecretWord(8 * (s + 8) + 16 * j);
  const uint64_t k1o = xxh3::SecretWord(8 * (s + 8) + 16 * j + 8);
  const uint64_t kse = xxh3::SecretWord(xxh3::kScrambleSecretOffset + 16 * j);
  const uint64_t kso = xxh3::SecretWord(xxh3::kScrambleSecretOffset + 16 * j + 8);
  uint64_t acc_e = xxh3::InitAcc(2 * j);
  uint64_t acc_o = xxh3::InitAcc(2 * j + 1);

  const size_t full = (block_bytes - 1) / xxh3::kBlockBytes;
  uint64_t cur[kDepth][4];
  uint64_t nxt[kDepth][4];
  LoadGroup<kMode>(in, 0, full, off0, cur);
  for (size_t g = 0; g < full; g += kDepth) {
    if (g + kDepth < full) LoadGroup<kMode>(in, g + kDepth, full, off0, nxt);
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      if (g + d < full) {
        uint64_t ce = 0, co = 0;
        AddChunk(cur[d][0], cur[d][1], k0e, k0o, ce, co);
        AddChunk(cur[d][2], cur[d][3], k1e, k1o, ce, co);
        SumOverPair(ce, co);
        acc_e = xxh3::ScrambleLane(acc_e + ce, kse);
        acc_o = xxh3::ScrambleLane(acc_o + co, kso);
      }
    }
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
#pragma unroll
      for (int w = 0; w < 4; ++w) cur[d][w] = nxt[d][w];
    }
  }

  // Partial last block (0 to 15 stripes, not scrambled) and the last stripe.
  const size_t tail = full * xxh3::kBlockBytes;
  const size_t tail_stripes = ((block_bytes - 1) - tail) / xxh3::kStripeBytes;
  uint64_t ce = 0, co = 0;
  uint64_t w0, w1;
  if (static_cast<size_t>(s) < tail_stripes) {
    LoadChunk<kMode>(in + tail + off0, w0, w1);
    AddChunk(w0, w1, k0e, k0o, ce, co);
  }
  if (static_cast<size_t>(s) + 8 < tail_stripes) {
    LoadChunk<kMode>(in + tail + off0 + xxh3::kBlockBytes / 2, w0, w1);
    AddChunk(w0, w1, k1e, k1o, ce, co);
  }
  if (lane >= 28) {
    LoadChunk<kMode>(in + block_bytes - xxh3::kStripeBytes + 16 * j, w0, w1);
    AddChunk(w0, w1, xxh3::SecretWord(xxh3::kLastStripeSecretOffset + 16 * j),
             xxh3::SecretWord(xxh3::kLastStripeSecretOffset + 16 * j + 8), ce, co);
  }
  SumOverPair(ce, co);
  acc_e += ce;
  acc_o += co;

  uint64_t m = xxh3::MergePair(acc_e, acc_o, j);
  m += __shfl_xor_sync(kFullMask, m, 1);
  m += __shfl_xor_sync(kFullMask, m, 2);
  if (lane == 0) {
    out[block] = xxh3::Avalanche(static_cast<uint64_t>(block_bytes) * xxh3::kPrime64_1 + m);
  }
}

}  // namespace

// Launches the kernel with the widest loads that `alignment` (of every block start) and
// block_bytes allow.
static cudaError_t Launch(const uint8_t* in, const uint8_t* const* starts, uintptr_t alignment,
                   size_t block_bytes, int64_t num_blocks, uint64_t* out, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((num_blocks + kWarpsPerCta - 1) / kWarpsPerCta));
  if (alignment % 16 == 0 && block_bytes % 16 == 0) {
    BlockChecksumsKernel<LoadMode::kVec16>
        <<<grid, kThreads, 0, stream>>>(in, starts, block_bytes, num_blocks, out);
  } else if (alignment % 8 == 0 && block_bytes % 8 == 0) {
    BlockChecksumsKernel<LoadMode::kVec8>
        <<<grid, kThreads, 0, stream>>>(in, starts, block_bytes, num_blocks, out);
  } else {
    BlockChecksumsKernel<LoadMode::kBytes>
        <<<grid, kThreads, 0, stream>>>(in, starts, block_bytes, num_blocks, out);
  }
  return cudaGetLastError();
}

cudaError_t LaunchBlockChecksums(const void* data, size_t block_bytes, int64_t num_blocks,
                                 uint64_t* out, cudaStream_t stream) {
  return Launch(static_cast<const uint8_t*>(data), nullptr, reinterpret_cast<uintptr_t>(data),
                block_bytes, num_blocks, out, stream);
}

cudaError_t LaunchBlockChecksumsAt(const void* const* starts, size_t alignment,
                                   size_t block_bytes, int64_t num_blocks, uint64_t* out,
                                   cudaStream_t stream) {
  return Launch(nullptr, reinterpret_cast<const uint8_t* const*>(starts), alignment, block_bytes,
                num_blocks, out, stream);
}

}  // namespace tierkv::kernels::cuda::internal
