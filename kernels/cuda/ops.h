// CUDA versions of the transformer primitives of kernels/ops.h, for the GPU model runtime.
//
// Conventions (they differ from the CPU kernels on purpose):
// - Activations, weights and KV are bf16 in device memory (`Bf16` holds the raw bits, the
//   same encoding as kernels::FloatToBf16); arithmetic is fp32. The residual stream and
//   logits are fp32. Strides are in elements.
// - Every function validates its params on the host and returns INVALID_ARGUMENT naming the
//   first bad field without launching anything; otherwise it enqueues the work on `stream`
//   (null: the legacy default stream) and returns OK, or INTERNAL / RESOURCE_EXHAUSTED with
//   the CUDA error when the launch fails. Work is asynchronous: results are ready once the
//   stream is synchronized. Pointers name device memory unless a field says otherwise.
// - Thread-safe: no shared mutable state except cuBLAS handles (one per thread and device,
//   created on first use).
// - Unlike the CPU kernels there is no bitwise determinism across splits: results agree with
//   the fp32 CPU reference within bf16 tolerance (tests/kernels check 1e-2 relative error).
//
// This header needs no CUDA headers; CUstream_st* is what cudaStream_t names.
#ifndef TIERKV_KERNELS_CUDA_OPS_H_
#define TIERKV_KERNELS_CUDA_OPS_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct CUstream_st;

namespace tierkv::kernels::cuda {

using Stream = CUstream_st*;
using Bf16 = uint16_t;

// ---------------------------------------------------------------------------------------
// Devices

struct DeviceInfo {
  int ordinal = 0;
  char name[256] = {};
  int sm_major = 0, sm_minor = 0;
  int multiprocessors = 0;
  size_t total_memory = 0;
  size_t l2_bytes = 0;
  size_t max_shared_per_block_optin = 0;
};

// OK with the properties of the current device; UNAVAILABLE (with the driver's words) when
// no usable CUDA device is present, so callers can fall back to the CPU.
absl::StatusOr<DeviceInfo> CurrentDevice();
// True when CurrentDevice() is OK and the device is compute capability 9.0 (the kernels are
// built for sm_90a only).
bool Available();

// ---------------------------------------------------------------------------------------
// Elementwise and row kernels

// out[r][:] = table[ids[r]][:]. ids are int32 in device memory; an id outside [0, vocab)
// writes a row of NaN (never a neighbour's row), so a bad id cannot pass unnoticed.
struct EmbeddingParams {
  const int32_t* ids = nullptr;  // [rows]
  const Bf16* table = nullptr;   // [vocab][dim]
  int64_t vocab = 0;
  float* out = nullptr;  // [rows][dim] fp32 (the residual stream), row stride ldo.
  int64_t ldo = 0;
  int64_t rows = 0;
  int64_t dim = 0;
};
absl::Status Embedding(const EmbeddingParams& p, Stream stream);

// y[i][j] = bf16((x[i][j] * r_i) * weight[j]), r_i = rsqrt(mean_j x[i][j]^2 + eps), with
// fp32 x (the residual stream) and bf16 weight and output.
struct RmsNormParams {
  const float* x = nullptr;  // [rows][dim], row stride ldx.
  int64_t ldx = 0;
  const Bf16* weight = nullptr;  // [dim]
  Bf16* y = nullptr;             // [rows][dim], row stride ldy.
  int64_t ldy = 0;
  int64_t rows = 0;
  int64_t dim = 0;
  float eps = 1e-5f;
};
absl::Status RmsNorm(const RmsNormParams& p, Stream stream);

// Splits a fused QKV projection row [q heads | k heads | v heads] (bf16), applies rotary
// embedding (Hugging Face rotate_half convention, kernels/ops.h) to q and k at positions
// position0 + r, writes q to `q_out` and k, v into the KV cache at rows cache_row0 + r.
// cos/sin are fp32 tables [max_positions][head_dim / 2] (kernels::RopeCosSin rows), so the
// angles are exactly the CPU runtime's.
struct RopeQkvParams {
  const Bf16* qkv = nullptr;  // [rows][(num_q_heads + 2 * num_kv_heads) * head_dim], ld_qkv.
  int64_t ld_qkv = 0;
  Bf16* q_out = nullptr;  // [rows][num_q_heads][head_dim], contiguous rows.
  Bf16* k_cache = nullptr;  // [capacity][num_kv_heads][head_dim]
  Bf16* v_cache = nullptr;  // same
  int64_t cache_row0 = 0;
  int64_t rows = 0;
  int64_t position0 = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // Even, at most 256.
  const float* cos = nullptr;  // [positions][head_dim / 2], row `position` read.
  const float* sin = nullptr;
  int64_t table_rows = 0;  // Rows in cos/sin; position0 + rows must not exceed it.
};
absl::Status RopeQkv(const RopeQkvParams& p, Stream stream);

// out[i][j] = bf16(silu(g) * u) with g = gate_up[i][j], u = gate_up[i][inter + j] (bf16 in).
struct SwiGluParams {
  const Bf16* gate_up = nullptr;  // [rows][2 * inter], row stride ld_gate_up.
  int64_t ld_gate_up = 0;
  Bf16* out = nullptr;  // [rows][inter], row stride ld_out.
  int64_t ld_out = 0;
  int64_t rows = 0;
  int64_t inter = 0;
};
absl::Status SwiGlu(const SwiGluParams& p, Stream stream);

// dst[i] = bf16(src[i]) (round to nearest even, as kernels::FloatToBf16).
absl::Status F32ToBf16(const float* src, Bf16* dst, int64_t count, Stream stream);
// dst[i] = float(src[i]).
absl::Status Bf16ToF32(const Bf16* src, float* dst, int64_t count, Stream stream);

// Fills `count` bf16 elements with bf16(UniformPm1(RandomBits(key, offset + i)) * scale
// + shift) (kernels/random.h): element for element what model/weights.h's SeededWeights
// computes in fp32, rounded to bf16 once. Lets a large random model be built on the device.
absl::Status FillSeeded(Bf16* dst, int64_t count, uint64_t key, uint64_t offset, float scale,
                        float shift, Stream stream);

// Index of the largest value of each row of fp32 logits (lowest index among equal ones, NaN
// never chosen; an all-NaN row gives 0), written as int32 to out[r].
struct ArgMaxParams {
  const float* logits = nullptr;  // [rows][cols], row stride ld.
  int64_t ld = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  int32_t* out = nullptr;  // [rows]
};
absl::Status ArgMax(const ArgMaxParams& p, Stream stream);

// Copies num_blocks block objects (docs/block-object.md, bf16: per layer K then V, each
// [block_tokens][row_elems]) lying one after another in device memory at `blocks` into a KV
// store whose part (2 * layer + 0 for K, + 1 for V) is a [capacity][row_elems] array at
// kv + part * capacity * row_elems, at rows row0 .. row0 + num_blocks * block_tokens - 1.
// The device-side half of moving blocks from host memory into a sequence: whole blocks
// cross PCIe in one copy each, then this spreads them at device bandwidth.
struct ScatterKvBlocksParams {
  const Bf16* blocks = nullptr;
  int64_t num_blocks = 0;
  int num_layers = 0;
  int64_t block_tokens = 0;
  int64_t row_elems = 0;  // num_kv_heads * head_dim; a multiple of 8.
  Bf16* kv = nullptr;
  int64_t capacity = 0;
  int64_t row0 = 0;
  // Scatter only: when set, block b's object starts at block_starts[b] (a device array of
  // num_blocks pointers, each 16-byte aligned) instead of at blocks + b * its size, so that
  // blocks lying anywhere in device memory (a cache tier's pages) need no gathering first.
  const Bf16* const* block_starts = nullptr;
};
absl::Status ScatterKvBlocks(const ScatterKvBlocksParams& p, Stream stream);
// The inverse: reads rows row0 .. of the KV store and writes them as num_blocks consecutive
// block objects at `blocks` (the field is written through; it is const only in the scatter).
absl::Status GatherKvBlocks(const ScatterKvBlocksParams& p, Bf16* blocks, Stream stream);

// ---------------------------------------------------------------------------------------
// Matrix products (cuBLAS, bf16 operands, fp32 accumulation)

// y[i][j] = sum_k x[i][k] * w[j][k]  (+ bias[j])  (+ y[i][j] when accumulate), w a PyTorch
// nn.Linear weight [n][k]. y is bf16 (y_bf16) or fp32 (y_f32): exactly one of them is set.
// Accumulate needs y_f32 (the residual stream). The bias is added by a second pass over y
// (after the product is rounded to y's type).
struct GemmParams {
  const Bf16* x = nullptr;  // [m][k], row stride ldx.
  int64_t ldx = 0;
  const Bf16* w = nullptr;  // [n][k], row stride ldw.
  int64_t ldw = 0;
  const Bf16* bias = nullptr;  // [n], or null for none.
  Bf16* y_bf16 = nullptr;
  float* y_f32 = nullptr;
  int64_t ldy = 0;
  int64_t m = 0, n = 0, k = 0;
  bool accumulate = false;
};
absl::Status Gemm(const GemmParams& p, Stream stream);

// ---------------------------------------------------------------------------------------
// Attention

// Causal grouped-query attention of num_queries consecutive positions against a KV cache that
// already holds their keys (the semantics of kernels::AttentionParams):
//   query row r sits at position pos = query_position + r and attends to keys
//   j in [first, pos], first = max(0, pos - sliding_window + 1) (0 when sliding_window is 0);
//   query head hq reads KV head hq / (num_q_heads / num_kv_heads);
//   out = softmax_j(scale * q.k_j) . v_j, accumulated in fp32, stored as bf16.
// A long run of queries (prefill) uses a FlashAttention-style tiled kernel; a few queries
// against a long context (decode) split the keys across blocks and combine the parts, which
// needs `workspace` of AttentionWorkspaceBytes(p) bytes (may be null when that is 0).
struct AttentionParams {
  const Bf16* q = nullptr;  // [num_queries][num_q_heads][head_dim], row stride ldq.
  int64_t ldq = 0;
  const Bf16* k = nullptr;  // [num_keys][num_kv_heads][head_dim], row stride ldkv.
  const Bf16* v = nullptr;  // same layout as k.
  int64_t ldkv = 0;
  Bf16* out = nullptr;  // [num_queries][num_q_heads][head_dim], row stride ldo.
  int64_t ldo = 0;
  int64_t num_queries = 0;
  int64_t query_position = 0;  // Position of query row 0.
  int64_t num_keys = 0;        // At least query_position + num_queries.
  int num_q_heads = 0;         // A multiple of num_kv_heads.
  int num_kv_heads = 0;
  int head_dim = 0;  // 64 or 128.
  float scale = 0;   // Usually 1 / sqrt(head_dim).
  int64_t sliding_window = 0;  // 0: no window.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};
// Requirements beyond the fields' comments (INVALID_ARGUMENT naming the field otherwise): the
// kernels move 16-byte chunks, so q, k, v, out and workspace are 16-byte aligned and ldq, ldkv,
// ldo are multiples of 8; scale is finite and positive; num_keys < 2^30 and
// num_queries * num_q_heads < 2^31. Pointers are checked even for zero queries.
//
// Bytes of workspace Attention needs for these params (0 for the prefill path and for
// invalid params).
size_t AttentionWorkspaceBytes(const AttentionParams& p);
absl::Status Attention(const AttentionParams& p, Stream stream);
// The checks Attention makes of its params (INVALID_ARGUMENT naming the field).
absl::Status CheckAttentionParams(const AttentionParams& p);

// Causal attention of each query head restricted to its sparse index (the semantics of
// kernels::SparseAttention, kernels/sparse_attention.h), the index in device memory in the
// CSR layout BuildVerticalSlashIndex writes: entry e = head * row_blocks + r (row_blocks =
// ceil(num_queries / 64)) lists key blocks blocks[block_offsets[e] .. block_offsets[e + 1])
// and single keys columns[column_offsets[e] .. column_offsets[e + 1]), each a valid index
// (ValidateSparseIndex's rules; the kernel trusts them). head_dim 64 or 128; no sliding
// window. On Hopper the kernel computes two row blocks per block over the union of their
// lists (kernels/cuda/sparse_attention_wgmma.cu), which needs the lists' lengths (host
// values) and p.workspace of SparseAttentionWorkspaceBytes(p, index) bytes; elsewhere the
// workspace is not used.
struct SparseIndexView {
  const int64_t* block_offsets = nullptr;
  const int32_t* blocks = nullptr;
  const int64_t* column_offsets = nullptr;
  const int32_t* columns = nullptr;
  // Optional, device memory, one byte per q head: heads marked non-zero are left alone (their
  // output is not written; the caller computes them another way, e.g. dense).
  const uint8_t* skip_heads = nullptr;
  // block_offsets[last] and column_offsets[last]: the lists' lengths.
  int64_t total_blocks = 0;
  int64_t total_columns = 0;
};
// 0 when the kernel that runs needs none (or for invalid params).
size_t SparseAttentionWorkspaceBytes(const AttentionParams& p, const SparseIndexView& index);
absl::Status SparseAttention(const AttentionParams& p, const SparseIndexView& index,
                             Stream stream);
// Per q head, the 64 x 64 tiles SparseAttention computes for `index`: on Hopper each pair of
// row blocks computes the union of both lists for both (more than the index lists when
// neighbouring row blocks list different blocks, up to twice; rounded to whole 128-key
// tiles), which is what its time follows. Skipped heads count 0. Needs SparseAttention's
// workspace and waits for the counts. FAILED_PRECONDITION where the Hopper kernel does not
// run (the mma.sync kernel computes exactly the listed blocks plus columns / 64 per row
// block, rounded up).
absl::StatusOr<std::vector<int64_t>> SparseAttentionComputedTiles(const AttentionParams& p,
                                                                   const SparseIndexView& index,
                                                                   Stream stream);

// ---------------------------------------------------------------------------------------
// Sparse prefill index building (semantics and CPU reference: kernels/sparse_attention.h)

// For every query head at once: the attention of the call's last `last_q` queries, summed
// per key and per distance (pos - key), as kernels::EstimateAttentionMass computes it for
// one head. Scores come from cuBLAS (bf16 in, fp32 out) into the workspace, a few heads at a
// time; the sums are then taken in a fixed order (no atomics: the same inputs give the same
// bits every run).
struct AttentionMassParams {
  const Bf16* q = nullptr;  // [num_queries][num_q_heads][head_dim], row stride ldq.
  int64_t ldq = 0;
  const Bf16* k = nullptr;  // [keys][num_kv_heads][head_dim], row stride ldkv.
  int64_t ldkv = 0;
  int64_t num_queries = 0;
  int64_t query_position = 0;  // keys = query_position + num_queries.
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 0;
  int64_t last_q = 64;       // 1 .. min(64, num_queries).
  float* per_key = nullptr;       // [num_q_heads][keys]
  float* per_distance = nullptr;  // [num_q_heads][keys]
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};
// Workspace for at least one head's scores; more lets more heads go per round.
size_t AttentionMassMinWorkspaceBytes(const AttentionMassParams& p);
absl::Status EstimateAttentionMass(const AttentionMassParams& p, Stream stream);

// Per segment s of `values` ([segments][n], fp32): the `count` indices of kernels::TopIndices
// (indices [0, keep) first, then higher values, equal values by lower index; NaN counts as
// -infinity), written ascending to out[s][0 .. count).
struct TopIndicesParams {
  const float* values = nullptr;
  int64_t n = 0;
  int segments = 0;
  int64_t count = 0;  // <= n.
  int64_t keep = 0;   // <= count.
  int32_t* out = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Optional, host arrays of `segments` entries: segment s takes its own count_s <= count
  // and keep_s <= count_s (out[s][count_s .. count) is filled with INT32_MAX); `count` is
  // then the row stride of `out`. Null: every segment takes count and keep.
  const int64_t* segment_counts = nullptr;
  const int64_t* segment_keeps = nullptr;
};
size_t TopIndicesWorkspaceBytes(const TopIndicesParams& p);
absl::Status TopIndices(const TopIndicesParams& p, Stream stream);

// The vertical-slash index of every head (kernels::VerticalSlashIndex per head) in CSR over
// (head, row block): entry list e = head * row_blocks + r has its key blocks at
// blocks[block_offsets[e] .. block_offsets[e + 1]) and its columns at
// columns[column_offsets[e] .. column_offsets[e + 1]), both ascending. Counts go first and
// are summed on the device; the totals come back to the host (the call waits for them) and
// the lists are filled only when they fit the capacities (else RESOURCE_EXHAUSTED naming the
// totals, offsets written, lists not).
struct VerticalSlashIndexParams {
  const int32_t* verticals = nullptr;  // [heads][num_verticals], ascending per head.
  int64_t num_verticals = 0;
  const int32_t* slashes = nullptr;    // [heads][num_slashes], ascending per head.
  int64_t num_slashes = 0;
  // Optional, host arrays of `heads` entries: head h uses the first head_verticals[h] <=
  // num_verticals of its verticals and head_slashes[h] <= num_slashes of its slashes
  // (num_verticals / num_slashes stay the row strides). Null: all of them.
  const int64_t* head_verticals = nullptr;
  const int64_t* head_slashes = nullptr;
  int heads = 0;
  int64_t num_queries = 0;
  int64_t query_position = 0;
  int64_t* block_offsets = nullptr;   // [heads * row_blocks + 1]
  int64_t* column_offsets = nullptr;  // [heads * row_blocks + 1]
  int32_t* blocks = nullptr;
  int64_t blocks_capacity = 0;
  int32_t* columns = nullptr;
  int64_t columns_capacity = 0;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Out: the totals.
  int64_t total_blocks = 0;
  int64_t total_columns = 0;
};
size_t VerticalSlashIndexWorkspaceBytes(const VerticalSlashIndexParams& p);
absl::Status BuildVerticalSlashIndex(VerticalSlashIndexParams& p, Stream stream);

// The A-shape index (kernels::AShapeIndex of the shape, the same for every head) of `heads`
// heads, in the CSR layout above. There are no columns: column_offsets are all written 0
// (SparseAttention still wants a non-null columns pointer; it reads none). Counts and offsets
// on the device, the total back to the host (the call waits for it), the lists only when they
// fit blocks_capacity (else RESOURCE_EXHAUSTED naming the total; offsets written, lists not).
// INVALID_ARGUMENT naming the field: heads, num_queries, query_position, keys, n_init, local,
// block_offsets, column_offsets, blocks, blocks_capacity, workspace.
struct AShapeIndexParams {
  int heads = 0;                 // 1 .. 65535.
  int64_t num_queries = 0;       // >= 1.
  int64_t query_position = 0;    // >= 0; keys = query_position + num_queries <= 2^30.
  int64_t n_init = 128;          // kernels::AShapeParams: >= 0.
  int64_t local = 3968;          // >= 1.
  int64_t* block_offsets = nullptr;   // [heads * row_blocks + 1]
  int64_t* column_offsets = nullptr;  // [heads * row_blocks + 1], written all 0.
  int32_t* blocks = nullptr;          // May be null when blocks_capacity is 0.
  int64_t blocks_capacity = 0;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int64_t total_blocks = 0;  // Out.
};
size_t AShapeIndexWorkspaceBytes(const AShapeIndexParams& p);
absl::Status BuildAShapeIndex(AShapeIndexParams& p, Stream stream);

// The block-sparse index of every query head at once (kernels::BuildBlockSparseIndex per
// head, the same blocks bit for bit), in the CSR layout above (no columns; column_offsets
// all 0). Steps: per-entry counts (data independent: max(top_blocks, own blocks) capped by the
// visible blocks), offsets, the total back to the host (the call waits for it) and the
// capacity check (RESOURCE_EXHAUSTED naming the total, before any pooling: offsets written,
// lists and scores not); then queries and keys mean-pooled over 64 rows, the pooled scores of
// a round of heads (a register-tiled fp32 product, no cuBLAS: kernels::PooledBlockScores's
// documented arithmetic, so the same bits), and per (head, row block) the top blocks by a
// radix select in the reference's order (higher score, then lower block, NaN last).
// The pooled scores go to `scores` when set (every head at once), else to the workspace, as
// many heads a round as it holds. The arithmetic is IEEE fp32 rounded to nearest with
// denormals kept: the kernels must not be built with --use_fast_math / -ftz=true.
// INVALID_ARGUMENT naming the field: num_q_heads, num_queries, query_position, keys,
// block_offsets, column_offsets, blocks_capacity, blocks, head_dim, scale, top_blocks, q, k,
// ldq, ldkv, workspace. q and k need no alignment beyond their element's.
struct BlockSparseIndexParams {
  const Bf16* q = nullptr;  // [num_queries][num_q_heads][head_dim], row stride ldq.
  int64_t ldq = 0;
  const Bf16* k = nullptr;  // [keys][num_kv_heads][head_dim], row stride ldkv.
  int64_t ldkv = 0;
  int64_t num_queries = 0;       // >= 1.
  int64_t query_position = 0;    // >= 0; keys = query_position + num_queries <= 2^30.
  int num_q_heads = 0;           // A multiple of num_kv_heads, at most 65535.
  int num_kv_heads = 0;
  int head_dim = 0;              // A multiple of 16, at most 256.
  float scale = 0;               // Finite and positive.
  int64_t top_blocks = 64;       // kernels::BlockSparseParams: >= 1.
  // Optional out: [num_q_heads][row_blocks][key_blocks] (key_blocks = ceil(keys / 64)), what
  // kernels::PooledBlockScores gives per head (-infinity where invisible). Needs
  // row_blocks * key_blocks < 2^31 (so does the workspace path).
  float* scores = nullptr;
  int64_t* block_offsets = nullptr;   // [num_q_heads * row_blocks + 1]
  int64_t* column_offsets = nullptr;  // [num_q_heads * row_blocks + 1], written all 0.
  int32_t* blocks = nullptr;          // May be null when blocks_capacity is 0.
  int64_t blocks_capacity = 0;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int64_t total_blocks = 0;  // Out.
};
// Workspace for pooled scores of `heads_per_round` heads a round (clamped to
// [1, num_q_heads]; ignored when p.scores is set): the pooled means (4 * head_dim *
// (num_q_heads * row_blocks + num_kv_heads * key_blocks) bytes), the counts and their scan,
// plus 4 * row_blocks * key_blocks bytes per head of a round. 0 for invalid params.
size_t BlockSparseIndexWorkspaceBytes(const BlockSparseIndexParams& p, int heads_per_round);
absl::Status BuildBlockSparseIndex(BlockSparseIndexParams& p, Stream stream);

// ---------------------------------------------------------------------------------------
// Checksums

// out[i] = XXH3-64 (seed 0) of bytes [i * block_bytes, (i + 1) * block_bytes) of `data`: what
// core's BlockChecksum gives for the same bytes (bit for bit: integer arithmetic only, so
// the bf16 tolerance above does not apply). block_bytes must be more than 240 (XXH3's
// long inputs; KV blocks always are). data 8-byte aligned, out in device memory.
// INVALID_ARGUMENT naming the field for num_blocks < 0 or > 2^31 - 1, block_bytes <= 240,
// num_blocks * block_bytes overflowing size_t, a null or misaligned data / out (when
// num_blocks > 0); num_blocks == 0 is OK and launches nothing. Fastest when data and
// block_bytes are multiples of 16 (16-byte loads); any multiple of 8 uses 8-byte loads and
// other sizes byte loads. Each block is hashed by one warp, so a few hundred blocks or more
// are needed to reach the device's memory bandwidth.
absl::Status BlockChecksums(const void* data, size_t block_bytes, int64_t num_blocks,
                            uint64_t* out, Stream stream);
// The same for blocks scattered over device memory (a cache tier's pages): block i starts at
// starts[i], where `starts` is an array of num_blocks pointers in device memory whose
// values are all multiples of `alignment` (1, 8 or 16: the widest loads that allows). One
// launch hashes every block, so thousands of large blocks reach the memory bandwidth where
// a scratch-sized batch of them does not.
absl::Status BlockChecksumsAt(const void* const* starts, size_t alignment, size_t block_bytes,
                              int64_t num_blocks, uint64_t* out, Stream stream);

}  // namespace tierkv::kernels::cuda

#endif  // TIERKV_KERNELS_CUDA_OPS_H_
