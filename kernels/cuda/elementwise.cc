// Host side of the elementwise and row kernels: parameter checks, then the launch.
#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/internal/check.h"
#include "kernels/cuda/internal/elementwise_launch.h"
#include "kernels/cuda/ops.h"

namespace tierkv::kernels::cuda {
namespace {

absl::Status Bad(std::string_view field, std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(std::string(field), ": ", std::string(why)));
}

cudaStream_t AsCuda(Stream s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

absl::Status Embedding(const EmbeddingParams& p, Stream stream) {
  if (p.rows < 0) return Bad("rows", "negative");
  if (p.dim <= 0) return Bad("dim", "must be positive");
  if (p.vocab <= 0) return Bad("vocab", "must be positive");
  if (p.ldo < p.dim) return Bad("ldo", "smaller than dim");
  if (p.rows > 0 && (p.ids == nullptr || p.table == nullptr || p.out == nullptr)) {
    return Bad(p.ids == nullptr ? "ids" : (p.table == nullptr ? "table" : "out"), "null");
  }
  if (p.rows > 0x7fffffff) return Bad("rows", "more than 2^31 - 1");
  return CudaStatus(internal::LaunchEmbedding(p, AsCuda(stream)), "Embedding launch");
}

absl::Status RmsNorm(const RmsNormParams& p, Stream stream) {
  if (p.rows < 0) return Bad("rows", "negative");
  if (p.dim <= 0) return Bad("dim", "must be positive");
  if (p.ldx < p.dim) return Bad("ldx", "smaller than dim");
  if (p.ldy < p.dim) return Bad("ldy", "smaller than dim");
  if (!(p.eps >= 0.0f)) return Bad("eps", "must be >= 0");
  if (p.rows > 0 && (p.x == nullptr || p.weight == nullptr || p.y == nullptr)) {
    return Bad(p.x == nullptr ? "x" : (p.weight == nullptr ? "weight" : "y"), "null");
  }
  if (p.rows > 0x7fffffff) return Bad("rows", "more than 2^31 - 1");
  return CudaStatus(internal::LaunchRmsNorm(p, AsCuda(stream)), "RmsNorm launch");
}

absl::Status RopeQkv(const RopeQkvParams& p, Stream stream) {
  if (p.rows < 0) return Bad("rows", "negative");
  if (p.head_dim <= 0 || p.head_dim % 2 != 0 || p.head_dim > 256) {
    return Bad("head_dim", "must be even, in [2, 256]");
  }
  if (p.num_kv_heads <= 0) return Bad("num_kv_heads", "must be positive");
  if (p.num_q_heads <= 0 || p.num_q_heads % p.num_kv_heads != 0) {
    return Bad("num_q_heads", "must be a positive multiple of num_kv_heads");
  }
  if (p.ld_qkv < static_cast<int64_t>(p.num_q_heads + 2 * p.num_kv_heads) * p.head_dim) {
    return Bad("ld_qkv", "smaller than (num_q_heads + 2 * num_kv_heads) * head_dim");
  }
  if (p.position0 < 0) return Bad("position0", "negative");
  if (p.cache_row0 < 0) return Bad("cache_row0", "negative");
  if (p.position0 + p.rows > p.table_rows) {
    return Bad("position0", absl::StrCat("positions up to ", p.position0 + p.rows,
                                         " exceed the rope tables' ", p.table_rows, " rows"));
  }
  if (p.rows > 0 && (p.qkv == nullptr || p.q_out == nullptr || p.k_cache == nullptr ||
                     p.v_cache == nullptr || p.cos == nullptr || p.sin == nullptr)) {
    return Bad("qkv/q_out/k_cache/v_cache/cos/sin", "null");
  }
  if (p.rows > 0x7fffffff) return Bad("rows", "more than 2^31 - 1");
  return CudaStatus(internal::LaunchRopeQkv(p, AsCuda(stream)), "RopeQkv launch");
}

absl::Status SwiGlu(const SwiGluParams& p, Stream stream) {
  if (p.rows < 0) return Bad("rows", "negative");
  if (p.inter <= 0) return Bad("inter", "must be positive");
  if (p.ld_gate_up < 2 * p.inter) return Bad("ld_gate_up", "smaller than 2 * inter");
  if (p.ld_out < p.inter) return Bad("ld_out", "smaller than inter");
  if (p.rows > 0 && (p.gate_up == nullptr || p.out == nullptr)) {
    return Bad(p.gate_up == nullptr ? "gate_up" : "out", "null");
  }
  return CudaStatus(internal::LaunchSwiGlu(p, AsCuda(stream)), "SwiGlu launch");
}

absl::Status F32ToBf16(const float* src, Bf16* dst, int64_t count, Stream stream) {
  if (count < 0) return Bad("count", "negative");
  if (count > 0 && (src == nullptr || dst == nullptr)) return Bad("src/dst", "null");
  return CudaStatus(internal::LaunchF32ToBf16(src, dst, count, AsCuda(stream)),
                    "F32ToBf16 launch");
}

absl::Status Bf16ToF32(const Bf16* src, float* dst, int64_t count, Stream stream) {
  if (count < 0) return Bad("count", "negative");
  if (count > 0 && (src == nullptr || dst == nullptr)) return Bad("src/dst", "null");
  return CudaStatus(internal::LaunchBf16ToF32(src, dst, count, AsCuda(stream)),
                    "Bf16ToF32 launch");
}

absl::Status FillSeeded(Bf16* dst, int64_t count, uint64_t key, uint64_t offset, float scale,
                        float shift, Stream stream) {
  if (count < 0) return Bad("count", "negative");
  if (count > 0 && dst == nullptr) return Bad("dst", "null");
  return CudaStatus(internal::LaunchFillSeeded(dst, count, key, offset, scale, shift,
                                               AsCuda(stream)),
                    "FillSeeded launch");
}

namespace {

absl::Status CheckKvBlocks(const ScatterKvBlocksParams& p) {
  if (p.num_blocks < 0) return Bad("num_blocks", "negative");
  if (p.num_layers <= 0) return Bad("num_layers", "must be positive");
  if (p.block_tokens <= 0) return Bad("block_tokens", "must be positive");
  if (p.row_elems <= 0 || p.row_elems % 8 != 0) {
    return Bad("row_elems", "must be a positive multiple of 8");
  }
  if (p.row0 < 0 || p.row0 + p.num_blocks * p.block_tokens > p.capacity) {
    return Bad("row0", "the blocks do not fit in the capacity");
  }
  if (p.num_blocks > 0 && ((p.blocks == nullptr && p.block_starts == nullptr) ||
                           p.kv == nullptr)) {
    return Bad(p.kv == nullptr ? "kv" : "blocks", "null");
  }
  if (reinterpret_cast<uintptr_t>(p.blocks) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(p.kv) % 16 != 0) {
    return Bad("blocks/kv", "must be 16-byte aligned");
  }
  if (p.num_blocks * 2 * p.num_layers > 0x7fffffff) return Bad("num_blocks", "too many at once");
  return absl::OkStatus();
}

}  // namespace

absl::Status ScatterKvBlocks(const ScatterKvBlocksParams& p, Stream stream) {
  if (absl::Status s = CheckKvBlocks(p); !s.ok()) return s;
  return CudaStatus(internal::LaunchScatterKvBlocks(p, /*to_blocks=*/false, AsCuda(stream)),
                    "ScatterKvBlocks launch");
}

absl::Status GatherKvBlocks(const ScatterKvBlocksParams& p, Bf16* blocks, Stream stream) {
  ScatterKvBlocksParams q = p;
  q.blocks = blocks;
  q.block_starts = nullptr;
  if (absl::Status s = CheckKvBlocks(q); !s.ok()) return s;
  return CudaStatus(internal::LaunchScatterKvBlocks(q, /*to_blocks=*/true, AsCuda(stream)),
                    "GatherKvBlocks launch");
}

absl::Status ArgMax(const ArgMaxParams& p, Stream stream) {
  if (p.rows < 0) return Bad("rows", "negative");
  if (p.cols <= 0 || p.cols > 0x7fffffff) return Bad("cols", "must be in [1, 2^31 - 1]");
  if (p.ld < p.cols) return Bad("ld", "smaller than cols");
  if (p.rows > 0 && (p.logits == nullptr || p.out == nullptr)) {
    return Bad(p.logits == nullptr ? "logits" : "out", "null");
  }
  return CudaStatus(internal::LaunchArgMax(p, AsCuda(stream)), "ArgMax launch");
}

}  // namespace tierkv::kernels::cuda
