// Host side of the block-sparse prefill attention: parameter checks, then the launch.
#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/internal/check.h"
#include "kernels/cuda/internal/sparse_attention_launch.h"
#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda {

absl::Status SparseAttention(const AttentionParams& p, const SparseIndexView& index,
                             Stream stream) {
  if (absl::Status s = CheckAttentionParams(p); !s.ok()) return s;
  if (p.sliding_window != 0) {
    return absl::InvalidArgumentError("sliding_window: sparse attention takes none");
  }
  if (index.block_offsets == nullptr || index.column_offsets == nullptr ||
      index.blocks == nullptr || index.columns == nullptr) {
    return absl::InvalidArgumentError("index: null offsets or lists");
  }
  if (p.num_queries == 0) return absl::OkStatus();
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
  return CudaStatus(internal::LaunchSparseAttention(a, p.head_dim,
                                                    reinterpret_cast<cudaStream_t>(stream)),
                    "SparseAttention launch");
}

}  // namespace tierkv::kernels::cuda
