// Host side of the block-sparse prefill attention: parameter checks, the kernel's choice
// (wgmma on two row blocks where it runs, mma.sync otherwise), then the launch.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/internal/check.h"
#include "kernels/cuda/internal/sparse_attention_launch.h"
#include "kernels/cuda/internal/sparse_attention_variant.h"
#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda {
namespace {

internal::SparseArgs ArgsOf(const AttentionParams& p, const SparseIndexView& index) {
  internal::SparseArgs a{};
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.out = p.out;
  a.ldq = p.ldq;
  a.ldkv = p.ldkv;
  a.ldo = p.ldo;
  a.num_queries = static_cast<int>(p.num_queries);
  a.query_position = static_cast<int>(p.query_position);
  a.num_keys = static_cast<int>(p.num_keys);
  a.num_q_heads = p.num_q_heads;
  a.group = p.num_q_heads / p.num_kv_heads;
  a.row_blocks = static_cast<int>((p.num_queries + 63) / 64);
  a.scale_log2 = p.scale * 1.4426950408889634f;
  a.block_offsets = index.block_offsets;
  a.blocks = index.blocks;
  a.column_offsets = index.column_offsets;
  a.columns = index.columns;
  a.skip_heads = index.skip_heads;
  return a;
}

absl::Status Check(const AttentionParams& p, const SparseIndexView& index) {
  if (absl::Status s = CheckAttentionParams(p); !s.ok()) return s;
  if (p.sliding_window != 0) {
    return absl::InvalidArgumentError("sliding_window: sparse attention takes none");
  }
  if (index.block_offsets == nullptr || index.column_offsets == nullptr ||
      index.blocks == nullptr || index.columns == nullptr) {
    return absl::InvalidArgumentError("index: null offsets or lists");
  }
  if (index.total_blocks < 0 || index.total_columns < 0 ||
      index.total_blocks >= (int64_t{1} << 31) || index.total_columns >= (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "index: total_blocks ", index.total_blocks, " and total_columns ",
        index.total_columns, " must lie in [0, 2^31)"));
  }
  // Every row block of every head lists at least its diagonal block: fewer means the totals
  // were not set (they size the kernel's workspace).
  const int64_t entries = int64_t{p.num_q_heads} * ((p.num_queries + 63) / 64);
  if (index.total_blocks < entries) {
    return absl::InvalidArgumentError(absl::StrCat(
        "index: total_blocks ", index.total_blocks, " is below one block per (head, row block) (",
        entries, "); set total_blocks and total_columns to the lists' lengths"));
  }
  return absl::OkStatus();
}

internal::SparseWorkspaceLayout LayoutOf(const AttentionParams& p, const SparseIndexView& index) {
  return internal::LayOutSparseWorkspace(index.total_blocks, index.total_columns,
                                         p.num_q_heads, (p.num_queries + 63) / 64);
}

// The Hopper kernel's workspace carved out of p.workspace (INVALID_ARGUMENT when it is too
// small); *tiles, when set, gets the per-head tile counts' place.
absl::StatusOr<internal::SparseWorkspace> CarveWorkspace(const AttentionParams& p,
                                                         const SparseIndexView& index,
                                                         int64_t** tiles = nullptr) {
  const internal::SparseWorkspaceLayout l = LayoutOf(p, index);
  if (p.workspace == nullptr || p.workspace_bytes < l.bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "workspace: ", p.workspace_bytes, " bytes", p.workspace == nullptr ? " (null)" : "",
        "; the sparse kernel needs SparseAttentionWorkspaceBytes = ", l.bytes));
  }
  auto* base = static_cast<uint8_t*>(p.workspace);
  internal::SparseWorkspace ws;
  ws.merged_blocks = reinterpret_cast<uint32_t*>(base + l.blocks_offset);
  ws.merged_columns = reinterpret_cast<uint32_t*>(base + l.columns_offset);
  ws.pair_blocks = reinterpret_cast<int*>(base + l.pairs_offset);
  ws.blocks_room = index.total_blocks;
  ws.columns_room = index.total_columns;
  if (tiles != nullptr) *tiles = reinterpret_cast<int64_t*>(base + l.tiles_offset);
  return ws;
}

absl::Status Run(const AttentionParams& p, const SparseIndexView& index, int variant,
                 Stream stream) {
  if (absl::Status s = Check(p, index); !s.ok()) return s;
  if (p.num_queries == 0) return absl::OkStatus();
  const internal::SparseArgs a = ArgsOf(p, index);
  const auto cu_stream = reinterpret_cast<cudaStream_t>(stream);
  const bool wgmma_ok = internal::SparseWgmmaSupports(a, p.head_dim);
  const int requested = variant;
  if (variant == internal::kSparseAuto) {
    variant = wgmma_ok ? internal::kSparseWgmmaS2 : internal::kSparseMmaSync;
  }
  if (variant != internal::kSparseMmaSync) {
    if (!wgmma_ok) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sparse attention kernel ", internal::SparseVariantName(variant),
          " does not take these params (head_dim, alignment or grid size)"));
    }
    absl::StatusOr<internal::SparseWorkspace> ws = CarveWorkspace(p, index);
    if (!ws.ok()) return ws.status();
    const cudaError_t e =
        internal::LaunchSparseAttentionWgmma(a, p.head_dim, variant, *ws, cu_stream);
    if (e != cudaErrorNotSupported || requested != internal::kSparseAuto) {
      return CudaStatus(e, "SparseAttention launch (wgmma)");
    }
    cudaGetLastError();  // The driver cannot build the tensor maps: mma.sync below.
  }
  return CudaStatus(internal::LaunchSparseAttention(a, p.head_dim, cu_stream),
                    "SparseAttention launch");
}

}  // namespace

size_t SparseAttentionWorkspaceBytes(const AttentionParams& p, const SparseIndexView& index) {
  if (!Check(p, index).ok() || p.num_queries == 0) return 0;
  if (!internal::SparseWgmmaSupports(ArgsOf(p, index), p.head_dim)) return 0;
  return LayoutOf(p, index).bytes;
}

absl::Status SparseAttention(const AttentionParams& p, const SparseIndexView& index,
                             Stream stream) {
  return Run(p, index, internal::kSparseAuto, stream);
}

absl::StatusOr<std::vector<int64_t>> SparseAttentionComputedTiles(const AttentionParams& p,
                                                                   const SparseIndexView& index,
                                                                   Stream stream) {
  if (absl::Status s = Check(p, index); !s.ok()) return s;
  std::vector<int64_t> tiles(p.num_q_heads, 0);
  if (p.num_queries == 0) return tiles;
  const internal::SparseArgs a = ArgsOf(p, index);
  if (!internal::SparseWgmmaSupports(a, p.head_dim)) {
    return absl::FailedPreconditionError(
        "computed tiles: the Hopper sparse kernel does not take these params");
  }
  int64_t* device_tiles = nullptr;
  absl::StatusOr<internal::SparseWorkspace> ws = CarveWorkspace(p, index, &device_tiles);
  if (!ws.ok()) return ws.status();
  const auto cu_stream = reinterpret_cast<cudaStream_t>(stream);
  if (absl::Status s = CudaStatus(
          internal::LaunchSparsePairTiles(a, *ws, device_tiles, cu_stream), "computed tiles");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CudaStatus(cudaMemcpyAsync(tiles.data(), device_tiles,
                                                  tiles.size() * sizeof(int64_t),
                                                  cudaMemcpyDeviceToHost, cu_stream),
                                  "computed tiles copy");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CudaStatus(cudaStreamSynchronize(cu_stream), "computed tiles");
      !s.ok()) {
    return s;
  }
  return tiles;
}

namespace internal {

const char* SparseVariantName(int variant) {
  switch (variant) {
    case kSparseAuto:
      return "auto";
    case kSparseMmaSync:
      return "mma.sync";
    case kSparseWgmmaS2:
      return "wgmma-s2";
    case kSparseWgmmaS3:
      return "wgmma-s3";
    default:
      return "unknown";
  }
}

absl::Status SparseAttentionVariant(const AttentionParams& p, const SparseIndexView& index,
                                    int variant, Stream stream) {
  if (variant < kSparseAuto || variant >= kSparseVariants) {
    return absl::InvalidArgumentError(absl::StrCat("variant: ", variant, " is not a kernel"));
  }
  return Run(p, index, variant, stream);
}

}  // namespace internal
}  // namespace tierkv::kernels::cuda
