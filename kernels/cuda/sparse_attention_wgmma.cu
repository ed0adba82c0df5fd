// Block-sparse prefill attention for Hopper (sm_90a): the wgmma + TMA loop of
// attention_wgmma.cu over the sparse index instead of a range of keys.
//
// A block of the dense kernel computes 128 query rows (two consumer warpgroups of 64) against
// shared 128-key tiles; half of that, 64 rows per block, would read every K/V tile from L2
// twice as often per product and leave the tensor cores waiting. The index, though, lists
// keys per 64-row row block. So one block takes the two row blocks 2p and 2p + 1 of one head
// (warpgroup 1 the first, warpgroup 2 the second) and walks the union of their lists, each
// warpgroup masking what its own row block does not list:
// - a pre-pass (MergePairsKernel) merges the two sorted lists of each pair into the
//   workspace: every entry keeps its value and says whose it is (bit 30: the first row
//   block's, bit 31: the second's); a key block in both lists appears twice, side by side,
//   and the main kernel takes the two as one; a column in both stays twice (each copy masked
//   for the other warpgroup: one extra column, no double counting);
// - the key tiles are 128 keys, two 64-key slots; a slot holds one key block of the merged
//   list (last to first, so the diagonal blocks, which need the causal mask, come first),
//   then 64 merged columns at a time, then nothing (an odd count's last slot);
// - the producer warpgroup fills the slots: a key block with two 64 x 64 TMA boxes each of K
//   and V; columns by cp.async, each of 64 threads copying one key's row into the swizzled
//   layout the TMA would have written (then waiting for its copies and fencing them towards
//   the async proxy the wgmma reads through); an empty slot's V with zeros. With each K slot
//   it writes the tile's mask data: per slot its first key (block slots) and per warpgroup a
//   64-bit "listed" mask;
// - the consumers run the dense kernel's loop (S = Q K^T, online softmax, O += P V, the next
//   S issued before this P V) and mask a score when its key is not listed for their row block
//   or lies after the query's position (only block slots can: a row block's columns all lie
//   before its first row, ValidateSparseIndex's rule).
// What one warpgroup computes for the other's keys is the price of sharing tiles; adjacent
// row blocks of real heads list nearly the same blocks (a slash line moves by one block per
// row block), so it stays small, and the benchmark's rate counts only listed pairs.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/internal/mma_sync.cuh"
#include "kernels/cuda/internal/sparse_attention_launch.h"
#include "kernels/cuda/internal/wgmma.cuh"

namespace tierkv::kernels::cuda::internal {
namespace {

constexpr uint32_t kFirstBit = 1u << 30;   // Listed by the pair's first row block.
constexpr uint32_t kSecondBit = 1u << 31;  // Listed by the second.
constexpr uint32_t kValueMask = kFirstBit - 1;

// Entries of sorted `list` below `v` (lower bound) or at most `v` (upper bound).
__device__ __forceinline__ int CountBelow(const int32_t* list, int n, int32_t v, bool or_equal) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    const int32_t x = list[mid];
    if (x < v || (or_equal && x == v)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// One block per (head, pair). A stable merge (first row block's entries before equal ones of
// the second) written where the pair's entries already lie in the index: the pair's two
// lists are adjacent in the CSR, so their merge fits in the same range of the workspace.
__global__ void MergePairsKernel(SparseArgs a, int pairs, uint32_t* merged_blocks,
                                 uint32_t* merged_columns, int* pair_blocks,
                                 int64_t blocks_room, int64_t columns_room) {
  const int head = blockIdx.x / pairs;
  const int pair = blockIdx.x % pairs;
  if (a.skip_heads != nullptr && a.skip_heads[head] != 0) return;
  const int64_t e = static_cast<int64_t>(head) * a.row_blocks + 2 * pair;
  const bool has_second = 2 * pair + 1 < a.row_blocks;
  __shared__ int shared_blocks;
  if (threadIdx.x == 0) shared_blocks = 0;
  __syncthreads();
  // `room`: the workspace's entries (the lists' lengths the caller gave); an index whose
  // offsets run past them is not written beyond them (its results are then wrong, never
  // someone else's memory).
  auto merge = [&](const int64_t* offsets, const int32_t* values, uint32_t* out,
                   int64_t room, bool count_shared) {
    const int64_t first = offsets[e], second = offsets[e + 1];
    const int64_t end = has_second ? offsets[e + 2] : second;
    const int n1 = static_cast<int>(second - first), n2 = static_cast<int>(end - second);
    const int32_t* l1 = values + first;
    const int32_t* l2 = values + second;
    int shared = 0;
    for (int i = threadIdx.x; i < n1; i += blockDim.x) {
      const int32_t v = l1[i];
      const int below = CountBelow(l2, n2, v, false);
      if (count_shared && below < n2 && l2[below] == v) ++shared;
      if (first + i + below < room) out[first + i + below] = static_cast<uint32_t>(v) | kFirstBit;
    }
    for (int j = threadIdx.x; j < n2; j += blockDim.x) {
      const int32_t v = l2[j];
      const int64_t at = first + j + CountBelow(l1, n1, v, true);
      if (at < room) out[at] = static_cast<uint32_t>(v) | kSecondBit;
    }
    if (shared > 0) atomicAdd(&shared_blocks, shared);
    return n1 + n2;
  };
  const int blocks = merge(a.block_offsets, a.blocks, merged_blocks, blocks_room, true);
  merge(a.column_offsets, a.columns, merged_columns, columns_room, false);
  __syncthreads();
  if (threadIdx.x == 0) pair_blocks[static_cast<int64_t>(head) * pairs + pair] =
      blocks - shared_blocks;
}

// Per head (one block each): the 64 x 64 tiles the kernel computes, from MergePairsKernel's
// counts: a pair's slots (its distinct blocks and its merged columns 64 at a time), rounded
// up to whole 128-key tiles, each computed for 128 query rows (4 tiles of 64 x 64).
__global__ void PairTilesKernel(SparseArgs a, int pairs, const int* pair_blocks,
                                int64_t* tiles) {
  const int head = blockIdx.x;
  __shared__ int64_t partial[128];
  int64_t sum = 0;
  if (a.skip_heads == nullptr || a.skip_heads[head] == 0) {
    for (int pair = threadIdx.x; pair < pairs; pair += blockDim.x) {
      const int64_t e = static_cast<int64_t>(head) * a.row_blocks + 2 * pair;
      const bool has_second = 2 * pair + 1 < a.row_blocks;
      const int64_t columns =
          (has_second ? a.column_offsets[e + 2] : a.column_offsets[e + 1]) - a.column_offsets[e];
      const int64_t slots =
          pair_blocks[static_cast<int64_t>(head) * pairs + pair] + (columns + 63) / 64;
      sum += 4 * ((slots + 1) / 2);
    }
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int step = 64; step > 0; step >>= 1) {
    if (threadIdx.x < step) partial[threadIdx.x] += partial[threadIdx.x + step];
    __syncthreads();
  }
  if (threadIdx.x == 0) tiles[head] = partial[0];
}

template <int kHeadDim_, int kStages_>
struct SpCfg {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kStages = kStages_;
  static constexpr int kBlockM = 128;  // Two row blocks, a consumer warpgroup each.
  static constexpr int kBlockN = 128;  // Keys per tile: two 64-key slots.
  static constexpr int kThreads = 384;
  // The producer's 128 threads all work here (column gathers), so they keep more registers
  // than the dense kernel's; a multiple of 8 for setmaxnreg, the consumers share the rest.
  static constexpr int kProducerRegs = 56;
  static constexpr int kConsumerRegs = std::min(240, (65536 / 128 - kProducerRegs) / 2 / 8 * 8);
  static constexpr int kBoxes = kHeadDim / 64;
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kKVBytes = kBlockN * kHeadDim * 2;
  static constexpr int kSlotBytes = 64 * 128;  // One slot's part of one 64-column box.
  static constexpr int kSmemBytes = kQBytes + kStages * 2 * kKVBytes + 1024;
  static_assert(kHeadDim == 64 || kHeadDim == 128);
  static_assert(kSmemBytes <= 227 * 1024 - 256);
};

constexpr int kMaxStages = 3;

// Mask data of one K/V stage, written by the producer with the K slots.
struct TileMeta {
  int key0[2];               // A block slot's first key; -1: columns or nothing.
  uint32_t listed[2][2][2];  // [warpgroup][slot][keys 0-31, 32-63]
};

struct WgSparseArgs {
  SparseArgs s;
  int pairs;
  const uint32_t* merged_blocks;
  const uint32_t* merged_columns;
  const int* pair_blocks;
};

template <class C>
__global__ void __launch_bounds__(C::kThreads, 1)
    SparseWgmmaKernel(const __grid_constant__ CUtensorMap tq,
                      const __grid_constant__ CUtensorMap tk,
                      const __grid_constant__ CUtensorMap tv, WgSparseArgs w) {
  constexpr int kHeadDim = C::kHeadDim, kBlockM = C::kBlockM, kBlockN = C::kBlockN;
  constexpr int kStages = C::kStages, kBoxes = C::kBoxes;
  constexpr int kOAcc = kHeadDim / 2;
  const SparseArgs& a = w.s;
  extern __shared__ uint8_t smem_raw[];
  __shared__ alignas(8) uint64_t bars[1 + 4 * kMaxStages];
  __shared__ TileMeta meta[kMaxStages];

  const uint32_t base = (SmemAddr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sq = base;
  const StageRing<kStages, C::kKVBytes> ring{base + C::kQBytes, SmemAddr(bars)};

  const int tid = threadIdx.x;
  const int head = blockIdx.x % a.num_q_heads;
  if (a.skip_heads != nullptr && a.skip_heads[head] != 0) return;  // The whole block leaves.
  const int pair = w.pairs - 1 - static_cast<int>(blockIdx.x / a.num_q_heads);  // Heaviest first.
  const int kv_head = head / a.group;
  const int row0 = pair * kBlockM;
  const int64_t e = static_cast<int64_t>(head) * a.row_blocks + 2 * pair;
  const bool has_second = 2 * pair + 1 < a.row_blocks;
  const int64_t b_first = a.block_offsets[e];
  const int merged_blocks =
      static_cast<int>((has_second ? a.block_offsets[e + 2] : a.block_offsets[e + 1]) - b_first);
  const int64_t c_first = a.column_offsets[e];
  const int merged_columns = static_cast<int>(
      (has_second ? a.column_offsets[e + 2] : a.column_offsets[e + 1]) - c_first);
  const int block_slots = w.pair_blocks[static_cast<int64_t>(head) * w.pairs + pair];
  const int n_slots = block_slots + (merged_columns + 63) / 64;
  const int n_tiles = (n_slots + 1) / 2;  // >= 1: every row block lists its diagonal block.

  // Full: every producer thread arrives once per fill; empty: once per consumer warp.
  if (tid == 0) ring.Init(128, 8);
  __syncthreads();

  if (tid < 128) {
    // Producer: threads 0-63 fill slot 0 of each tile, 64-127 slot 1; thread r of a slot
    // copies key row r when the slot holds columns.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(C::kProducerRegs));
    if (tid == 0) {
      MbarExpectTx(ring.q_full(), C::kQBytes);
#pragma unroll
      for (int b = 0; b < kBoxes; ++b) {
        TmaLoad2d(sq + b * kBlockM * 128, &tq, head * kHeadDim + 64 * b, row0,
                  ring.q_full());
      }
    }
    const int slot = tid / 64, r = tid % 64, warp = tid / 32;
    const uint32_t* const mb = w.merged_blocks + b_first;
    const uint32_t* const mc = w.merged_columns + c_first;
    const int kv_col = kv_head * kHeadDim;
    // The walk over the merged lists, the same in every thread.
    int next_block = merged_blocks - 1, next_column = 0;
    // kind 0: key block `value`, listed by `bits` (1: first, 2: second row block);
    // kind 1: merged columns value .. value + 63; kind 2: nothing.
    auto next_slot = [&](int& kind, int& value, uint32_t& bits) {
      if (next_block >= 0) {
        const uint32_t x = mb[next_block--];
        kind = 0;
        value = static_cast<int>(x & kValueMask);
        bits = x >> 30;
        if (next_block >= 0) {
          const uint32_t y = mb[next_block];
          if (static_cast<int>(y & kValueMask) == value) {
            bits |= y >> 30;
            --next_block;
          }
        }
      } else if (next_column < merged_columns) {
        kind = 1;
        value = next_column;
        next_column += 64;
        bits = 0;
      } else {
        kind = 2;
        value = 0;
        bits = 0;
      }
    };
    // This thread's slot of the tile being filled, and of the one before (its V comes later).
    int kind = 2, value = 0, prev_kind = 2;
    int key = 0, prev_key = 0;  // The column this thread copies (kind 1).
    bool valid = false, prev_valid = false;
    auto fill = [&](bool is_k, int stage, int k_kind, int k_value, int k_key, bool k_valid,
                    uint32_t bits) {
      const uint32_t full = is_k ? ring.k_full(stage) : ring.v_full(stage);
      const uint32_t dst = (is_k ? ring.k(stage) : ring.v(stage)) + slot * C::kSlotBytes;
      TileMeta& m = meta[stage];
      if (k_kind == 0) {
        if (r == 0) {
          if (is_k) {
            m.key0[slot] = k_value * 64;
            const uint32_t first = (bits & 1u) ? ~0u : 0u, second = (bits & 2u) ? ~0u : 0u;
            m.listed[0][slot][0] = m.listed[0][slot][1] = first;
            m.listed[1][slot][0] = m.listed[1][slot][1] = second;
          }
          MbarExpectTx(full, kBoxes * C::kSlotBytes);
#pragma unroll
          for (int b = 0; b < kBoxes; ++b) {
            TmaLoad2d(dst + b * kBlockN * 128, is_k ? &tk : &tv, kv_col + 64 * b,
                      k_value * 64, full);
          }
        } else {
          MbarArrive(full);
        }
        return;
      }
      if (k_kind == 1) {
        if (is_k) {
          const uint32_t x = k_valid ? mc[k_value + r] : 0u;
          const uint32_t first = __ballot_sync(0xffffffffu, (x & kFirstBit) != 0);
          const uint32_t second = __ballot_sync(0xffffffffu, (x & kSecondBit) != 0);
          if (r % 32 == 0) {
            m.listed[0][slot][warp % 2] = first;
            m.listed[1][slot][warp % 2] = second;
          }
          if (r == 0) m.key0[slot] = -1;
        }
        const uint16_t* src = (is_k ? a.k : a.v) + static_cast<int64_t>(k_valid ? k_key : 0) *
                                                       a.ldkv + kv_col;
#pragma unroll
        for (int j = 0; j < kHeadDim / 8; ++j) {
          const int b = j / 8, jj = j % 8;
          CpAsync16(dst + b * kBlockN * 128 + r * 128 + ((jj ^ (r & 7)) * 16), src + j * 8,
                    k_valid);
        }
        asm volatile("cp.async.wait_all;\n" ::: "memory");
      } else {
        if (is_k) {
          if (r == 0) m.key0[slot] = -1;
          if (r % 32 == 0) {
            m.listed[0][slot][warp % 2] = 0;
            m.listed[1][slot][warp % 2] = 0;
          }
        } else {
          // Zeros for V: whatever the stage held before (or nothing, at the start) must not
          // turn the masked scores' zero weights into NaN.
#pragma unroll
          for (int b = 0; b < kBoxes; ++b) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
              asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(
                               dst + b * kBlockN * 128 + r * 128 + j * 16),
                           "r"(0)
                           : "memory");
            }
          }
        }
      }
      // Generic-proxy writes (cp.async, st.shared) before the wgmma's async-proxy reads.
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      MbarArrive(full);
    };
    uint32_t bits = 0;
    int prev_value = 0;
    for (int it = 0; it < n_tiles; ++it) {
      // Both slots of this tile, keeping this thread's.
      {
        int k0, v0, k1, v1;
        uint32_t b0, b1;
        next_slot(k0, v0, b0);
        next_slot(k1, v1, b1);
        kind = slot == 0 ? k0 : k1;
        value = slot == 0 ? v0 : v1;
        bits = slot == 0 ? b0 : b1;
      }
      valid = kind == 1 && value + r < merged_columns;
      key = valid ? static_cast<int>(mc[value + r] & kValueMask) : 0;
      // The order the consumers use them: K(0), then K(it), V(it - 1), and V(last).
      const int s = it % kStages;
      if (it >= kStages) MbarWait(ring.k_empty(s), ((it / kStages) - 1) & 1);
      fill(true, s, kind, value, key, valid, bits);
      if (it > 0) {
        const int sp = (it - 1) % kStages;
        if (it - 1 >= kStages) MbarWait(ring.v_empty(sp), (((it - 1) / kStages) - 1) & 1);
        fill(false, sp, prev_kind, prev_value, prev_key, prev_valid, 0);
      }
      prev_kind = kind;
      prev_value = value;
      prev_key = key;
      prev_valid = valid;
    }
    {
      const int sl = (n_tiles - 1) % kStages;
      if (n_tiles - 1 >= kStages) MbarWait(ring.v_empty(sl), (((n_tiles - 1) / kStages) - 1) & 1);
      fill(false, sl, prev_kind, prev_value, prev_key, prev_valid, 0);
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(C::kConsumerRegs));
  const int cw = tid / 128 - 1;  // Consumer warpgroup: row block 2 pair + cw.
  const int wtid = tid % 128, warp = wtid / 32, lane = tid % 32;
  const int pos_a = a.query_position + row0 + cw * 64 + warp * 16 + lane / 4;
  const int pos_b = pos_a + 8;
  const int wg_pos_min = a.query_position + row0 + cw * 64;
  const float sl2 = a.scale_log2;

  float o[kOAcc];
#pragma unroll
  for (int i = 0; i < kOAcc; ++i) o[i] = 0;
  RowSoftmax sm;
  // This warpgroup's mask data of the tile being computed.
  int key0[2];
  uint32_t listed[2][2];
  auto read_meta = [&](int s) {
    const TileMeta& m = meta[s];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      key0[h] = m.key0[h];
      listed[h][0] = m.listed[cw][h][0];
      listed[h][1] = m.listed[cw][h][1];
    }
  };
  const uint32_t q_wg = sq + cw * 64 * 128;
  // Masks keys this row block does not list and keys after a row's position.
  auto mask = [&](float(&s_acc)[kBlockN / 2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bool all_listed = listed[h][0] == ~0u && listed[h][1] == ~0u;
      const bool causal = key0[h] >= 0 && key0[h] + 63 > wg_pos_min;
      if (!all_listed || causal) {
#pragma unroll
        for (int c = 8 * h; c < 8 * h + 8; ++c) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = (c % 8) * 8 + (lane % 4) * 2 + (e & 1);  // Key of the slot.
            const uint32_t word = listed[h][col / 32];
            const int pos = e < 2 ? pos_a : pos_b;
            if (((word >> (col % 32)) & 1u) == 0 || (key0[h] >= 0 && key0[h] + col > pos)) {
              s_acc[c * 4 + e] = -INFINITY;
            }
          }
        }
      }
    }
  };
  MbarWait(ring.q_full(), 0);
  ConsumeTiles<kHeadDim, kBlockM, kStages>(
      n_tiles, q_wg, ring, sl2, lane, o, sm, [&](int, int stage) { read_meta(stage); },
      [&](int, float(&s)[kBlockN / 2]) { mask(s); });
  // Rows past the queries (a last, partial pair) may have nothing listed: not written.
  sm.Store(o, a.out, a.ldo, pos_a - a.query_position, a.num_queries,
           int64_t{head} * kHeadDim, lane);
}

template <class C>
cudaError_t Launch(const SparseArgs& s, int head_dim, const SparseWorkspace& ws,
                   cudaStream_t stream) {
  CUtensorMap tq, tk, tv;
  if (!MakeMap(&tq, s.q, int64_t{s.num_q_heads} * head_dim, s.num_queries, s.ldq,
               C::kBlockM) ||
      !MakeMap(&tk, s.k, int64_t{s.num_q_heads / s.group} * head_dim, s.num_keys, s.ldkv, 64) ||
      !MakeMap(&tv, s.v, int64_t{s.num_q_heads / s.group} * head_dim, s.num_keys, s.ldkv, 64)) {
    return cudaErrorNotSupported;
  }
  WgSparseArgs w{};
  w.s = s;
  w.pairs = (s.row_blocks + 1) / 2;
  w.merged_blocks = ws.merged_blocks;
  w.merged_columns = ws.merged_columns;
  w.pair_blocks = ws.pair_blocks;
  const unsigned grid = static_cast<unsigned>(w.pairs) * s.num_q_heads;
  MergePairsKernel<<<grid, 128, 0, stream>>>(s, w.pairs, ws.merged_blocks, ws.merged_columns,
                                             ws.pair_blocks, ws.blocks_room, ws.columns_room);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  auto* kernel = &SparseWgmmaKernel<C>;
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           C::kSmemBytes);
      e != cudaSuccess) {
    return e;
  }
  kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(tq, tk, tv, w);
  return cudaGetLastError();
}

}  // namespace

bool SparseWgmmaSupports(const SparseArgs& s, int head_dim) {
  return (head_dim == 64 || head_dim == 128) && reinterpret_cast<uintptr_t>(s.q) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(s.k) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(s.v) % 16 == 0 && s.ldq % 8 == 0 && s.ldkv % 8 == 0 &&
         int64_t{(s.row_blocks + 1) / 2} * s.num_q_heads < (int64_t{1} << 31);
}

cudaError_t LaunchSparsePairTiles(const SparseArgs& s, const SparseWorkspace& ws,
                                  int64_t* tiles, cudaStream_t stream) {
  const int pairs = (s.row_blocks + 1) / 2;
  MergePairsKernel<<<static_cast<unsigned>(pairs) * s.num_q_heads, 128, 0, stream>>>(
      s, pairs, ws.merged_blocks, ws.merged_columns, ws.pair_blocks, ws.blocks_room,
      ws.columns_room);
  PairTilesKernel<<<s.num_q_heads, 128, 0, stream>>>(s, pairs, ws.pair_blocks, tiles);
  return cudaGetLastError();
}

cudaError_t LaunchSparseAttentionWgmma(const SparseArgs& s, int head_dim, int variant,
                                       const SparseWorkspace& ws, cudaStream_t stream) {
  if (s.num_queries <= 0) return cudaSuccess;
  if (head_dim == 64) {
    return variant == kSparseWgmmaS3 ? Launch<SpCfg<64, 3>>(s, head_dim, ws, stream)
                                     : Launch<SpCfg<64, 2>>(s, head_dim, ws, stream);
  }
  return variant == kSparseWgmmaS3 ? Launch<SpCfg<128, 3>>(s, head_dim, ws, stream)
                                   : Launch<SpCfg<128, 2>>(s, head_dim, ws, stream);
}

}  // namespace tierkv::kernels::cuda::internal
