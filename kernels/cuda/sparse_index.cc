// Host side of the sparse index kernels: parameter checks (before any CUDA call), workspace
// layout, and the order of the steps.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/cuda/internal/check.h"
#include "kernels/cuda/internal/sparse_index_launch.h"
#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda {
namespace {

absl::Status Bad(std::string_view field, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(std::string(field), ": ", std::string(why)));
}

constexpr size_t kAlign = 256;
size_t Up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Carves aligned pieces off a workspace.
class Carver {
 public:
  Carver(void* base, size_t bytes) : at_(static_cast<uint8_t*>(base)), left_(bytes) {}
  template <typename T>
  T* Take(size_t count) {
    const size_t bytes = Up(count * sizeof(T));
    if (bytes > left_) {
      ok_ = false;
      return nullptr;
    }
    T* p = reinterpret_cast<T*>(at_);
    at_ += bytes;
    left_ -= bytes;
    return p;
  }
  bool ok() const { return ok_; }
  size_t left() const { return left_; }
  uint8_t* at() const { return at_; }

 private:
  uint8_t* at_;
  size_t left_;
  bool ok_ = true;
};

cudaStream_t AsCuda(Stream s) { return reinterpret_cast<cudaStream_t>(s); }

absl::Status CheckMass(const AttentionMassParams& p) {
  if (p.num_queries < 1 || p.query_position < 0) return Bad("num_queries", "must be positive");
  if (p.num_q_heads < 1 || p.num_kv_heads < 1 || p.num_q_heads % p.num_kv_heads != 0) {
    return Bad("num_q_heads", "must be a positive multiple of num_kv_heads");
  }
  if (p.head_dim < 1) return Bad("head_dim", "must be positive");
  if (p.last_q < 1 || p.last_q > std::min<int64_t>(64, p.num_queries)) {
    return Bad("last_q", absl::StrCat(p.last_q, " outside [1, min(64, num_queries)]"));
  }
  if (!(p.scale > 0) || !std::isfinite(p.scale)) return Bad("scale", "must be finite and positive");
  if (p.q == nullptr || p.k == nullptr || p.per_key == nullptr || p.per_distance == nullptr) {
    return Bad("q/k/per_key/per_distance", "null");
  }
  if (p.ldq < static_cast<int64_t>(p.num_q_heads) * p.head_dim ||
      p.ldkv < static_cast<int64_t>(p.num_kv_heads) * p.head_dim) {
    return Bad("ldq/ldkv", "smaller than a row");
  }
  if (p.query_position + p.num_queries > (int64_t{1} << 30)) return Bad("keys", "2^30 or more");
  return absl::OkStatus();
}

size_t StatsBytes(const AttentionMassParams& p) {
  return Up(static_cast<size_t>(p.num_q_heads) * p.last_q * sizeof(float2));
}
size_t HeadScoreBytes(const AttentionMassParams& p) {
  return Up(static_cast<size_t>(p.last_q) * (p.query_position + p.num_queries) * sizeof(float));
}

}  // namespace

size_t AttentionMassMinWorkspaceBytes(const AttentionMassParams& p) {
  if (!CheckMass(p).ok()) return 0;
  return StatsBytes(p) + HeadScoreBytes(p);
}

absl::Status EstimateAttentionMass(const AttentionMassParams& p, Stream stream) {
  TIERKV_RETURN_IF_ERROR(CheckMass(p));
  const size_t need = AttentionMassMinWorkspaceBytes(p);
  if (p.workspace == nullptr || p.workspace_bytes < need) {
    return Bad("workspace", absl::StrCat(p.workspace_bytes, " bytes; at least ", need,
                                         " are needed"));
  }
  const int64_t keys = p.query_position + p.num_queries;
  const int rows = static_cast<int>(p.last_q);
  const int64_t pos0 = keys - rows;
  const int group = p.num_q_heads / p.num_kv_heads;
  Carver w(p.workspace, p.workspace_bytes);
  float2* stats = w.Take<float2>(static_cast<size_t>(p.num_q_heads) * rows);
  const int per_round = static_cast<int>(
      std::min<size_t>(p.num_q_heads, w.left() / HeadScoreBytes(p)));
  float* scores = reinterpret_cast<float*>(w.at());
  const size_t head_floats = HeadScoreBytes(p) / sizeof(float);
  const int64_t ld = keys;
  for (int h0 = 0; h0 < p.num_q_heads; h0 += per_round) {
    const int h1 = std::min(p.num_q_heads, h0 + per_round);
    for (int h = h0; h < h1; ++h) {
      GemmParams g;
      g.x = p.q + (p.num_queries - rows) * p.ldq + static_cast<int64_t>(h) * p.head_dim;
      g.ldx = p.ldq;
      g.w = p.k + static_cast<int64_t>(h / group) * p.head_dim;
      g.ldw = p.ldkv;
      g.y_f32 = scores + (h - h0) * head_floats;
      g.ldy = ld;
      g.m = rows;
      g.n = keys;
      g.k = p.head_dim;
      TIERKV_RETURN_IF_ERROR(Gemm(g, stream));
    }
    // The round's heads in one launch each (a head's 64 rows alone would leave most of the
    // GPU idle); their scores lie head_floats apart (rows * ld plus alignment padding).
    const int n = h1 - h0;
    const int64_t stride = static_cast<int64_t>(head_floats);
    TIERKV_RETURN_IF_ERROR(CudaStatus(
        internal::LaunchRowStats(scores, ld, stride, rows, n, pos0, p.scale,
                                 stats + static_cast<int64_t>(h0) * rows, AsCuda(stream)),
        "RowStats launch"));
    TIERKV_RETURN_IF_ERROR(CudaStatus(
        internal::LaunchMass(scores, ld, stride, rows, n, pos0, keys, p.scale,
                             stats + static_cast<int64_t>(h0) * rows,
                             p.per_key + static_cast<int64_t>(h0) * keys,
                             p.per_distance + static_cast<int64_t>(h0) * keys, AsCuda(stream)),
        "Mass launch"));
  }
  return absl::OkStatus();
}

namespace {

absl::Status CheckTop(const TopIndicesParams& p) {
  if (p.n < 1 || p.segments < 1) return Bad("n/segments", "must be positive");
  if (p.count < 0 || p.count > p.n) return Bad("count", "outside [0, n]");
  if (p.keep < 0 || p.keep > p.count) return Bad("keep", "outside [0, count]");
  if (p.n * p.segments > (int64_t{1} << 31) - 1) return Bad("n", "n * segments above 2^31 - 1");
  if (p.values == nullptr || (p.count > 0 && p.out == nullptr)) return Bad("values/out", "null");
  if ((p.segment_counts == nullptr) != (p.segment_keeps == nullptr)) {
    return Bad("segment_counts/segment_keeps", "set one without the other");
  }
  if (p.segment_counts != nullptr) {
    for (int s = 0; s < p.segments; ++s) {
      if (p.segment_counts[s] < 0 || p.segment_counts[s] > p.count) {
        return Bad("segment_counts", absl::StrCat("[", s, "] = ", p.segment_counts[s],
                                                  " outside [0, count = ", p.count, "]"));
      }
      if (p.segment_keeps[s] < 0 || p.segment_keeps[s] > p.segment_counts[s]) {
        return Bad("segment_keeps", absl::StrCat("[", s, "] = ", p.segment_keeps[s],
                                                 " outside [0, segment_counts[", s, "]]"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

size_t TopIndicesWorkspaceBytes(const TopIndicesParams& p) {
  if (!CheckTop(p).ok()) return 0;
  const size_t total = static_cast<size_t>(p.n) * p.segments;
  return 2 * Up(total * 8) + 2 * Up(total * 4) + 2 * Up(p.segments * 8) +
         Up(internal::TopSortTempBytes(p.n, p.segments));
}

absl::Status TopIndices(const TopIndicesParams& p, Stream stream) {
  TIERKV_RETURN_IF_ERROR(CheckTop(p));
  const size_t need = TopIndicesWorkspaceBytes(p);
  if (p.workspace == nullptr || p.workspace_bytes < need) {
    return Bad("workspace", absl::StrCat(p.workspace_bytes, " bytes; ", need, " are needed"));
  }
  if (p.count == 0) return absl::OkStatus();
  const size_t total = static_cast<size_t>(p.n) * p.segments;
  Carver w(p.workspace, p.workspace_bytes);
  internal::TopScratch s;
  s.keys = w.Take<uint64_t>(total);
  s.keys_sorted = w.Take<uint64_t>(total);
  s.indices = w.Take<int32_t>(total);
  s.indices_sorted = w.Take<int32_t>(total);
  s.counts = nullptr;
  s.keeps = nullptr;
  int64_t* counts = w.Take<int64_t>(p.segments);
  int64_t* keeps = w.Take<int64_t>(p.segments);
  const cudaStream_t st = AsCuda(stream);
  if (p.segment_counts != nullptr) {
    // From pageable memory: staged before the calls return, so the caller's arrays may go.
    TIERKV_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(counts, p.segment_counts, p.segments * 8,
                                                      cudaMemcpyHostToDevice, st),
                                      "segment counts"));
    TIERKV_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(keeps, p.segment_keeps, p.segments * 8,
                                                      cudaMemcpyHostToDevice, st),
                                      "segment keeps"));
    s.counts = counts;
    s.keeps = keeps;
  }
  s.temp_bytes = w.left();
  s.temp = w.at();
  return CudaStatus(
      internal::LaunchTopIndices(p.values, p.n, p.segments, p.count, p.keep, p.out, s, st),
      "TopIndices");
}

namespace {

int64_t RowBlocks(int64_t num_queries) { return (num_queries + 63) / 64; }

absl::Status CheckIndex(const VerticalSlashIndexParams& p) {
  if (p.heads < 1 || p.num_queries < 1 || p.query_position < 0) {
    return Bad("heads/num_queries", "must be positive");
  }
  if (p.num_verticals < 0 || p.num_slashes < 0) return Bad("num_verticals/num_slashes", "negative");
  if ((p.num_verticals > 0 && p.verticals == nullptr) ||
      (p.num_slashes > 0 && p.slashes == nullptr)) {
    return Bad("verticals/slashes", "null");
  }
  if (p.block_offsets == nullptr || p.column_offsets == nullptr) return Bad("offsets", "null");
  for (int h = 0; p.head_verticals != nullptr && h < p.heads; ++h) {
    if (p.head_verticals[h] < 0 || p.head_verticals[h] > p.num_verticals) {
      return Bad("head_verticals", absl::StrCat("[", h, "] = ", p.head_verticals[h],
                                                " outside [0, num_verticals]"));
    }
  }
  for (int h = 0; p.head_slashes != nullptr && h < p.heads; ++h) {
    if (p.head_slashes[h] < 0 || p.head_slashes[h] > p.num_slashes) {
      return Bad("head_slashes", absl::StrCat("[", h, "] = ", p.head_slashes[h],
                                              " outside [0, num_slashes]"));
    }
  }
  const int64_t keys = p.query_position + p.num_queries;
  if (keys > (int64_t{1} << 30)) return Bad("keys", "2^30 or more");
  if (RowBlocks(p.num_queries) * p.heads > (int64_t{1} << 31) - 2) {
    return Bad("heads", "too many row blocks");
  }
  // The bitmap of a row block's key blocks lives in shared memory.
  if ((keys + 63) / 64 > 48 * 1024 * 8) return Bad("keys", "too many key blocks");
  return absl::OkStatus();
}

}  // namespace

size_t VerticalSlashIndexWorkspaceBytes(const VerticalSlashIndexParams& p) {
  if (!CheckIndex(p).ok()) return 0;
  const int64_t n = RowBlocks(p.num_queries) * p.heads;
  return 2 * Up((n + 1) * 8) + Up(p.heads * std::max<int64_t>(p.num_slashes, 1) * 8) +
         Up(p.heads * 4) + 2 * Up(p.heads * 8) + Up(internal::ScanTempBytes(n + 1));
}

absl::Status BuildVerticalSlashIndex(VerticalSlashIndexParams& p, Stream stream) {
  TIERKV_RETURN_IF_ERROR(CheckIndex(p));
  const size_t need = VerticalSlashIndexWorkspaceBytes(p);
  if (p.workspace == nullptr || p.workspace_bytes < need) {
    return Bad("workspace", absl::StrCat(p.workspace_bytes, " bytes; ", need, " are needed"));
  }
  const int64_t row_blocks = RowBlocks(p.num_queries);
  const int64_t n = row_blocks * p.heads;
  Carver w(p.workspace, p.workspace_bytes);
  internal::IndexLaunch l;
  l.verticals = p.verticals;
  l.num_verticals = p.num_verticals;
  l.slashes = p.slashes;
  l.num_slashes = p.num_slashes;
  l.heads = p.heads;
  l.num_queries = p.num_queries;
  l.query_position = p.query_position;
  l.row_blocks = static_cast<int>(row_blocks);
  l.key_blocks = static_cast<int>((p.query_position + p.num_queries + 63) / 64);
  l.block_counts = w.Take<int64_t>(n + 1);
  l.column_counts = w.Take<int64_t>(n + 1);
  l.runs = w.Take<int2>(p.heads * std::max<int64_t>(p.num_slashes, 1));
  l.run_counts = w.Take<int>(p.heads);
  int64_t* head_verticals = w.Take<int64_t>(p.heads);
  int64_t* head_slashes = w.Take<int64_t>(p.heads);
  l.head_verticals = nullptr;
  l.head_slashes = nullptr;
  l.block_offsets = p.block_offsets;
  l.column_offsets = p.column_offsets;
  l.blocks = p.blocks;
  l.columns = p.columns;
  l.scan_temp_bytes = w.left();
  l.scan_temp = w.at();
  const cudaStream_t s = AsCuda(stream);
  // Per-head line counts from pageable memory: staged before the calls return.
  if (p.head_verticals != nullptr) {
    TIERKV_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(head_verticals, p.head_verticals,
                                                      p.heads * 8, cudaMemcpyHostToDevice, s),
                                      "head verticals"));
    l.head_verticals = head_verticals;
  }
  if (p.head_slashes != nullptr) {
    TIERKV_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(head_slashes, p.head_slashes, p.heads * 8,
                                                      cudaMemcpyHostToDevice, s),
                                      "head slashes"));
    l.head_slashes = head_slashes;
  }
  TIERKV_RETURN_IF_ERROR(CudaStatus(cudaMemsetAsync(l.block_counts, 0, (n + 1) * 8, s), "memset"));
  TIERKV_RETURN_IF_ERROR(
      CudaStatus(cudaMemsetAsync(l.column_counts, 0, (n + 1) * 8, s), "memset"));
  TIERKV_RETURN_IF_ERROR(CudaStatus(internal::LaunchIndexCounts(l, s), "index counts"));
  int64_t totals[2] = {0, 0};
  TIERKV_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(&totals[0], p.block_offsets + n, 8, cudaMemcpyDeviceToHost, s), "totals"));
  TIERKV_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(&totals[1], p.column_offsets + n, 8, cudaMemcpyDeviceToHost, s), "totals"));
  TIERKV_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(s), "index counts"));
  p.total_blocks = totals[0];
  p.total_columns = totals[1];
  if (totals[0] > p.blocks_capacity || totals[1] > p.columns_capacity ||
      (totals[0] > 0 && p.blocks == nullptr) || (totals[1] > 0 && p.columns == nullptr)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the index has ", totals[0], " blocks and ", totals[1], " columns; room for ",
        p.blocks_capacity, " and ", p.columns_capacity));
  }
  return CudaStatus(internal::LaunchIndexFill(l, s), "index fill");
}

namespace {

constexpr int kMaxGridY = 65535;

internal::BlockShape ShapeOf(int64_t num_queries, int64_t query_position) {
  return {num_queries, query_position, static_cast<int>(RowBlocks(num_queries)),
          static_cast<int>((query_position + num_queries + 63) / 64)};
}

// The checks both data-independent-count builders share: where the queries sit, how many
// heads, the output arrays.
absl::Status CheckListShape(int heads, int64_t num_queries, int64_t query_position,
                            std::string_view heads_field, const int64_t* block_offsets,
                            const int64_t* column_offsets, const int32_t* blocks,
                            int64_t blocks_capacity) {
  if (num_queries < 1) return Bad("num_queries", "must be positive");
  if (query_position < 0) return Bad("query_position", "must not be negative");
  if (heads < 1 || heads > kMaxGridY) return Bad(heads_field, "outside [1, 65535]");
  if (query_position + num_queries > (int64_t{1} << 30)) return Bad("keys", "2^30 or more");
  if (RowBlocks(num_queries) * heads > (int64_t{1} << 31) - 2) {
    return Bad(heads_field, "too many row blocks");
  }
  if (block_offsets == nullptr) return Bad("block_offsets", "null");
  if (column_offsets == nullptr) return Bad("column_offsets", "null");
  if (blocks_capacity < 0) return Bad("blocks_capacity", "negative");
  if (blocks == nullptr && blocks_capacity > 0) return Bad("blocks", "null");
  return absl::OkStatus();
}

size_t CountsBytes(int64_t entries) {
  return Up((entries + 1) * 8) + Up(internal::ScanTempBytes(entries + 1));
}

// Counts (already enqueued into `counts`) to offsets, zero column offsets, and the total
// back on the host into *total (also when it does not fit: the caller can grow and retry):
// RESOURCE_EXHAUSTED when it does not fit `capacity`.
absl::Status OffsetsAndTotal(const int64_t* counts, int64_t entries, int64_t* block_offsets,
                             int64_t* column_offsets, void* scan_temp, size_t scan_temp_bytes,
                             int64_t capacity, cudaStream_t s, int64_t* total_out) {
  TIERKV_RETURN_IF_ERROR(CudaStatus(internal::LaunchOffsets(counts, entries, block_offsets,
                                                            scan_temp, scan_temp_bytes, s),
                                    "offsets"));
  TIERKV_RETURN_IF_ERROR(
      CudaStatus(cudaMemsetAsync(column_offsets, 0, (entries + 1) * 8, s), "memset"));
  int64_t total = 0;
  TIERKV_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(&total, block_offsets + entries, 8, cudaMemcpyDeviceToHost, s), "total"));
  TIERKV_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(s), "index counts"));
  *total_out = total;
  if (total > capacity) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the index has ", total, " blocks; room for ", capacity));
  }
  return absl::OkStatus();
}

absl::Status CheckAShape(const AShapeIndexParams& p) {
  TIERKV_RETURN_IF_ERROR(CheckListShape(p.heads, p.num_queries, p.query_position, "heads",
                                        p.block_offsets, p.column_offsets, p.blocks,
                                        p.blocks_capacity));
  if (p.n_init < 0) return Bad("n_init", absl::StrCat(p.n_init, " is negative"));
  if (p.local < 1) return Bad("local", absl::StrCat(p.local, " must be at least 1"));
  return absl::OkStatus();
}

}  // namespace

size_t AShapeIndexWorkspaceBytes(const AShapeIndexParams& p) {
  if (!CheckAShape(p).ok()) return 0;
  return CountsBytes(RowBlocks(p.num_queries) * p.heads);
}

absl::Status BuildAShapeIndex(AShapeIndexParams& p, Stream stream) {
  TIERKV_RETURN_IF_ERROR(CheckAShape(p));
  if (p.workspace == nullptr) return Bad("workspace", "null");
  const size_t need = AShapeIndexWorkspaceBytes(p);
  if (p.workspace_bytes < need) {
    return Bad("workspace", absl::StrCat(p.workspace_bytes, " bytes; ", need, " are needed"));
  }
  const internal::BlockShape shape = ShapeOf(p.num_queries, p.query_position);
  const int64_t n = static_cast<int64_t>(shape.row_blocks) * p.heads;
  Carver w(p.workspace, p.workspace_bytes);
  int64_t* counts = w.Take<int64_t>(n + 1);
  const cudaStream_t s = AsCuda(stream);
  TIERKV_RETURN_IF_ERROR(CudaStatus(
      internal::LaunchAShapeCounts(shape, p.heads, p.n_init, p.local, counts, s), "counts"));
  TIERKV_RETURN_IF_ERROR(OffsetsAndTotal(counts, n, p.block_offsets, p.column_offsets, w.at(),
                                         w.left(), p.blocks_capacity, s, &p.total_blocks));
  const int64_t total = p.total_blocks;
  if (total == 0) return absl::OkStatus();
  return CudaStatus(internal::LaunchAShapeFill(shape, p.heads, p.n_init, p.local,
                                               p.block_offsets, p.blocks, s),
                    "A-shape fill");
}

namespace {

absl::Status CheckBlockSparse(const BlockSparseIndexParams& p) {
  if (p.num_q_heads < 1 || p.num_kv_heads < 1 || p.num_q_heads % p.num_kv_heads != 0) {
    return Bad("num_q_heads", "must be a positive multiple of num_kv_heads");
  }
  TIERKV_RETURN_IF_ERROR(CheckListShape(p.num_q_heads, p.num_queries, p.query_position,
                                        "num_q_heads", p.block_offsets, p.column_offsets,
                                        p.blocks, p.blocks_capacity));
  if (p.head_dim < 16 || p.head_dim > 256 || p.head_dim % 16 != 0) {
    return Bad("head_dim", absl::StrCat(p.head_dim, " is not a multiple of 16 in [16, 256]"));
  }
  if (!(p.scale > 0) || !std::isfinite(p.scale)) return Bad("scale", "must be finite and positive");
  if (p.top_blocks < 1) return Bad("top_blocks", absl::StrCat(p.top_blocks, " is below 1"));
  if (p.q == nullptr) return Bad("q", "null");
  if (p.k == nullptr) return Bad("k", "null");
  if (p.ldq < static_cast<int64_t>(p.num_q_heads) * p.head_dim) {
    return Bad("ldq", "smaller than a row");
  }
  if (p.ldkv < static_cast<int64_t>(p.num_kv_heads) * p.head_dim) {
    return Bad("ldkv", "smaller than a row");
  }
  const internal::BlockShape shape = ShapeOf(p.num_queries, p.query_position);
  if (static_cast<int64_t>(shape.row_blocks) * shape.key_blocks > (int64_t{1} << 31) - 1) {
    return Bad("keys", "row_blocks * key_blocks pooled scores a head: 2^31 or more");
  }
  return absl::OkStatus();
}

size_t HeadScoresBytes(const internal::BlockShape& shape) {
  return static_cast<size_t>(shape.row_blocks) * shape.key_blocks * sizeof(float);
}

// Everything but the pooled scores.
size_t BlockSparseBaseBytes(const BlockSparseIndexParams& p, const internal::BlockShape& shape) {
  const int64_t n = static_cast<int64_t>(shape.row_blocks) * p.num_q_heads;
  return CountsBytes(n) +
         Up(static_cast<size_t>(p.num_q_heads) * shape.row_blocks * p.head_dim * sizeof(float)) +
         Up(static_cast<size_t>(p.num_kv_heads) * shape.key_blocks * p.head_dim * sizeof(float));
}

}  // namespace

size_t BlockSparseIndexWorkspaceBytes(const BlockSparseIndexParams& p, int heads_per_round) {
  if (!CheckBlockSparse(p).ok()) return 0;
  const internal::BlockShape shape = ShapeOf(p.num_queries, p.query_position);
  const size_t base = BlockSparseBaseBytes(p, shape);
  if (p.scores != nullptr) return base;
  const int heads = std::clamp(heads_per_round, 1, p.num_q_heads);
  return base + static_cast<size_t>(heads) * HeadScoresBytes(shape);
}

absl::Status BuildBlockSparseIndex(BlockSparseIndexParams& p, Stream stream) {
  TIERKV_RETURN_IF_ERROR(CheckBlockSparse(p));
  if (p.workspace == nullptr) return Bad("workspace", "null");
  const size_t need = BlockSparseIndexWorkspaceBytes(p, 1);
  if (p.workspace_bytes < need) {
    return Bad("workspace", absl::StrCat(p.workspace_bytes, " bytes; at least ", need,
                                         " are needed"));
  }
  const internal::BlockShape shape = ShapeOf(p.num_queries, p.query_position);
  const int64_t n = static_cast<int64_t>(shape.row_blocks) * p.num_q_heads;
  const int64_t keys = p.query_position + p.num_queries;
  Carver w(p.workspace, p.workspace_bytes);
  int64_t* counts = w.Take<int64_t>(n + 1);
  const size_t scan_bytes = Up(internal::ScanTempBytes(n + 1));
  void* scan_temp = w.Take<uint8_t>(scan_bytes);
  float* qbar = w.Take<float>(static_cast<size_t>(p.num_q_heads) * shape.row_blocks * p.head_dim);
  float* kbar =
      w.Take<float>(static_cast<size_t>(p.num_kv_heads) * shape.key_blocks * p.head_dim);
  const cudaStream_t s = AsCuda(stream);
  // The counts do not depend on the scores: the capacity is known to suffice (or not) before
  // any pooling.
  TIERKV_RETURN_IF_ERROR(CudaStatus(
      internal::LaunchBlockSparseCounts(shape, p.num_q_heads, p.top_blocks, counts, s),
      "counts"));
  TIERKV_RETURN_IF_ERROR(OffsetsAndTotal(counts, n, p.block_offsets, p.column_offsets,
                                         scan_temp, scan_bytes, p.blocks_capacity, s,
                                         &p.total_blocks));
  TIERKV_RETURN_IF_ERROR(CudaStatus(
      internal::LaunchMeanPool(p.q, p.ldq, p.num_queries, p.num_q_heads, p.head_dim, qbar, s),
      "pool queries"));
  TIERKV_RETURN_IF_ERROR(CudaStatus(
      internal::LaunchMeanPool(p.k, p.ldkv, keys, p.num_kv_heads, p.head_dim, kbar, s),
      "pool keys"));
  const int group = p.num_q_heads / p.num_kv_heads;
  float* scores = p.scores;
  int per_round = p.num_q_heads;
  if (scores == nullptr) {
    const size_t head_bytes = HeadScoresBytes(shape);
    per_round = static_cast<int>(std::min<size_t>(p.num_q_heads, w.left() / head_bytes));
    scores = reinterpret_cast<float*>(w.at());
  }
  for (int h0 = 0; h0 < p.num_q_heads; h0 += per_round) {
    const int heads = std::min(per_round, p.num_q_heads - h0);
    float* round_scores = p.scores != nullptr
                              ? p.scores + static_cast<int64_t>(h0) * shape.row_blocks *
                                               shape.key_blocks
                              : scores;
    TIERKV_RETURN_IF_ERROR(CudaStatus(
        internal::LaunchBlockScores(qbar, kbar, shape, h0, heads, group, p.head_dim, p.scale,
                                    /*write_invisible=*/p.scores != nullptr, round_scores, s),
        "block scores"));
    TIERKV_RETURN_IF_ERROR(
        CudaStatus(internal::LaunchSelectBlocks(round_scores, shape, h0, heads, p.top_blocks,
                                                p.block_offsets, p.blocks, s),
                   "select blocks"));
  }
  return absl::OkStatus();
}

}  // namespace tierkv::kernels::cuda
