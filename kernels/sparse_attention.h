// Dynamic sparse prefill attention, CPU reference: per-head sparse indices of three shapes
// (after MInference, Jiang et al. 2024), how each is built from the head's queries and keys,
// and causal attention restricted to an index.
//
// An index names, for every block of 64 query rows, the key blocks (64 keys each) to compute
// in full and the single key columns to add; causality is applied on top (a query never sees
// a later key, whatever the index says). Shapes:
//   - A-shape: the first n_init keys and a local window behind each query;
//   - vertical-slash: from the last 64 queries' attention, the keys most attended to
//     (vertical lines, the first keep_first always) and the query-key distances most attended
//     to (slash lines, the nearest keep_near always, so the diagonal is always in). Slashes
//     become the key blocks they pass through; verticals outside those blocks stay columns;
//   - block-sparse: queries and keys mean-pooled over 64-token blocks, and for each query
//     block the key blocks with the highest pooled score (the blocks of its own positions
//     always).
// Every selection is deterministic: higher score first, equal scores by lower index, so
// another implementation fed the same scores selects the same blocks and columns.
//
// Layouts as kernels::AttentionParams (ops.h): q [num_queries][num_q_heads][head_dim], k and
// v [num_keys][num_kv_heads][head_dim], query row r at position query_position + r.
#ifndef TIERKV_KERNELS_SPARSE_ATTENTION_H_
#define TIERKV_KERNELS_SPARSE_ATTENTION_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "kernels/thread_pool.h"

namespace tierkv::kernels {

inline constexpr int64_t kSparseBlock = 64;

// One head's index over the query rows of a call. Row block r holds query rows
// [64 r, min(64 r + 64, num_queries)).
struct SparseHeadIndex {
  // Key blocks of row block r: blocks[block_begin[r] .. block_begin[r + 1]), ascending.
  std::vector<int64_t> block_begin;  // num_row_blocks + 1 entries, starting at 0.
  std::vector<int32_t> blocks;
  // Single keys of row block r: columns[column_begin[r] .. column_begin[r + 1]), ascending,
  // none inside one of the row block's key blocks.
  std::vector<int64_t> column_begin;
  std::vector<int32_t> columns;

  int64_t num_row_blocks() const {
    return block_begin.empty() ? 0 : static_cast<int64_t>(block_begin.size()) - 1;
  }
  std::span<const int32_t> BlocksOf(int64_t r) const {
    return std::span<const int32_t>(blocks).subspan(block_begin[r],
                                                    block_begin[r + 1] - block_begin[r]);
  }
  std::span<const int32_t> ColumnsOf(int64_t r) const {
    return std::span<const int32_t>(columns).subspan(column_begin[r],
                                                     column_begin[r + 1] - column_begin[r]);
  }
};

// Where the query rows of a call sit among the keys.
struct SparseShape {
  int64_t num_queries = 0;
  int64_t query_position = 0;  // Position of query row 0; keys [0, query_position + num_queries).
};

// Checks an index against a shape: one row block per 64 queries, ascending entries, every
// block and column visible to some row of its row block (no later than its last position),
// no column inside a listed block, and the key blocks holding the row block's own positions
// listed (its diagonal block, and, when query_position is not a multiple of 64, the block of
// its first row too: a query always sees itself). INVALID_ARGUMENT naming the first
// violation.
absl::Status ValidateSparseIndex(const SparseHeadIndex& index, const SparseShape& shape);

// Fraction of the causal attention's work the index computes: query-key pairs (causal)
// covered by its blocks and columns over all causal pairs of the call.
double CoveredFraction(const SparseHeadIndex& index, const SparseShape& shape);

// The full causal index (every visible block): sparse attention over it is dense attention.
SparseHeadIndex FullIndex(const SparseShape& shape);

struct AShapeParams {
  int64_t n_init = 128;   // Keys [0, n_init) for every query.
  int64_t local = 3968;   // Keys (pos - local, pos] for the query at pos.
};
// The key blocks holding any key an A-shape head needs for some row of each row block.
absl::StatusOr<SparseHeadIndex> AShapeIndex(const SparseShape& shape, const AShapeParams& params);

struct VerticalSlashParams {
  int64_t vertical = 1000;   // Key columns kept.
  int64_t slash = 6096;      // Query-key distances kept.
  int64_t keep_first = 30;   // Columns [0, keep_first) are always among the verticals.
  int64_t keep_near = 100;   // Distances [0, keep_near) are always among the slashes.
  int64_t last_q = 64;       // Queries the estimate looks at (the call's last ones).
};

// What the last queries of one head attend to: for each key its attention summed over those
// queries (softmax per query, causal), and for each distance d = pos - key the same sum
// along that diagonal. Both indexed from 0 (distance up to query_position + num_queries - 1).
struct AttentionMass {
  std::vector<float> per_key;
  std::vector<float> per_distance;
};
// For query head `head` of `p` (q, k and the shape fields of AttentionParams are used).
// INVALID_ARGUMENT when p is malformed or last_q exceeds the call's queries.
absl::StatusOr<AttentionMass> EstimateAttentionMass(const AttentionParams& p, int head,
                                                    int64_t last_q);

// The top `count` indices by value (forced indices [0, keep) first, in index order), then
// by higher value, equal values by lower index, NaN after every number; returned ascending.
std::vector<int32_t> TopIndices(std::span<const float> values, int64_t count, int64_t keep);

// Turns selected verticals (key columns) and slashes (distances) into an index: each row
// block gets the key blocks its slashes pass through (for some row of the block, at a
// visible key) and the verticals it can see that are outside those blocks.
absl::StatusOr<SparseHeadIndex> VerticalSlashIndex(const SparseShape& shape,
                                                   std::span<const int32_t> verticals,
                                                   std::span<const int32_t> slashes);

// Estimate + selection + conversion for one head.
absl::StatusOr<SparseHeadIndex> BuildVerticalSlashIndex(const AttentionParams& p, int head,
                                                        const VerticalSlashParams& params);

struct BlockSparseParams {
  // Key blocks per row block, the blocks of its own positions included (at least those).
  int64_t top_blocks = 64;
};
// Pooled block scores of query head `head`: score[r][b] = scale * mean_q(row block r) .
// mean_k(key block b) for visible key blocks b (b <= the block of the row block's last
// position), row-major, num_row_blocks x num_key_blocks (key blocks of all
// query_position + num_queries keys); invisible entries are -infinity. Row block r pools
// query rows [64 r, min(64 r + 64, num_queries)) (rows of the call, so a call starting at a
// position inside a key block pools rows that straddle two key blocks); key block b pools
// keys [64 b, min(64 b + 64, keys)).
// The arithmetic is fixed, every step one fp32 operation rounded to nearest (no contraction,
// no reassociation), so that the GPU builder reproduces it bit for bit:
//   mean[e]  = (((0 + x_0[e]) + x_1[e]) + ... + x_{n-1}[e]) / n    (rows in increasing order)
//   dot      = fma(q[d-1], k[d-1], ... fma(q[1], k[1], fma(q[0], k[0], 0)))
//   score    = scale * dot.
absl::StatusOr<std::vector<float>> PooledBlockScores(const AttentionParams& p, int head);
// Per row block: the key blocks of its own positions (its diagonal block and, when it starts
// inside a key block, the block of its first row) whatever their scores, then the best of
// its other visible blocks by PooledBlockScores (higher first, equal scores by lower block,
// NaN after every number) until it holds max(top_blocks, forced) blocks or all its visible
// ones. INVALID_ARGUMENT for top_blocks < 1 or what PooledBlockScores refuses.
absl::StatusOr<SparseHeadIndex> BuildBlockSparseIndex(const AttentionParams& p, int head,
                                                      const BlockSparseParams& params);

// A head's pattern and its budgets, as a pattern file names them.
enum class SparsePattern { kDense, kAShape, kVerticalSlash, kBlockSparse };
struct HeadPattern {
  SparsePattern pattern = SparsePattern::kVerticalSlash;
  AShapeParams a_shape;
  VerticalSlashParams vertical_slash;
  BlockSparseParams block_sparse;
};
// "dense", "a_shape", "vertical_slash", "block_sparse".
std::string_view SparsePatternName(SparsePattern pattern);
// The pattern of that name, or INVALID_ARGUMENT listing the names.
absl::StatusOr<SparsePattern> ParseSparsePattern(std::string_view name);
// The index of query head `head` under `pattern` (kDense: FullIndex).
absl::StatusOr<SparseHeadIndex> BuildIndex(const AttentionParams& p, int head,
                                           const HeadPattern& pattern);

// Causal attention of every query head restricted to its index (index[h] for query head h):
// the semantics of Attention (ops.h) with each row's keys limited to its row block's blocks
// and columns. p.kt must be null. INVALID_ARGUMENT for malformed params or an index that
// fails ValidateSparseIndex.
absl::Status SparseAttention(const AttentionParams& p, std::span<const SparseHeadIndex> index,
                             ThreadPool* pool);

}  // namespace tierkv::kernels

#endif  // TIERKV_KERNELS_SPARSE_ATTENTION_H_
